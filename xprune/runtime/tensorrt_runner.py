"""Run a serialized TensorRT engine behind the common Runner interface, so its latency and mAP are measured the same
way as PyTorch and ONNX Runtime.

Device buffers, streams and timing events come from torch (pycuda does not install everywhere); the engine is driven
through TensorRT 10's name-based tensor API. Precision and model facts come from the `<engine>.json` sidecar that
`xprune.export.tensorrt.build_engine` writes: an engine does not say what precision it was built for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from xprune.errors import XpruneError
from xprune.export.tensorrt import read_sidecar, require_tensorrt
from xprune.runtime.backends import Runner

if TYPE_CHECKING:
    import tensorrt as trt


def _dims(dims: trt.Dims) -> tuple[int, ...]:
    return tuple(int(dims[i]) for i in range(len(dims)))


class TensorRTRunner(Runner):
    """One engine on one GPU. Use as a context manager: entering deserializes the engine, leaving frees it."""

    name = "tensorrt"

    def __init__(self, engine_path: str | os.PathLike, device_index: int = 0):
        self.tensorrt_version = require_tensorrt()
        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise XpruneError(f"TensorRT engine not found: {self.engine_path}")
        self.sidecar: dict[str, Any] = read_sidecar(self.engine_path) or {}
        self.precision = str(self.sidecar.get("precision", "unknown"))
        metadata = self.sidecar.get("metadata") or {}
        self.family: str | None = metadata.get("family")
        self.input_size: int | None = metadata.get("input_size")
        self.nms_iou = float(metadata.get("nms_iou", self.nms_iou))
        self.device_index = device_index
        self.device = f"cuda:{device_index}"
        self.input_name = ""
        self.output_names: list[str] = []
        self._runtime: trt.Runtime | None = None
        self._engine: trt.ICudaEngine | None = None
        self._context: trt.IExecutionContext | None = None
        self._stream: torch.cuda.Stream | None = None
        self._buffers: dict[str, torch.Tensor] = {}
        self._bound_shape: tuple[int, ...] | None = None

    def describe(self) -> dict[str, Any]:
        """The results-row facts the sidecar knows (the source ONNX's xprune metadata and the input shape)."""
        metadata = self.sidecar.get("metadata") or {}
        profiles = self.sidecar.get("inputs") or {}
        shape = next((p.get("opt") for p in profiles.values()), None)
        if shape is None and self.input_size:
            shape = [1, 3, self.input_size, self.input_size]
        if shape is None:
            raise XpruneError(f"{self.engine_path}: no sidecar JSON with the input shape; rebuild with xprune export")
        return {"model": self.family or "engine", "variant": metadata.get("variant", "unknown"),
                "method": metadata.get("method"), "rate": metadata.get("rate"), "input_shape": list(shape),
                "category_ids": metadata.get("category_ids"),
                "removed_mac_fraction": metadata.get("removed_mac_fraction")}

    def __enter__(self) -> TensorRTRunner:
        import tensorrt as trt

        built_with = self.sidecar.get("tensorrt")
        with torch.cuda.device(self.device_index):
            self._runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
            engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if engine is None:
                hint = (f"; it was built with TensorRT {built_with}, this is {self.tensorrt_version}: rebuild it"
                        if built_with and built_with != self.tensorrt_version else
                        "; engines run only on the TensorRT version and GPU generation that built them")
                raise XpruneError(f"TensorRT cannot load {self.engine_path}{hint}")
            context = engine.create_execution_context()
            if context is None:
                raise XpruneError(f"TensorRT cannot create an execution context for {self.engine_path} "
                                  "(out of GPU memory?)")
            self._engine, self._context = engine, context
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            if len(inputs) != 1:
                raise XpruneError(f"{self.engine_path} has {len(inputs)} inputs; an xprune engine has one image input")
            self.input_name = inputs[0]
            self.output_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
            self._stream = torch.cuda.Stream(device=self.device_index)
        return self

    def __exit__(self, *exc: object) -> None:
        self._buffers.clear()
        self._bound_shape = None
        self._context = None  # the context must go before the engine it came from
        self._engine = None
        self._runtime = None
        self._stream = None

    def _torch_dtype(self, name: str) -> torch.dtype:
        import tensorrt as trt

        assert self._engine is not None
        dtype = self._engine.get_tensor_dtype(name)
        table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
                 trt.DataType.BF16: torch.bfloat16, trt.DataType.INT8: torch.int8, trt.DataType.UINT8: torch.uint8,
                 trt.DataType.INT32: torch.int32, trt.DataType.INT64: torch.int64, trt.DataType.BOOL: torch.bool}
        if dtype not in table:
            raise XpruneError(f"engine tensor {name!r} has TensorRT type {dtype}, which xprune cannot bind")
        return table[dtype]

    def _active(self) -> tuple[trt.ICudaEngine, trt.IExecutionContext, torch.cuda.Stream]:
        if self._engine is None or self._context is None or self._stream is None:
            raise XpruneError("TensorRTRunner is used outside its `with` block")
        return self._engine, self._context, self._stream

    def _bind(self, shape: tuple[int, ...]) -> None:
        """Set the input shape (dynamic-batch engines) and give every I/O tensor a device buffer of the right size."""
        if shape == self._bound_shape:
            return
        engine, context, _ = self._active()
        name = self.input_name
        engine_shape = _dims(engine.get_tensor_shape(name))
        if len(shape) != len(engine_shape) or any(e not in (-1, s) for e, s in zip(engine_shape, shape)):
            raise XpruneError(f"input shape {list(shape)} does not fit the engine input {list(engine_shape)}")
        if -1 in engine_shape:
            low, _, high = (_dims(d) for d in engine.get_tensor_profile_shape(name, 0))
            if any(not lo <= s <= hi for lo, s, hi in zip(low, shape, high)):
                raise XpruneError(f"input shape {list(shape)} is outside the engine's profile "
                                  f"{list(low)}..{list(high)}")
            if not context.set_input_shape(name, shape):
                raise XpruneError(f"TensorRT rejected input shape {list(shape)}")
        buffers = {name: torch.empty(shape, dtype=self._torch_dtype(name), device=self.device)}
        for out in self.output_names:
            out_shape = _dims(context.get_tensor_shape(out))
            if any(d < 0 for d in out_shape):
                raise XpruneError(f"output {out!r} has a data-dependent shape {list(out_shape)}; not supported")
            buffers[out] = torch.empty(out_shape, dtype=self._torch_dtype(out), device=self.device)
        for tensor_name, tensor in buffers.items():
            if not context.set_tensor_address(tensor_name, tensor.data_ptr()):
                raise XpruneError(f"TensorRT rejected the device buffer for {tensor_name!r}")
        self._buffers, self._bound_shape = buffers, shape

    def _load_input(self, x: np.ndarray) -> None:
        array = np.ascontiguousarray(x, dtype=np.float32)
        self._bind(tuple(int(d) for d in array.shape))
        self._buffers[self.input_name].copy_(torch.from_numpy(array))  # casts to the engine's input type

    def _execute(self, context: trt.IExecutionContext, stream: torch.cuda.Stream) -> None:
        if not context.execute_async_v3(stream.cuda_stream):
            raise XpruneError(f"TensorRT failed to run {self.engine_path}")

    def infer(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """Outputs in engine order (boxes, scores for an xprune export), as float32 host arrays."""
        _, context, stream = self._active()
        with torch.cuda.device(self.device_index), torch.cuda.stream(stream):
            self._load_input(x)
            self._execute(context, stream)
            outputs = [self._buffers[n].float() for n in self.output_names]
            stream.synchronize()
        return tuple(o.cpu().numpy() for o in outputs)

    def time_device(self, x: np.ndarray, runs: int = 100, warmup: int = 10) -> list[float]:
        """Milliseconds per run between CUDA events recorded on the engine's stream (host copies excluded).

        Runs are enqueued back to back; each sample is the GPU time from its start event to its end event.
        """
        if runs < 1 or warmup < 0:
            raise XpruneError(f"runs must be >= 1 and warmup >= 0, got runs={runs} warmup={warmup}")
        _, context, stream = self._active()
        with torch.cuda.device(self.device_index), torch.cuda.stream(stream):
            self._load_input(x)
            for _ in range(warmup):
                self._execute(context, stream)
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(runs)]
            for start, end in events:
                start.record(stream)
                self._execute(context, stream)
                end.record(stream)
            stream.synchronize()
        return [start.elapsed_time(end) for start, end in events]
