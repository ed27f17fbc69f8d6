"""Build a TensorRT engine from an exported ONNX file, with a JSON sidecar that says what was built, where and how.

Every `<engine>` gets `<engine>.json`: TensorRT version, GPU and compute capability, precision, input shapes, the
source ONNX hash and the model facts from its ONNX metadata (family, input size, category ids), because an engine
runs only where it was built and does not say what precision it was built for. Building goes through polygraphy's
TensorRT loaders.
"""

from __future__ import annotations

import datetime
import itertools
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from xprune.errors import XpruneError
from xprune.export.onnx_export import get_metadata, load_model
from xprune.files import atomic_path, file_sha256, write_json
from xprune.runtime.tensorrt import require_tensorrt
from xprune.runtime.tensorrt.loader import SIDECAR_FORMAT, sidecar_path

QUANTIZE_OPS = {"QuantizeLinear", "DequantizeLinear"}


def gpu_facts(device_index: int = 0) -> dict[str, Any]:
    major, minor = torch.cuda.get_device_capability(device_index)
    return {"name": torch.cuda.get_device_name(device_index), "compute_capability": f"{major}.{minor}",
            "cuda": torch.version.cuda}


def precision_name(fp16: bool, int8: bool) -> str:
    """The label results and tolerances use: int8 wins (fp16 may also be on as a fallback), then fp16, else fp32."""
    return "int8" if int8 else "fp16" if fp16 else "fp32"


def single_input(model: onnx.ModelProto, source: Path) -> tuple[str, list[int | None]]:
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise XpruneError(f"{source} has {len(inputs)} inputs; an xprune engine needs exactly one image input")
    dims = inputs[0].type.tensor_type.shape.dim
    shape: list[int | None] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
    if len(shape) != 4:
        raise XpruneError(f"{source}: input {inputs[0].name!r} has rank {len(shape)}; expected NCHW")
    return inputs[0].name, shape


def input_shapes(name: str, shape: list[int | None], source: Path,
                 dynamic_batch: tuple[int, int, int] | None) -> dict[str, dict[str, list[int]]]:
    """min/opt/max shape per input (all three equal for a static engine)."""
    chw = shape[1:]
    if any(d is None for d in chw):
        raise XpruneError(f"{source}: input {name!r} has dynamic C/H/W {shape}; export with a fixed input size")
    fixed = [int(d) for d in chw if d is not None]
    if dynamic_batch is None:
        if shape[0] is None:
            raise XpruneError(f"{source}: input {name!r} has a dynamic batch axis; pass dynamic_batch=(min, opt, max)")
        full = [int(shape[0]), *fixed]
        return {name: {"min": full, "opt": full, "max": full}}
    lo, opt, hi = dynamic_batch
    if not 1 <= lo <= opt <= hi:
        raise XpruneError(f"dynamic_batch must satisfy 1 <= min <= opt <= max, got {dynamic_batch}")
    if shape[0] is not None:
        raise XpruneError(f"{source}: input {name!r} has a fixed batch of {shape[0]}; export with a dynamic batch "
                          "axis to build a dynamic-batch engine")
    return {name: {"min": [lo, *fixed], "opt": [opt, *fixed], "max": [hi, *fixed]}}


def calibration_shape(batches: Iterable[np.ndarray],
                      bounds: dict[str, list[int]]) -> tuple[list[int], Iterator[np.ndarray]]:
    """The shape every calibration batch must have (the first one's), and the batches with the first put back."""
    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        raise XpruneError("int8 calibration got no batches")
    shape = [int(d) for d in np.shape(first)]
    fits = len(shape) == 4 and shape[1:] == bounds["opt"][1:] and bounds["min"][0] <= shape[0] <= bounds["max"][0]
    if not fits:
        expected = (f"[{bounds['min'][0]}..{bounds['max'][0]}, {', '.join(map(str, bounds['opt'][1:]))}]"
                    if bounds["min"] != bounds["max"] else str(bounds["opt"]))
        raise XpruneError(f"calibration batches have shape {shape}; the engine input is {expected}")
    return shape, itertools.chain([first], iterator)


def calibration_batches(data: str | Path | None, input_size: int, images: int) -> Iterator[np.ndarray]:
    """One-image float32 batches from a dataset folder's calibration images, for an int8 build."""
    if not data:
        raise XpruneError("--int8 needs calibration images: pass --data DIR")
    from xprune.data.coco import calibration_set

    return (x.numpy() for x, _, _ in calibration_set(data, input_size, images).batches(1))


class CalibrationFeed:
    """Yields `{input_name: CUDA tensor}` per batch for polygraphy's Calibrator, checking each batch on the way.

    Batches go to the GPU through torch (no pycuda / cudart wrapper needed); the current tensor is kept alive until
    TensorRT asks for the next one. A bad batch stops the feed and is reported after the build, because an exception
    raised inside TensorRT's calibration callback would not reach the caller cleanly.
    """

    def __init__(self, input_name: str, batches: Iterable[np.ndarray], shape: list[int]):
        self.input_name, self.batches, self.shape = input_name, batches, shape
        self.count = 0
        self.error: str | None = None
        self._current: torch.Tensor | None = None

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self.batches:
            array = np.asarray(batch)
            if array.dtype != np.float32 or list(array.shape) != self.shape:
                self.error = (f"calibration batch {self.count} has shape {list(array.shape)} and dtype {array.dtype}; "
                              f"expected {self.shape} float32")
                return
            self._current = torch.from_numpy(np.ascontiguousarray(array)).cuda()
            self.count += 1
            yield {self.input_name: self._current}
        self._current = None


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, *, fp16: bool = False,
                 int8: bool = False, calibration_batches: Iterable[np.ndarray] | None = None,
                 workspace_gb: float = 4.0, timing_cache: str | os.PathLike | None = None,
                 dynamic_batch: tuple[int, int, int] | None = None) -> dict[str, Any]:
    """Build and save a serialized engine plus `<engine>.json`; returns the sidecar.

    `calibration_batches` (float32 NCHW arrays, all of one shape within the input's batch range) is needed for int8
    unless the ONNX graph carries Q/DQ nodes; a dynamic-batch engine gets an extra profile of that shape to
    calibrate with. `timing_cache` is read if it exists and updated after the build, so rebuilding the same model
    on the same GPU is fast. Nothing is written if the build fails.
    """
    trt_version = require_tensorrt()
    import tensorrt as trt
    from polygraphy.backend.trt import Calibrator, CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    source, target = Path(onnx_path), Path(engine_path)
    if workspace_gb <= 0:
        raise XpruneError(f"workspace_gb must be positive, got {workspace_gb}")
    model = load_model(source)
    input_name, onnx_shape = single_input(model, source)
    shapes = input_shapes(input_name, onnx_shape, source, dynamic_batch)
    explicit_quantization = any(node.op_type in QUANTIZE_OPS for node in model.graph.node)

    bounds = shapes[input_name]
    profiles = ([Profile().add(input_name, min=bounds["min"], opt=bounds["opt"], max=bounds["max"])]
                if dynamic_batch else None)
    feed: CalibrationFeed | None = None
    calibrator = None
    if int8 and calibration_batches is not None:
        batch_shape, batches = calibration_shape(calibration_batches, bounds)
        feed = CalibrationFeed(input_name, batches, batch_shape)
        calibrator = Calibrator(feed)
        if profiles and batch_shape != bounds["opt"]:  # polygraphy calibrates with the last profile
            profiles.append(Profile().add(input_name, min=batch_shape, opt=batch_shape, max=batch_shape))
    elif int8 and not explicit_quantization:
        raise XpruneError("int8 needs calibration batches (or an ONNX model with QuantizeLinear/DequantizeLinear "
                          "nodes)")

    cache = os.fspath(timing_cache) if timing_cache is not None else None
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
    config = CreateConfig(fp16=fp16, int8=int8, calibrator=calibrator, profiles=profiles, load_timing_cache=cache,
                          memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(workspace_gb * (1 << 30))})
    start = time.perf_counter()
    try:
        with G_LOGGER.verbosity(G_LOGGER.WARNING):
            serialized = EngineBytesFromNetwork(NetworkFromOnnxPath(os.fspath(source)), config=config,
                                                save_timing_cache=cache)()
    except PolygraphyException as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise XpruneError(f"TensorRT could not build an engine from {source}: {first[:300]}") from None
    build_s = time.perf_counter() - start
    if feed is not None and (feed.error or feed.count == 0):
        raise XpruneError(feed.error or "int8 calibration got no batches")

    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(memoryview(serialized))
    sidecar: dict[str, Any] = {
        "format": SIDECAR_FORMAT,
        "engine": target.name,
        "tensorrt": trt_version,
        "gpu": gpu_facts(torch.cuda.current_device()),
        "precision": precision_name(fp16, int8),
        "builder_flags": {"fp16": fp16, "int8": int8, "explicit_quantization": explicit_quantization},
        "calibration_batches": feed.count if feed is not None else None,
        "calibration_shape": feed.shape if feed is not None else None,
        "inputs": shapes,
        "dynamic_batch": list(dynamic_batch) if dynamic_batch is not None else None,
        "workspace_gb": workspace_gb,
        "timing_cache": cache,
        "onnx": {"path": os.fspath(source), "sha256": file_sha256(source)},
        "build_s": round(build_s, 3),
        "metadata": get_metadata(model),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        write_json(sidecar_path(target), sidecar)
    except BaseException:
        target.unlink(missing_ok=True)  # an engine without its sidecar would be run with unknown precision
        raise
    return sidecar
