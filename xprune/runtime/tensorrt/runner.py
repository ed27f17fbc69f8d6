"""Run a serialized TensorRT engine behind the common Runner interface, so its latency and mAP are measured the same
way as PyTorch and ONNX Runtime.

Device buffers, streams and timing events come from torch, and the engine is driven through TensorRT 10's
name-based tensor API. polygraphy's `TrtRunner` is not used: its streams and buffers need the CUDA runtime library
through ctypes (pycuda does not install everywhere, and torch brings its own), and each of its `infer` calls sets
shapes, allocates outputs and copies them to the host in Python, while xprune times the kernels alone with CUDA
events. Precision and model facts come from the `<engine>.json` sidecar (see `xprune.runtime.tensorrt.loader`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from xprune.errors import XpruneError
from xprune.runtime.base import CUDA_EVENTS, Runner
from xprune.runtime.tensorrt import require_tensorrt
from xprune.runtime.tensorrt.loader import EngineFromPath

if TYPE_CHECKING:
    import tensorrt as trt


def dims(shape: trt.Dims) -> tuple[int, ...]:
    return tuple(int(shape[i]) for i in range(len(shape)))


class TensorRTRunner(Runner):
    """One engine on one GPU. Use as a context manager: entering deserializes the engine, leaving frees it."""

    name = "tensorrt"
    timing = CUDA_EVENTS

    def __init__(self, engine_path: str | os.PathLike, device_index: int = 0):
        self.tensorrt_version = require_tensorrt()
        self.load_engine = EngineFromPath(engine_path)
        self.engine_path = self.load_engine.path
        self.sidecar: dict[str, Any] = self.load_engine.sidecar
        self.precision = str(self.sidecar.get("precision", "unknown"))
        metadata = self.sidecar.get("metadata") or {}
        self.family: str | None = metadata.get("family")
        self.input_size: int | None = metadata.get("input_size")
        self.nms_iou = float(metadata.get("nms_iou", self.nms_iou))
        self.device_index = device_index
        self.device = f"cuda:{device_index}"
        self.input_name = ""
        self.output_names: list[str] = []
        self.runtime: trt.Runtime | None = None
        self.engine: trt.ICudaEngine | None = None
        self.context: trt.IExecutionContext | None = None
        self.stream: torch.cuda.Stream | None = None
        self.buffers: dict[str, torch.Tensor] = {}
        self.bound_shape: tuple[int, ...] | None = None

    def version(self) -> str:
        return self.tensorrt_version

    def activate_impl(self) -> None:
        import tensorrt as trt

        with torch.cuda.device(self.device_index):
            self.runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
            engine = self.load_engine(self.runtime)
            context = engine.create_execution_context()
            if context is None:
                raise XpruneError(f"TensorRT cannot create an execution context for {self.engine_path} "
                                  "(out of GPU memory?)")
            self.engine, self.context = engine, context
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            if len(inputs) != 1:
                raise XpruneError(f"{self.engine_path} has {len(inputs)} inputs; an xprune engine has one image input")
            self.input_name = inputs[0]
            self.output_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
            self.stream = torch.cuda.Stream(device=self.device_index)

    def deactivate_impl(self) -> None:
        self.buffers.clear()
        self.bound_shape = None
        self.context = None  # the context must go before the engine it came from
        self.engine = None
        self.runtime = None
        self.stream = None

    def torch_dtype(self, name: str) -> torch.dtype:
        import tensorrt as trt

        assert self.engine is not None
        dtype = self.engine.get_tensor_dtype(name)
        table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
                 trt.DataType.BF16: torch.bfloat16, trt.DataType.INT8: torch.int8, trt.DataType.UINT8: torch.uint8,
                 trt.DataType.INT32: torch.int32, trt.DataType.INT64: torch.int64, trt.DataType.BOOL: torch.bool}
        if dtype not in table:
            raise XpruneError(f"engine tensor {name!r} has TensorRT type {dtype}, which xprune cannot bind")
        return table[dtype]

    def loaded(self) -> tuple[trt.ICudaEngine, trt.IExecutionContext, torch.cuda.Stream]:
        self.require_active()
        assert self.engine is not None and self.context is not None and self.stream is not None
        return self.engine, self.context, self.stream

    def bind(self, shape: tuple[int, ...]) -> None:
        """Set the input shape (dynamic-batch engines) and give every I/O tensor a device buffer of the right size."""
        if shape == self.bound_shape:
            return
        engine, context, _ = self.loaded()
        name = self.input_name
        engine_shape = dims(engine.get_tensor_shape(name))
        if len(shape) != len(engine_shape) or any(e not in (-1, s) for e, s in zip(engine_shape, shape)):
            raise XpruneError(f"input shape {list(shape)} does not fit the engine input {list(engine_shape)}")
        if -1 in engine_shape:
            low, _, high = (dims(d) for d in engine.get_tensor_profile_shape(name, 0))
            if any(not lo <= s <= hi for lo, s, hi in zip(low, shape, high)):
                raise XpruneError(f"input shape {list(shape)} is outside the engine's profile "
                                  f"{list(low)}..{list(high)}")
            if not context.set_input_shape(name, shape):
                raise XpruneError(f"TensorRT rejected input shape {list(shape)}")
        buffers = {name: torch.empty(shape, dtype=self.torch_dtype(name), device=self.device)}
        for out in self.output_names:
            out_shape = dims(context.get_tensor_shape(out))
            if any(d < 0 for d in out_shape):
                raise XpruneError(f"output {out!r} has a data-dependent shape {list(out_shape)}; not supported")
            buffers[out] = torch.empty(out_shape, dtype=self.torch_dtype(out), device=self.device)
        for tensor_name, tensor in buffers.items():
            if not context.set_tensor_address(tensor_name, tensor.data_ptr()):
                raise XpruneError(f"TensorRT rejected the device buffer for {tensor_name!r}")
        self.buffers, self.bound_shape = buffers, shape

    def load_input(self, x: np.ndarray) -> None:
        array = np.ascontiguousarray(x, dtype=np.float32)
        self.bind(tuple(int(d) for d in array.shape))
        self.buffers[self.input_name].copy_(torch.from_numpy(array))  # casts to the engine's input type

    def execute(self, context: trt.IExecutionContext, stream: torch.cuda.Stream) -> None:
        if not context.execute_async_v3(stream.cuda_stream):
            raise XpruneError(f"TensorRT failed to run {self.engine_path}")

    def infer_impl(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """Outputs in engine order (boxes, scores for an xprune export), as float32 host arrays."""
        _, context, stream = self.loaded()
        with torch.cuda.device(self.device_index), torch.cuda.stream(stream):
            self.load_input(x)
            self.execute(context, stream)
            outputs = [self.buffers[n].float() for n in self.output_names]
            stream.synchronize()
        return tuple(o.cpu().numpy() for o in outputs)

    def time_device(self, x: np.ndarray, runs: int = 100, warmup: int = 10) -> list[float]:
        """Milliseconds per run between CUDA events recorded on the engine's stream (host copies excluded).

        Runs are enqueued back to back; each sample is the GPU time from its start event to its end event.
        """
        if runs < 1 or warmup < 0:
            raise XpruneError(f"runs must be >= 1 and warmup >= 0, got runs={runs} warmup={warmup}")
        _, context, stream = self.loaded()
        with torch.cuda.device(self.device_index), torch.cuda.stream(stream):
            self.load_input(x)
            for _ in range(warmup):
                self.execute(context, stream)
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(runs)]
            for start, end in events:
                start.record(stream)
                self.execute(context, stream)
                end.record(stream)
            stream.synchronize()
        return [start.elapsed_time(end) for start, end in events]
