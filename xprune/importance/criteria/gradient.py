"""Gradient criteria under the detector's own training loss: attribution (gradient x activation) and Taylor."""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from xprune.importance.criteria.base import Batch, Criterion, mean_per_image
from xprune.models.detector import Detector


class Attribution(Criterion):
    """One forward-backward per calibration batch; forward hooks keep each conv output, tensor hooks on the
    output receive its gradient. The per-image expectation is the sum over images divided by their count."""

    name = "attr"
    about = "E[sum |dL/dA * A|] over calibration images, A the conv output, L the training loss"
    needs_data = True

    def score(self, detector: Detector, batches: Iterable[Batch] | None = None, *, progress: bool = False,
              seed: int = 0, total: int | None = None) -> dict[str, float]:
        convs = detector.conv_layers()
        sums = {name: 0.0 for name in convs}
        images = 0

        def forward_hook(name: str) -> Callable:
            def hook(module, inputs, output):
                if output.requires_grad:
                    activation = output.detach()
                    output.register_hook(lambda grad: accumulate(name, grad, activation))
            return hook

        def accumulate(name: str, grad: torch.Tensor, activation: torch.Tensor) -> None:
            sums[name] += float((grad * activation).abs().sum())

        handles = [m.register_forward_hook(forward_hook(n)) for n, m in convs.items()]
        try:
            for x, targets in self.progress_bar(batches, progress, total):
                detector.model.zero_grad(set_to_none=True)
                loss = detector.loss(x, targets)
                loss.backward()
                images += x.shape[0]
        finally:
            for h in handles:
                h.remove()
            detector.model.zero_grad(set_to_none=True)
        return mean_per_image(sums, images, "attribution")


class Taylor(Criterion):
    """First-order Taylor estimate of |L(W=0) - L(W)| ~= |sum_w dL/dw * w| per conv (the whole layer's weights
    zeroed, biases kept, as `apply_plan` does), taken per calibration batch and summed, divided by the image
    count. One forward-backward per batch under the detector's own loss; the absolute value is per batch, so the
    batch size enters the estimate (the same batch size gives the same scores). A zeroed layer scores exactly 0,
    and so does a conv outside the loss graph (YOLOv8's DFL conv, used only to decode boxes at inference).

    Gradients come from torch.autograd.grad, so no .grad is left on the model; convs whose weights are frozen
    (YOLOv8's fixed DFL conv) get requires_grad for the duration of the call and are restored afterwards."""

    name = "taylor"
    about = "|sum_w dL/dw * w| per calibration batch, summed / images: first-order loss change if W is zeroed"
    needs_data = True

    def score(self, detector: Detector, batches: Iterable[Batch] | None = None, *, progress: bool = False,
              seed: int = 0, total: int | None = None) -> dict[str, float]:
        convs = detector.conv_layers()
        names = list(convs)
        weights = [convs[n].weight for n in names]
        sums = {name: 0.0 for name in names}
        images = 0
        frozen = [w for w in weights if not w.requires_grad]
        try:
            for w in frozen:
                w.requires_grad_(True)
            for x, targets in self.progress_bar(batches, progress, total):
                loss = detector.loss(x, targets)
                grads = torch.autograd.grad(loss, weights, allow_unused=True)
                for name, w, g in zip(names, weights, grads):
                    if g is not None:
                        sums[name] += float((g.double() * w.detach().double()).sum().abs())
                images += x.shape[0]
        finally:
            for w in frozen:
                w.requires_grad_(False)
        return mean_per_image(sums, images, "taylor")
