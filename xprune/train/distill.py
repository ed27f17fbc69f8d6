"""Distillation from the unpruned model: the teacher's raw head outputs on the same batch as a second target.

Both models give what every family's `Detector.raw` gives: boxes [B, N, 4] (or [B, N, C, 4] per class) in input
pixels and class probabilities p [B, N, C], anchor by anchor in the same order. For one image, with the teacher's
probabilities t, the student's s (both clamped to [EPS, 1 - EPS]) and the teacher's confidence q_n = max_c t[n, c]:

    D_cls = sum_{n,c} [ t log(t / s) + (1 - t) log((1 - t) / (1 - s)) ]  /  max(1, sum_{n,c} t)
    D_box = sum_n q_n sum_k |b_s[n, k] - b_t[n, k]| / size_t[n, k]    /  max(1, sum_n q_n)

(the Bernoulli KL divergence per class, and the L1 distance of the box corners in units of the teacher box's width
and height, at least one pixel; per-class boxes weigh each class by t[n, c]). D = D_cls + D_box is 0 exactly when
the outputs agree, and is per confident detection of the teacher, as the families' losses are per positive anchor.
The images' terms are averaged, or summed for the families whose own loss sums over the images of a batch
(Ultralytics multiplies its loss by the batch size). Training minimises  family loss + w D  (w: `distill_weight`).

The student's outputs are taken with BatchNorm on its running statistics, as the teacher's and as at inference:
both models then compute the function that is deployed, and a student equal to its teacher has D = 0.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from xprune.errors import XpruneError
from xprune.models.detector import Detector

EPS = 1e-6
MIN_BOX_SIDE = 1.0  # pixels: the smallest teacher box side a box distance is measured in
FORMULA = ("D = sum KL_bernoulli(t || s) / max(1, sum t) + sum_n q_n |b_s - b_t|_1 / size_t / max(1, sum_n q_n), "
           "q_n = max_c t; loss = family loss + w * D")


def distillation_terms(student: tuple[torch.Tensor, torch.Tensor], teacher: tuple[torch.Tensor, torch.Tensor],
                       sum_images: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(D_cls, D_box) of the student's raw outputs against the teacher's (see the module's formula)."""
    (sb, ss), (tb, ts) = student, teacher
    if sb.shape != tb.shape or ss.shape != ts.shape:
        raise XpruneError(f"the teacher's raw outputs {tuple(tb.shape)}, {tuple(ts.shape)} do not match the "
                          f"student's {tuple(sb.shape)}, {tuple(ss.shape)}: distil from the same family and classes")
    sb, ss, tb, ts = sb.float(), ss.float(), tb.float().detach(), ts.float().detach()
    s, t = ss.clamp(EPS, 1 - EPS), ts.clamp(EPS, 1 - EPS)
    kl = t * (t.log() - s.log()) + (1 - t) * ((1 - t).log() - (1 - s).log())
    d_cls = kl.flatten(1).sum(1) / ts.flatten(1).sum(1).clamp(min=1.0)
    q = ts if tb.dim() == 4 else ts.amax(-1)
    wh = (tb[..., 2:] - tb[..., :2]).clamp(min=MIN_BOX_SIDE)
    side = torch.cat([wh, wh], -1)  # (w, h, w, h) for (x1, y1, x2, y2)
    distance = ((sb - tb).abs() / side).sum(-1)
    d_box = (q * distance).flatten(1).sum(1) / q.flatten(1).sum(1).clamp(min=1.0)
    reduce = torch.sum if sum_images else torch.mean
    return reduce(d_cls), reduce(d_box)


def distillation_unsupported(detector: Detector) -> str | None:
    """Why `detector`'s raw outputs cannot be compared anchor by anchor with a teacher's, or None when they can
    (the one-stage families; a two-stage family's outputs follow its own proposals)."""
    try:
        detector.output_levels()
    except XpruneError:
        return f"{detector.family}'s raw outputs follow its own region proposals, not fixed anchors"
    return None


def sums_over_images(detector: Detector) -> bool:
    """Whether the family's own loss sums over the images of a batch (Ultralytics' loss is per batch)."""
    from xprune.models.yolo import YoloDetector
    return isinstance(detector, YoloDetector)


class Distiller:
    """The distillation term of a PyTorch student against a frozen copy of `teacher` (left untouched)."""

    def __init__(self, teacher: Detector, weight: float):
        if not weight > 0:
            raise XpruneError(f"the distillation weight must be positive, got {weight}")
        reason = distillation_unsupported(teacher)
        if reason:
            raise XpruneError(f"no distillation for {teacher.family}: {reason}")
        self.teacher = copy.deepcopy(teacher)
        self.teacher.model.eval()
        self.teacher.model.requires_grad_(False)
        self.weight = weight
        self.sum_images = sums_over_images(teacher)

    def terms(self, student: Detector, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(D_cls, D_box) on batch `x`; gradients flow into the student only."""
        with torch.no_grad():
            target = self.teacher.raw(x)
        was_training = student.model.training
        student.model.eval()  # running BatchNorm statistics, as the teacher's and at inference
        try:
            outputs = student.raw(x)
        finally:
            student.model.train(was_training)
        return distillation_terms(outputs, target, self.sum_images)

    def term(self, student: Detector, x: torch.Tensor) -> torch.Tensor:
        """D on batch `x` (unweighted)."""
        d_cls, d_box = self.terms(student, x)
        return d_cls + d_box

    def record(self) -> dict[str, Any]:
        return {"weight": self.weight, "formula": FORMULA, "images": "summed" if self.sum_images else "averaged"}


__all__ = ["Distiller", "EPS", "FORMULA", "MIN_BOX_SIDE", "distillation_terms", "distillation_unsupported",
           "sums_over_images"]
