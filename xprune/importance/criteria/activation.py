"""HRank: the rank of a conv's output feature maps (forward only)."""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from xprune.errors import XpruneError
from xprune.importance.criteria.base import Batch, Criterion
from xprune.models.detector import Detector

# HRank's deterministic subsample (see HRank).
HRANK_MAX_IMAGES = 32
HRANK_MAX_CHANNELS = 32


class HRank(Criterion):
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

    name = "hrank"
    about = (f"mean matrix rank of the conv's bias-free output maps over <= {HRANK_MAX_IMAGES} images and "
             f"<= {HRANK_MAX_CHANNELS} evenly spaced channels (HRank; forward only)")
    needs_data = True

    def __init__(self, max_images: int = HRANK_MAX_IMAGES, max_channels: int = HRANK_MAX_CHANNELS):
        self.max_images = max_images
        self.max_channels = max_channels

    def score(self, detector: Detector, batches: Iterable[Batch] | None = None, *, progress: bool = False,
              seed: int = 0, total: int | None = None) -> dict[str, float]:
        max_images, max_channels = self.max_images, self.max_channels
        if max_images < 1 or max_channels < 1:
            raise XpruneError("hrank needs max_images >= 1 and max_channels >= 1")
        convs = detector.conv_layers()
        sums = {name: 0.0 for name in convs}
        counts = {name: 0 for name in convs}

        def forward_hook(name: str, conv: torch.nn.Conv2d) -> Callable:
            def hook(module, inputs, output):
                # W*x without the bias, recomputed from the conv's input: subtracting b from W*x + b would lose a
                # small W*x to float32 rounding next to a large bias (YOLOv8's class-logit bias is about -9).
                maps = (output.detach() if conv.bias is None
                        else conv._conv_forward(inputs[0].detach(), conv.weight, None))
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
                for x, _ in self.progress_bar(batches, progress, total):
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
