"""ONNX Runtime behind the common Runner interface.

`infer` is the bare `session.run` call. polygraphy's `OnnxrtRunner` would add, on every timed call, a check of the
feed against the input metadata, a lookup of the session's outputs, an OrderedDict and its own wall-clock reads:
a fixed cost per call that pulls every latency ratio towards 1, so the session is run directly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from xprune.runtime.base import Runner
from xprune.runtime.onnxruntime.loader import SessionFromOnnx


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime on CPU (or its CUDA provider). Spinning is off by default: on small machines it corrupts
    interleaved timing."""

    name = "onnxruntime"

    def __init__(self, model: str | Path | bytes, device: str = "cpu", threads: int | None = None,
                 spinning: bool = False, nms_iou: float | None = None):
        self.load_session = SessionFromOnnx(model, device=device, threads=threads, spinning=spinning)
        self.model, self.device, self.threads, self.spinning = model, device, threads, spinning
        if nms_iou is not None:
            self.nms_iou = nms_iou
        self.session: Any = None  # an onnxruntime.InferenceSession while active
        self.input_name = ""

    def activate_impl(self) -> None:
        self.session = self.load_session()
        self.input_name = self.session.get_inputs()[0].name

    def deactivate_impl(self) -> None:
        self.session = None

    def infer_impl(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}))

    def version(self) -> str:
        import onnxruntime

        return onnxruntime.__version__

    def effective_threads(self) -> int:
        return self.threads or (os.cpu_count() or 1)
