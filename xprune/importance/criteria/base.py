"""The interface every importance criterion implements, and what the criteria share."""

from __future__ import annotations

from typing import Iterable

import torch
from tqdm import tqdm

from xprune.models.detector import Detector

Batch = tuple[torch.Tensor, list[dict]]


class Criterion:
    """Scores every conv layer of a detector: {conv name: score}, finite and >= 0; lower is less important
    (pruned first).

    `batches` is a list of (images, targets), or None for a criterion that needs no data; `total` is the number of
    batches (for the progress bar), `seed` the scoring seed (only stochastic criteria use it)."""

    name: str = ""
    about: str = ""  # one line on what the score measures (recorded in scores.json)
    needs_data: bool = False

    def score(self, detector: Detector, batches: Iterable[Batch] | None = None, *, progress: bool = False,
              seed: int = 0, total: int | None = None) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def progress_bar(self, batches: Iterable[Batch], progress: bool, total: int | None) -> Iterable[Batch]:
        return tqdm(batches, total=total, desc=self.name, unit="batch", disable=not progress, leave=False)


def mean_per_image(sums: dict[str, float], images: int, what: str) -> dict[str, float]:
    """Per-layer sums over calibration images divided by the image count (the expectation over images)."""
    if images == 0:
        raise ValueError(f"{what} needs at least one calibration batch")
    return {name: s / images for name, s in sums.items()}
