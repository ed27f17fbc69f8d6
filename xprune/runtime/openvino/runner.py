"""OpenVINO's CPU plugin behind the common Runner interface.

The model is compiled for latency (one stream, `threads` inference threads) with the inference precision set
explicitly, and read back after compiling: a CPU that cannot infer in bf16 is an error, not a silent fp32 row.
`infer` is one synchronous request on a request object made once, its outputs copied out (the request reuses its
output buffers).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from xprune.errors import XpruneError
from xprune.runtime.base import Runner
from xprune.runtime.openvino.loader import INFERENCE_HINTS, first_line, read_model

DEVICE = "CPU"  # OpenVINO's name for the plugin


def hint_name(value: Any) -> str:
    """An element type as OpenVINO reports it (`<Type: 'bfloat16'>`, "f32", ...) in the hint's own spelling."""
    text = str(getattr(value, "to_string", lambda: value)())
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(text, text)


class OpenVinoRunner(Runner):
    """An IR or ONNX file (or an ONNX file's bytes) compiled for OpenVINO's CPU plugin at `precision`."""

    name = "openvino"

    def __init__(self, model: str | Path | bytes, threads: int | None = None, precision: str = "fp32",
                 nms_iou: float | None = None):
        if precision not in INFERENCE_HINTS:
            raise XpruneError(f"OpenVINO runs fp32, bf16 or int8 models, not {precision!r}")
        self.model, self.threads, self.precision = model, threads, precision
        if nms_iou is not None:
            self.nms_iou = nms_iou
        self.request: Any = None  # an openvino.InferRequest while active
        self.compiled: Any = None

    def compile_config(self) -> dict[str, Any]:
        return {"INFERENCE_PRECISION_HINT": INFERENCE_HINTS[self.precision], "PERFORMANCE_HINT": "LATENCY",
                "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": self.effective_threads()}

    def activate_impl(self) -> None:
        import openvino as ov

        model = read_model(self.model)
        try:
            compiled = ov.Core().compile_model(model, DEVICE, self.compile_config())
        except RuntimeError as e:
            raise XpruneError(f"OpenVINO cannot compile the model: {first_line(e)}") from None
        asked, got = INFERENCE_HINTS[self.precision], hint_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        if got != asked:
            raise XpruneError(f"OpenVINO compiled the model for {got}, not {asked}: this CPU cannot infer in "
                              f"{self.precision}")
        self.compiled, self.request = compiled, compiled.create_infer_request()

    def deactivate_impl(self) -> None:
        self.request = self.compiled = None

    def infer_impl(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        outputs = self.request.infer({0: np.ascontiguousarray(x, dtype=np.float32)}, share_outputs=False)
        return tuple(outputs.to_tuple())

    def version(self) -> str:
        from xprune.runtime.openvino import available

        return available()

    def effective_threads(self) -> int:
        return self.threads or (os.cpu_count() or 1)
