"""GradientSHAP of each conv's output through Captum (optional: needs captum)."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from xprune.errors import XpruneError
from xprune.importance.criteria.base import Batch, Criterion, mean_per_image
from xprune.models.detector import Detector

GRADSHAP_SAMPLES = 5  # samples per image (Captum's default n_samples)
CAPTUM_PIN = "captum==0.9.0"


class GradientShap(Criterion):
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

    name = "gradshap"
    about = (f"E[sum |GradientSHAP|] of the conv output (Captum LayerGradientShap, zero-image baseline, "
             f"{GRADSHAP_SAMPLES} samples, detector loss); needs captum, slow")
    needs_data = True

    def __init__(self, n_samples: int = GRADSHAP_SAMPLES, layers: list[str] | None = None):
        self.n_samples = n_samples
        self.layers = layers

    def score(self, detector: Detector, batches: Iterable[Batch] | None = None, *, progress: bool = False,
              seed: int = 0, total: int | None = None) -> dict[str, float]:
        try:
            from captum.attr import LayerGradientShap
        except ImportError:
            raise XpruneError(f"method 'gradshap' needs Captum, which is not installed: pip install {CAPTUM_PIN}") \
                from None
        if self.n_samples < 1:
            raise XpruneError("gradshap needs n_samples >= 1")
        convs = detector.conv_layers()
        if self.layers is not None:
            unknown = [n for n in self.layers if n not in convs]
            if unknown:
                raise XpruneError(f"gradshap: no conv named {unknown[0]}")
            convs = {n: convs[n] for n in self.layers}
        sums = {name: 0.0 for name in convs}
        images = 0
        np_state = np.random.get_state()
        np.random.seed(seed)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                for x, targets in self.progress_bar(batches, progress, total):
                    for i in range(x.shape[0]):
                        xi, ti = x[i:i + 1], [targets[i]]
                        baseline = torch.zeros_like(xi)

                        def forward(inp: torch.Tensor, _t=ti) -> torch.Tensor:  # [1]: the loss of this one image
                            return detector.loss(inp, _t).reshape(1)

                        for name, conv in convs.items():
                            explainer = LayerGradientShap(forward, conv)
                            # n_samples single-sample calls, averaged: Captum's own estimator, one draw per call
                            draws = [explainer.attribute(xi, baselines=baseline, n_samples=1, stdevs=0.0).detach()
                                     for _ in range(self.n_samples)]
                            sums[name] += float(torch.stack(draws).mean(dim=0).abs().sum())
                        images += 1
        finally:
            np.random.set_state(np_state)
            detector.model.zero_grad(set_to_none=True)
        return mean_per_image(sums, images, "gradshap")
