"""Layer importance criteria. Each maps a detector (and, if data-driven, calibration batches) to {conv name: score};
a lower score means less important, pruned first.

- l1:   S = sum |W|                                  (weight magnitude; data-free)
- attr: S = E_x[ sum_i |dL/dA_i * A_i| ]            (gradient x activation of the conv's output A under the
                                                      detector's own training loss L; "SHAP-inspired")
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from tqdm import tqdm

from xprune.models.detector import Detector

Batch = tuple[torch.Tensor, list[dict]]


def l1_scores(detector: Detector, batches: Iterable[Batch] | None = None, progress: bool = False) -> dict[str, float]:
    return {name: float(conv.weight.detach().abs().sum()) for name, conv in detector.conv_layers().items()}


def attr_scores(detector: Detector, batches: Iterable[Batch], progress: bool = False,
                total: int | None = None) -> dict[str, float]:
    """One forward-backward per calibration batch; forward hooks keep each conv output, tensor hooks on the
    output receive its gradient. The per-image expectation is the sum over images divided by their count."""
    convs = detector.conv_layers()
    sums = {name: 0.0 for name in convs}
    images = 0

    def forward_hook(name: str) -> Callable:
        def hook(module, inputs, output):
            if output.requires_grad:
                activation = output.detach()
                output.register_hook(lambda grad: _accumulate(name, grad, activation))
        return hook

    def _accumulate(name: str, grad: torch.Tensor, activation: torch.Tensor) -> None:
        sums[name] += float((grad * activation).abs().sum())

    handles = [m.register_forward_hook(forward_hook(n)) for n, m in convs.items()]
    try:
        for x, targets in tqdm(batches, total=total, desc="attr", unit="batch", disable=not progress, leave=False):
            detector.model.zero_grad(set_to_none=True)
            loss = detector.loss(x, targets)
            loss.backward()
            images += x.shape[0]
    finally:
        for h in handles:
            h.remove()
        detector.model.zero_grad(set_to_none=True)
    if images == 0:
        raise ValueError("attribution needs at least one calibration batch")
    return {name: s / images for name, s in sums.items()}


CRITERIA: dict[str, tuple[Callable, bool, str]] = {
    # name: (function, needs calibration data, one line on what it measures)
    "l1": (l1_scores, False, "sum of |W| of the conv's weights"),
    "attr": (attr_scores, True, "E[sum |dL/dA * A|] over calibration images, A the conv output, L the training loss"),
}
