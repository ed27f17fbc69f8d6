"""Layer importance criteria. Each maps a detector (and, if data-driven, calibration batches) to {conv name: score};
a lower score means less important, pruned first.

Every criterion is called as `fn(detector, batches, progress=..., seed=..., [total=...])`: `batches` is a list of
(images, targets) or None for data-free criteria, `total` the number of batches (data-driven criteria only), `seed`
the scoring seed (only the stochastic criteria use it). Scores are finite and >= 0; a conv that the forward pass
never executes scores 0 under the activation-based criteria.

- l1:       S = sum |W|                                (weight magnitude; data-free)
- attr:     S = E_x[ sum_i |dL/dA_i * A_i| ]          (gradient x activation of the conv's output A under the
                                                        detector's own training loss L; "SHAP-inspired")
- taylor:   S = sum_b |sum_w dL_b/dw * w| / images    (first-order Taylor estimate of the loss change when the
                                                        layer's weights are zeroed; Molchanov et al. 2017/2019)
- hrank:    S = mean over images and channels of rank((W*x)_c)   (HRank, Lin et al. 2020; forward only)
- random:   S ~ U(0, 1), seeded                        (baseline)
- gradshap: S = E_x[ sum_i |GradientSHAP_i| ]          (Captum's LayerGradientShap on the conv output, zero-image
                                                        baseline, the detector's loss as the explained scalar)
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch
from tqdm import tqdm

from xprune.errors import XpruneError
from xprune.models.detector import Detector

Batch = tuple[torch.Tensor, list[dict]]

# HRank's deterministic subsample (see hrank_scores).
HRANK_MAX_IMAGES = 32
HRANK_MAX_CHANNELS = 32
# GradientSHAP samples per image (Captum's default n_samples).
GRADSHAP_SAMPLES = 5
CAPTUM_PIN = "captum==0.9.0"


def l1_scores(detector: Detector, batches: Iterable[Batch] | None = None, progress: bool = False,
              total: int | None = None, seed: int = 0) -> dict[str, float]:
    return {name: float(conv.weight.detach().abs().sum()) for name, conv in detector.conv_layers().items()}


def attr_scores(detector: Detector, batches: Iterable[Batch], progress: bool = False,
                total: int | None = None, seed: int = 0) -> dict[str, float]:
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


def taylor_scores(detector: Detector, batches: Iterable[Batch], progress: bool = False,
                  total: int | None = None, seed: int = 0) -> dict[str, float]:
    """First-order Taylor estimate of |L(W=0) - L(W)| ~= |sum_w dL/dw * w| per conv (the whole layer's weights
    zeroed, biases kept, as `apply_plan` does), taken per calibration batch and summed, divided by the image
    count. One forward-backward per batch under the detector's own loss; the absolute value is per batch, so the
    batch size enters the estimate (the same batch size gives the same scores). A zeroed layer scores exactly 0,
    and so does a conv outside the loss graph (YOLOv8's DFL conv, used only to decode boxes at inference).

    Gradients come from torch.autograd.grad, so no .grad is left on the model; convs whose weights are frozen
    (YOLOv8's fixed DFL conv) get requires_grad for the duration of the call and are restored afterwards."""
    convs = detector.conv_layers()
    names = list(convs)
    weights = [convs[n].weight for n in names]
    sums = {name: 0.0 for name in names}
    images = 0
    frozen = [w for w in weights if not w.requires_grad]
    try:
        for w in frozen:
            w.requires_grad_(True)
        for x, targets in tqdm(batches, total=total, desc="taylor", unit="batch", disable=not progress, leave=False):
            loss = detector.loss(x, targets)
            grads = torch.autograd.grad(loss, weights, allow_unused=True)
            for name, w, g in zip(names, weights, grads):
                if g is not None:
                    sums[name] += float((g.double() * w.detach().double()).sum().abs())
            images += x.shape[0]
    finally:
        for w in frozen:
            w.requires_grad_(False)
    if images == 0:
        raise ValueError("taylor needs at least one calibration batch")
    return {name: s / images for name, s in sums.items()}


def hrank_scores(detector: Detector, batches: Iterable[Batch], progress: bool = False, total: int | None = None,
                 seed: int = 0, max_images: int = HRANK_MAX_IMAGES,
                 max_channels: int = HRANK_MAX_CHANNELS) -> dict[str, float]:
    """HRank (Lin et al., CVPR 2020) per layer: the mean matrix rank (torch.linalg.matrix_rank, default tolerance)
    of the conv's output feature maps, averaged over channels and images; forward only (`detector.raw`, the
    inference graph), no gradients, targets unused.

    - The rank is that of W*x, without the conv's bias (recomputed from the conv's input when it has one): zeroing
      keeps the bias, so what pruning removes is W*x, and a zeroed conv scores exactly 0 (rank(W*x + b) differs
      from rank(W*x) by at most 1).
    - Affordable by a deterministic subsample: the first `max_images` calibration images (in order) and at most
      `max_channels` channels per conv, evenly spaced (round(linspace(0, C-1, max_channels))). A conv called
      several times per forward (a shared head) averages over every call.
    - Ranks are bounded by min(H, W), so across layers (this is a global ranking) low-resolution layers score
      lower by construction; HRank was designed to rank filters within one layer."""
    if max_images < 1 or max_channels < 1:
        raise XpruneError("hrank needs max_images >= 1 and max_channels >= 1")
    convs = detector.conv_layers()
    sums = {name: 0.0 for name in convs}
    counts = {name: 0 for name in convs}

    def forward_hook(name: str, conv: torch.nn.Conv2d) -> Callable:
        def hook(module, inputs, output):
            # W*x without the bias, recomputed from the conv's input: subtracting b from W*x + b would lose a
            # small W*x to float32 rounding next to a large bias (YOLOv8's class-logit bias is about -9).
            maps = output.detach() if conv.bias is None else conv._conv_forward(inputs[0].detach(), conv.weight, None)
            c = maps.shape[1]
            if c > max_channels:
                idx = torch.linspace(0, c - 1, max_channels).round().long()
                maps = maps[:, idx]
            ranks = torch.linalg.matrix_rank(maps.float())
            sums[name] += float(ranks.sum())
            counts[name] += ranks.numel()
        return hook

    detector.model.eval()
    images = 0
    handles = [m.register_forward_hook(forward_hook(n, m)) for n, m in convs.items()]
    try:
        with torch.no_grad():
            for x, _ in tqdm(batches, total=total, desc="hrank", unit="batch", disable=not progress, leave=False):
                x = x[:max_images - images]
                detector.raw(x)
                images += x.shape[0]
                if images >= max_images:
                    break
    finally:
        for h in handles:
            h.remove()
    if images == 0:
        raise ValueError("hrank needs at least one calibration batch")
    return {name: sums[name] / counts[name] if counts[name] else 0.0 for name in convs}


def random_scores(detector: Detector, batches: Iterable[Batch] | None = None, progress: bool = False,
                  total: int | None = None, seed: int = 0) -> dict[str, float]:
    """U(0, 1) per conv from a private generator seeded with `seed`, in module order (global RNG untouched)."""
    g = torch.Generator().manual_seed(seed)
    names = list(detector.conv_layers())
    values = torch.rand(len(names), generator=g, dtype=torch.float64)
    return {name: float(v) for name, v in zip(names, values)}


def gradshap_scores(detector: Detector, batches: Iterable[Batch], progress: bool = False,
                    total: int | None = None, seed: int = 0, n_samples: int = GRADSHAP_SAMPLES,
                    layers: list[str] | None = None) -> dict[str, float]:
    """GradientSHAP per conv with Captum's LayerGradientShap: for each calibration image x and conv output A,
    attr = mean over `n_samples` draws of dL/dA(b + a(x - b)) * (A(x) - A(b)), a ~ U(0, 1), baseline b = the
    all-zero image, L = the detector's own loss of that image (its targets); the score is sum |attr| over the
    output's elements, averaged over images (the same reduction as `attr`).

    Captum hooks one layer per call, and the detector loss couples the images of a batch (YOLOv8 normalises by
    the batch's target count), so every (image, conv, sample) is its own Captum call at batch size 1: per image
    and conv, n_samples x (one forward-backward + two forwards). That is ~4 x n_samples x #convs forward
    equivalents per image (yolov8n: 64 convs, 5 samples: ~1300, a few hundred times `attr`); use few
    calibration images, or a GPU. `layers` restricts scoring to those convs (the others are left out).
    Captum stores one output per hooked module and call, so a conv run several times per forward (a shared
    head: RetinaNet, the Faster R-CNN RPN) is attributed at its last call only. The draws of `a` come from
    NumPy's global RNG (Captum's choice): it is seeded with `seed` here and restored afterwards."""
    try:
        from captum.attr import LayerGradientShap
    except ImportError:
        raise XpruneError(f"method 'gradshap' needs Captum, which is not installed: pip install {CAPTUM_PIN}") from None
    if n_samples < 1:
        raise XpruneError("gradshap needs n_samples >= 1")
    convs = detector.conv_layers()
    if layers is not None:
        unknown = [n for n in layers if n not in convs]
        if unknown:
            raise XpruneError(f"gradshap: no conv named {unknown[0]}")
        convs = {n: convs[n] for n in layers}
    sums = {name: 0.0 for name in convs}
    images = 0
    np_state = np.random.get_state()
    np.random.seed(seed)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for x, targets in tqdm(batches, total=total, desc="gradshap", unit="batch", disable=not progress,
                                   leave=False):
                for i in range(x.shape[0]):
                    xi, ti = x[i:i + 1], [targets[i]]
                    baseline = torch.zeros_like(xi)

                    def forward(inp: torch.Tensor, _t=ti) -> torch.Tensor:  # [1]: the loss of this one image
                        return detector.loss(inp, _t).reshape(1)

                    for name, conv in convs.items():
                        explainer = LayerGradientShap(forward, conv)
                        # n_samples single-sample calls, averaged: Captum's own estimator, one draw per call
                        draws = [explainer.attribute(xi, baselines=baseline, n_samples=1, stdevs=0.0).detach()
                                 for _ in range(n_samples)]
                        sums[name] += float(torch.stack(draws).mean(dim=0).abs().sum())
                    images += 1
    finally:
        np.random.set_state(np_state)
        detector.model.zero_grad(set_to_none=True)
    if images == 0:
        raise ValueError("gradshap needs at least one calibration batch")
    return {name: s / images for name, s in sums.items()}


CRITERIA: dict[str, tuple[Callable, bool, str]] = {
    # name: (function, needs calibration data, one line on what it measures)
    "l1": (l1_scores, False, "sum of |W| of the conv's weights"),
    "attr": (attr_scores, True, "E[sum |dL/dA * A|] over calibration images, A the conv output, L the training loss"),
    "taylor": (taylor_scores, True,
               "|sum_w dL/dw * w| per calibration batch, summed / images: first-order loss change if W is zeroed"),
    "hrank": (hrank_scores, True,
              f"mean matrix rank of the conv's bias-free output maps over <= {HRANK_MAX_IMAGES} images and "
              f"<= {HRANK_MAX_CHANNELS} evenly spaced channels (HRank; forward only)"),
    "random": (random_scores, False, "seeded U(0, 1) per layer: the random baseline"),
    "gradshap": (gradshap_scores, True,
                 f"E[sum |GradientSHAP|] of the conv output (Captum LayerGradientShap, zero-image baseline, "
                 f"{GRADSHAP_SAMPLES} samples, detector loss); needs captum, slow"),
}
