"""An ONNX graph run by PyTorch through onnx2torch, behind the common Runner interface (see `ModuleRunner`)."""

from __future__ import annotations

import os

import onnx
import torch

from xprune.runtime.onnx2torch.loader import ModuleFromOnnx, to_device
from xprune.runtime.pytorch.runner import ModuleRunner


class Onnx2TorchRunner(ModuleRunner):
    """Entering converts the graph (once per loader) and moves a copy of the module to the device; leaving drops
    it."""

    name = "onnx2torch"

    def __init__(self, model: str | os.PathLike | bytes | onnx.ModelProto | ModuleFromOnnx, device: str = "cpu",
                 fp16: bool = False, cuda_graph: bool = False, device_events: bool = False,
                 nms_iou: float | None = None):
        """`model` is the graph, or a `ModuleFromOnnx` loader to share one conversion between runners."""
        super().__init__(device, fp16=fp16, cuda_graph=cuda_graph, device_events=device_events)
        self.load_graph = model if isinstance(model, ModuleFromOnnx) else ModuleFromOnnx(model)
        if nms_iou is not None:
            self.nms_iou = nms_iou

    def load_module(self) -> torch.nn.Module:
        return self.load_graph()

    def place(self, module: torch.nn.Module) -> torch.nn.Module:
        return to_device(module, self.device, self.dtype).eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        assert self.module is not None
        out = self.module(x)
        return tuple(out) if isinstance(out, (list, tuple)) else (out,)

    def version(self) -> str:
        from xprune.runtime.onnx2torch import available

        return available()
