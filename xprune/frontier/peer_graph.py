"""What Torch-Pruning needs to remove a detector's channels without changing its outputs: Ultralytics' C2f blocks
without their channel split, the layers it must leave alone (and why), the tensors its dependency graph is traced
from, and the gradients Taylor importance reads.

The C2f rewrite is ported from Torch-Pruning's own YOLOv8 example (examples/yolov8/yolov8_pruning.py in the
VainF/Torch-Pruning repository: `C2f_v2`, `transfer_weights`, `replace_c2f_with_c2f_v2`): C2f splits one conv's
output in two halves (`chunk`), which Torch-Pruning 1.6 cannot index through, so the conv becomes two convs of one
half each, with the same weights, BatchNorm and activation; the bottlenecks and the output conv are kept as they are.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from xprune.models.detector import Detector

PREDICTOR = "final predictor: its output channels are the raw outputs, whose shapes must not change"
DFL = "the Detect head's fixed DFL conv: decodes reg_max bins per box side"
HELD = "weights all zero: a removed layer the fold takes out, held at zero by the fine-tuning"


class SplitFreeC2f(nn.Module):
    """Ultralytics' C2f with its first conv's two output halves as two convs (cv0: first half, cv1: second half), so
    the block has no `chunk` for a channel-pruning tracer to index through; computes exactly what the C2f did."""

    def __init__(self, c2f: Any):  # an Ultralytics C2f (untyped attributes)
        super().__init__()
        half = c2f.cv1.conv.out_channels // 2
        self.cv0 = conv_half(c2f.cv1, slice(0, half))
        self.cv1 = conv_half(c2f.cv1, slice(half, 2 * half))
        self.cv2 = c2f.cv2
        self.m = c2f.m
        for key in ("f", "i", "type", "np"):  # what Ultralytics' DetectionModel routes and reports layers by
            if hasattr(c2f, key):
                setattr(self, key, getattr(c2f, key))

    def forward(self, x):
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


def conv_half(conv_bn_act: nn.Module, rows: slice) -> nn.Module:
    """A copy of an Ultralytics Conv (conv, bn, act) keeping only the output channels `rows`."""
    part: Any = copy.deepcopy(conv_bn_act)
    conv, bn = part.conv, part.bn
    with torch.no_grad():
        conv.weight = nn.Parameter(conv.weight[rows].clone())
        if conv.bias is not None:
            conv.bias = nn.Parameter(conv.bias[rows].clone())
        bn.weight = nn.Parameter(bn.weight[rows].clone())
        bn.bias = nn.Parameter(bn.bias[rows].clone())
        bn.running_mean = bn.running_mean[rows].clone()
        bn.running_var = bn.running_var[rows].clone()
    conv.out_channels = bn.num_features = conv.weight.shape[0]
    return part


def split_free(model: nn.Module) -> dict[str, list[str]]:
    """Replace every Ultralytics C2f (and subclass) inside `model` by a `SplitFreeC2f`, in place. Returns the
    first convs that became two: {old conv name: [first half, second half]}; nothing for a model without C2f."""
    if not type(model).__module__.startswith("ultralytics"):
        return {}
    from ultralytics.nn.modules import C2f

    renamed: dict[str, list[str]] = {}
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, C2f):
                setattr(module, child_name, SplitFreeC2f(child))
                block = f"{name}.{child_name}" if name else child_name
                renamed[f"{block}.cv1.conv"] = [f"{block}.cv0.conv", f"{block}.cv1.conv"]
    return renamed


def ignored_layers(det: Detector) -> list[dict]:
    """The convs whose output channels Torch-Pruning must keep, in module order, each with why: every final
    predictor (the raw outputs keep their shapes, which distillation from the unpruned model needs), YOLO's DFL
    conv, and convs whose weights are all zero (the fold removes them already; the fine-tuning holds them at
    zero by name, so they keep their place)."""
    predictors = set(det.predictor_layers)
    out = []
    for name, conv in det.conv_layers().items():
        if name in predictors:
            out.append({"layer": name, "why": DFL if ".dfl." in f".{name}" else PREDICTOR})
        elif not bool(conv.weight.detach().any()):
            out.append({"layer": name, "why": HELD})
    return out


def predictor_outputs(det: Detector, x: torch.Tensor) -> list[torch.Tensor]:
    """The outputs of the detector's predictor convs on `x`: what the dependency graph is traced back from. Tracing
    from the raw outputs instead takes the graph through the heads' reshapes, concatenations and box decoding, where
    Torch-Pruning 1.6's index mapping can loop without end (torchvision's SSDlite); what follows the ignored
    predictors has no channel to prune anyway."""
    convs = det.conv_layers()
    out: list[torch.Tensor] = []
    hooks = [convs[n].register_forward_hook(lambda module, args, y: out.append(y)) for n in det.predictor_layers]
    try:
        det.raw(x)
    finally:
        for h in hooks:
            h.remove()
    return out


def loss_gradients(det: Detector, calib, seed: int, batch_size: int) -> dict[str, torch.Tensor]:
    """Gradients of the family's training loss (`train_step_loss`, summed over the calib batches, in order, without
    augmentation) by parameter name, computed on a copy so that `det`'s BatchNorm statistics stay as they are."""
    scratch = copy.deepcopy(det)
    torch.manual_seed(seed)
    scratch.model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for x, targets, _ in calib.batches(batch_size):
            scratch.train_step_loss(x, targets).backward()
    return {n: p.grad.detach().clone() for n, p in scratch.model.named_parameters() if p.grad is not None}


def raw_shapes(det: Detector) -> list[tuple[int, ...]]:
    det.model.eval()
    with torch.no_grad():
        return [tuple(t.shape) for t in det.raw(torch.zeros(1, 3, det.input_size, det.input_size))]
