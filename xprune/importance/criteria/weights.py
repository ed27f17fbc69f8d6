"""Data-free criteria: weight magnitude and the seeded random baseline."""

from __future__ import annotations

from typing import Iterable

import torch

from xprune.importance.criteria.base import Batch, Criterion
from xprune.models.detector import Detector


class L1(Criterion):
    name = "l1"
    about = "sum of |W| of the conv's weights"

    def score(self, detector: Detector, batches: Iterable[Batch] | None = None, *, progress: bool = False,
              seed: int = 0, total: int | None = None) -> dict[str, float]:
        return {name: float(conv.weight.detach().abs().sum()) for name, conv in detector.conv_layers().items()}


class RandomScores(Criterion):
    """U(0, 1) per conv from a private generator seeded with `seed`, in module order (global RNG untouched)."""

    name = "random"
    about = "seeded U(0, 1) per layer: the random baseline"

    def score(self, detector: Detector, batches: Iterable[Batch] | None = None, *, progress: bool = False,
              seed: int = 0, total: int | None = None) -> dict[str, float]:
        g = torch.Generator().manual_seed(seed)
        names = list(detector.conv_layers())
        values = torch.rand(len(names), generator=g, dtype=torch.float64)
        return {name: float(v) for name, v in zip(names, values)}
