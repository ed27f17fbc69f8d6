"""Runtime backends with one interface: a runner is a context manager with `infer(x) -> (boxes, scores)` on numpy
arrays, so latency and mAP are measured the same way whatever runs the model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from xprune.errors import XpruneError
from xprune.models.detector import NMS_IOU, Detector, postprocess


class Runner:
    name = "runner"
    precision = "fp32"
    device = "cpu"
    nms_iou = NMS_IOU  # the model family's NMS IoU; ONNX and engine files carry it in their metadata

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def infer(self, x: np.ndarray) -> tuple[np.ndarray, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> list[dict]:
        """Detections through the shared post-process (the same NMS for every backend)."""
        boxes, scores = self.infer(x.numpy())[:2]
        return postprocess(torch.from_numpy(np.asarray(boxes)), torch.from_numpy(np.asarray(scores)), iou=self.nms_iou)


class TorchRunner(Runner):
    """PyTorch eager, on CPU or CUDA; fp16 on CUDA only."""

    name = "torch"

    def __init__(self, detector: Detector, device: str = "cpu", fp16: bool = False):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise XpruneError("CUDA was requested but no NVIDIA GPU is visible to PyTorch")
        if fp16 and not device.startswith("cuda"):
            raise XpruneError("fp16 PyTorch runs need --device cuda")
        self.detector, self.device, self.precision = detector, device, "fp16" if fp16 else "fp32"
        self.nms_iou = detector.nms_iou
        self.dtype = torch.float16 if fp16 else torch.float32

    def __enter__(self):
        self.detector.model.to(self.device, self.dtype).eval()
        return self

    def __exit__(self, *exc):
        self.detector.model.to("cpu", torch.float32)

    @torch.no_grad()
    def infer(self, x):
        xt = torch.from_numpy(x).to(self.device, self.dtype)
        out = self.detector.raw(xt)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return tuple(o.float().cpu().numpy() for o in out)


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime on CPU (or its CUDA provider). Spinning is off by default: on small machines it corrupts
    interleaved timing (DESIGN.md "Measurement protocol")."""

    name = "onnxruntime"

    def __init__(self, model: str | Path | bytes, device: str = "cpu", threads: int | None = None,
                 spinning: bool = False, nms_iou: float | None = None):
        self.model, self.device, self.threads, self.spinning = model, device, threads, spinning
        if nms_iou is not None:
            self.nms_iou = nms_iou
        self.session = None

    def __enter__(self):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = self.threads or (os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        if self.device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise XpruneError("ONNX Runtime has no CUDA provider here; install onnxruntime-gpu on a GPU machine")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        source = self.model if isinstance(self.model, bytes) else str(self.model)
        try:
            self.session = ort.InferenceSession(source, opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise XpruneError(f"ONNX Runtime cannot load the model: {str(e).splitlines()[0][:200]}") from None
        self.input_name = self.session.get_inputs()[0].name
        return self

    def __exit__(self, *exc):
        self.session = None

    def infer(self, x):
        return tuple(self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}))
