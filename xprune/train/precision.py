"""Does bf16 autocast train the way fp32 does? On the same weights and batch, the loss and the gradient of one
training step under each precision: their cosine and relative difference, overall, per top-level module and for the
parameters with the largest fp32 gradients. bf16 steps are about 3x faster on this project's CPU; this says what they
cost in gradient quality, so a family's precision rests on a measurement and not on its speed alone."""

from __future__ import annotations

import torch

from xprune.models.detector import Detector
from xprune.train.loop import autocast


def _gradients(det: Detector, state: dict, x, targets, precision: str) -> tuple[float, dict[str, torch.Tensor]]:
    det.model.load_state_dict(state)  # the same weights and batch-norm statistics for both precisions
    det.model.train()
    det.model.zero_grad(set_to_none=True)
    with autocast(precision):
        loss = det.train_step_loss(x, targets)
    loss.backward()
    return float(loss.detach()), {n: p.grad.detach().clone() for n, p in det.model.named_parameters()
                                  if p.grad is not None}


def _agreement(a: list[torch.Tensor], b: list[torch.Tensor]) -> dict:
    u, v = torch.cat([t.flatten().double() for t in a]), torch.cat([t.flatten().double() for t in b])
    return {"cosine": float(torch.nn.functional.cosine_similarity(u, v, dim=0)),
            "relative_difference": float((u - v).norm() / u.norm()), "fp32_norm": float(u.norm())}


def gradient_agreement(det: Detector, batches: list, largest: int = 5) -> list[dict]:
    """One record per (images, targets) batch comparing the bf16 step with the fp32 one. The model's weights and
    batch-norm statistics are restored afterwards."""
    state = {k: v.clone() for k, v in det.model.state_dict().items()}
    records = []
    try:
        for x, targets in batches:
            loss32, g32 = _gradients(det, state, x, targets, "fp32")
            loss16, g16 = _gradients(det, state, x, targets, "bf16")
            names = [n for n in g32 if n in g16]
            modules = sorted({n.split(".")[0] for n in names})
            top = sorted(names, key=lambda n: -float(g32[n].norm()))[:largest]
            records.append({
                "loss_fp32": loss32, "loss_bf16": loss16,
                **_agreement([g32[n] for n in names], [g16[n] for n in names]),
                "modules": {m: _agreement([g32[n] for n in names if n.split(".")[0] == m],
                                          [g16[n] for n in names if n.split(".")[0] == m]) for m in modules},
                "largest": [{"parameter": n, **_agreement([g32[n]], [g16[n]])} for n in top],
            })
    finally:
        det.model.load_state_dict(state)
        det.model.zero_grad(set_to_none=True)
        det.model.eval()
    return records
