"""Loads what a TensorRTRunner runs: a deserialized engine, and the `<engine>.json` sidecar written beside it.

An engine runs only on the TensorRT version and GPU generation that built it, and its precision cannot be read back
from the plan, so `xprune.runtime.tensorrt.build.build_engine` records both (and the model facts from the source
ONNX) in the sidecar. Deserializing goes through polygraphy's `EngineFromBytes` (which also registers TensorRT's
plugins and allows version-compatible engines); its failure becomes one XpruneError line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xprune.errors import XpruneError
from xprune.files import read_json

if TYPE_CHECKING:
    import tensorrt as trt

SIDECAR_FORMAT = "xprune.tensorrt-engine/1"


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(engine_path)}.json")


def read_sidecar(engine_path: str | os.PathLike) -> dict[str, Any] | None:
    """The sidecar written beside an engine, or None for an engine built elsewhere."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        return None
    data = read_json(path, "engine sidecar")
    if not isinstance(data, dict):
        raise XpruneError(f"engine sidecar {path} is not a JSON object")
    return data


class EngineFromPath:
    """Deserializes the engine at `path` with a given TensorRT runtime, when called; reads its sidecar at once."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise XpruneError(f"TensorRT engine not found: {self.path}")
        self.sidecar: dict[str, Any] = read_sidecar(self.path) or {}

    def __call__(self, runtime: trt.Runtime) -> trt.ICudaEngine:
        """The runtime is the caller's: it must outlive the engine, so the runner that holds one holds both."""
        import tensorrt

        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes
        from polygraphy.exception import PolygraphyException

        from xprune.runtime.base import silent_polygraphy

        try:
            with silent_polygraphy():
                engine = EngineFromBytes(BytesFromPath(os.fspath(self.path)), runtime=runtime)()
        except PolygraphyException:
            engine = None
        if engine is None:
            built_with, running = self.sidecar.get("tensorrt"), tensorrt.__version__
            hint = (f"; it was built with TensorRT {built_with}, this is {running}: rebuild it"
                    if built_with and built_with != running else
                    "; engines run only on the TensorRT version and GPU generation that built them")
            raise XpruneError(f"TensorRT cannot load {self.path}{hint}")
        return engine

    def model_facts(self) -> dict[str, Any]:
        """The results-row facts the sidecar knows (the source ONNX's xprune metadata and the input shape)."""
        metadata = self.sidecar.get("metadata") or {}
        profiles = self.sidecar.get("inputs") or {}
        shape = next((p.get("opt") for p in profiles.values()), None)
        if shape is None and metadata.get("input_size"):
            size = metadata["input_size"]
            shape = [1, 3, size, size]
        if shape is None:
            raise XpruneError(f"{self.path}: no sidecar JSON with the input shape; rebuild with xprune export")
        return {"model": metadata.get("family") or "engine", "variant": metadata.get("variant", "unknown"),
                "method": metadata.get("method"), "rate": metadata.get("rate"), "input_shape": list(shape),
                "category_ids": metadata.get("category_ids"),
                "removed_mac_fraction": metadata.get("removed_mac_fraction")}
