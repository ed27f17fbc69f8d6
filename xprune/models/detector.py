"""The common detector interface every family adapter implements, and the one shared post-process.

Conventions, for every family:
- input `x`: float tensor [B, 3, S, S] in [0, 1], letterboxed by `xprune.data.transforms.letterbox`;
- targets: list of {"boxes": [N, 4] xyxy in input pixels, "labels": [N] int64 in 0..num_classes-1};
- `raw(x)` returns what an exported engine returns: (boxes, scores) with boxes [B, N, 4] (class-agnostic) or
  [B, N, C, 4] (per class) in input pixels, and scores [B, N, C] probabilities. Decoding is part of the graph;
- `postprocess(boxes, scores)` is the one NMS step shared by every backend (PyTorch, ONNX Runtime, TensorRT),
  so mAP differences between backends are the model's and not the plumbing's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision.ops import batched_nms

# COCO evaluation settings, the same for every backend: scores above 0.001, at most 100 detections per image.
SCORE_THRESHOLD = 0.001
MAX_DETECTIONS = 100
NMS_IOU = 0.5
PRE_NMS_TOPK = 3000


@dataclass
class Detector:
    """A detector of one family with its settings. Subclasses implement loss and raw."""

    family: str
    model: nn.Module
    num_classes: int
    input_size: int
    # Dataset category id of each model class; None means "the dataset's categories in sorted id order".
    category_ids: list[int] | None = None
    # Qualified names of the final predictor convs of every head (protected from pruning unless asked).
    predictor_layers: list[str] = field(default_factory=list)
    nms_iou: float = NMS_IOU
    # What the checkpoint says about where these weights came from (e.g. the pruning plan).
    meta: dict = field(default_factory=dict)

    # --- what every family implements -------------------------------------------------------------------------
    def loss(self, x: torch.Tensor, targets: list[dict]) -> torch.Tensor:  # pragma: no cover - abstract
        """The family's own training loss (a scalar), with BatchNorm statistics frozen."""
        raise NotImplementedError

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def train_step_loss(self, x: torch.Tensor, targets: list[dict]) -> torch.Tensor:
        """Loss in full training mode (BatchNorm updating): what a training loop uses."""
        return self.loss(x, targets)

    # --- shared -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> list[dict]:
        self.model.eval()
        boxes, scores = self.raw(x)
        return postprocess(boxes, scores, iou=self.nms_iou)

    def conv_layers(self) -> dict[str, nn.Conv2d]:
        """Every Conv2d (depthwise included), by qualified name, in module order."""
        return {n: m for n, m in self.model.named_modules() if isinstance(m, nn.Conv2d)}

    def eval(self) -> "Detector":
        self.model.eval()
        return self


def freeze_batchnorm(model: nn.Module) -> list[nn.Module]:
    """Put norm layers in eval mode (use running statistics) while the model is in train mode; returns them."""
    frozen = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            frozen.append(m)
    return frozen


class RawHeads(nn.Module):
    """The raw head path as a plain module whose forward takes the image tensor, for tracers and MAC counters."""

    def __init__(self, detector: Detector):
        super().__init__()
        self.model = detector.model
        self._raw = detector.raw

    def forward(self, x):
        return self._raw(x)


def postprocess(boxes: torch.Tensor, scores: torch.Tensor, score_threshold: float = SCORE_THRESHOLD,
                max_detections: int = MAX_DETECTIONS, iou: float = NMS_IOU,
                pre_nms_topk: int = PRE_NMS_TOPK) -> list[dict]:
    """Per-class NMS (torchvision.ops.batched_nms) over decoded boxes; one dict per image.

    boxes: [B, N, 4] or [B, N, C, 4] xyxy; scores: [B, N, C]. Returns boxes [K, 4], scores [K], labels [K] (0-based).
    """
    boxes = torch.as_tensor(boxes).float()
    scores = torch.as_tensor(scores).float()
    out = []
    b, n, c = scores.shape
    for i in range(b):
        s = scores[i].reshape(-1)  # (anchor, class) pairs
        keep = torch.nonzero(s > score_threshold).squeeze(1)
        if keep.numel() > pre_nms_topk:
            keep = keep[s[keep].topk(pre_nms_topk).indices]
        anchor, label = keep // c, keep % c
        if boxes.dim() == 4:
            bx = boxes[i, anchor, label]
        else:
            bx = boxes[i, anchor]
        sc = s[keep]
        kept = batched_nms(bx, sc, label, iou)[:max_detections]
        out.append({"boxes": bx[kept], "scores": sc[kept], "labels": label[kept]})
    return out
