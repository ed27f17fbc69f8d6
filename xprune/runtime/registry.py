"""Every backend xprune can run a model on, in one place.

A backend is a package under `xprune/runtime/<folder>/` that defines

    available() -> str                       the library version, or XpruneError saying why it cannot run here
    open_file(path, options) -> (runner, facts)
                                             a runner for the file (not yet entered) and the results-row facts
                                             the file tells (model, variant, input_shape, category_ids, ...)

plus a line in BACKENDS naming the file suffixes it opens (or in BY_NAME, for a second way to run files another
backend opens: it runs only when named). Adding a backend is that folder and that line; the benchmark,
`xprune compare` and the study find it here. Packages are imported only when used, so reading this
table costs nothing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from xprune.errors import XpruneError

if TYPE_CHECKING:
    from xprune.runtime.base import Runner


@dataclass(frozen=True)
class TargetOptions:
    """What the command line can say about how to run a file; each backend uses the options that apply to it."""

    device: str = "cpu"
    model: str | None = None  # family of a PyTorch checkpoint (a JAX checkpoint names its own)
    threads: int | None = None
    fp16: bool = False


@dataclass(frozen=True)
class Backend:
    name: str
    suffixes: tuple[str, ...]
    package: str

    def module(self) -> ModuleType:
        return importlib.import_module(self.package)

    def available(self) -> str:
        """The backend library's version; raises XpruneError with the reason when it cannot run here."""
        return self.module().available()

    def open(self, path: Path, options: TargetOptions) -> tuple[Runner, dict[str, Any]]:
        return self.module().open_file(path, options)


BACKENDS: dict[str, Backend] = {
    "torch": Backend("torch", (".pt", ".pth"), "xprune.runtime.pytorch"),
    "onnxruntime": Backend("onnxruntime", (".onnx",), "xprune.runtime.onnxruntime"),
    "jax": Backend("jax", (".msgpack",), "xprune.runtime.jax"),  # checkpoints of the JAX families
    "tensorrt": Backend("tensorrt", (".engine", ".plan", ".trt"), "xprune.runtime.tensorrt"),
}
# Backends for files another backend opens by suffix: they run only when named (`backend_named`).
BY_NAME: dict[str, Backend] = {
    "onnx2torch": Backend("onnx2torch", (".onnx",), "xprune.runtime.onnx2torch"),
}


def backend_named(name: str) -> Backend:
    """A backend by its name, including those that never open a file by suffix."""
    table = {**BACKENDS, **BY_NAME}
    if name not in table:
        raise XpruneError(f"unknown backend '{name}'; choose one of: {', '.join(table)}")
    return table[name]


def backend_for(path: str | Path) -> Backend:
    """The backend that runs a file, by its suffix."""
    suffix = Path(path).suffix.lower()
    for backend in BACKENDS.values():
        if suffix in backend.suffixes:
            return backend
    known = [s for b in BACKENDS.values() for s in b.suffixes]
    raise XpruneError(f"{path}: unknown benchmark target type '{suffix}' (expected "
                      f"{', '.join(known[:-1])} or {known[-1]})")
