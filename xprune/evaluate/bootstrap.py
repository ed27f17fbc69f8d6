"""The percentile bootstrap over images: an interval for a model's mAP, and a paired one for the mAP difference of
two models evaluated on the same images. The study and the gate both draw their intervals from here.

A resample is the images drawn with replacement (seeded, so reproducible); its mAP comes from the evaluation's
per-image matches (`xprune.evaluate.image_matches.ImageMatches.resampled_maps`). `ImageBootstrap` draws one set of
resamples for an image set and keeps every evaluation's resampled mAPs, so that many intervals on the same images
(a study's variants against one baseline) score each evaluation once; `map_interval` and `delta_interval` are
the one-off forms. A difference is paired: the same resamples score both models, so what the images have in
common (hard images are hard for both) cancels.

Intervals are two-sided percentile intervals, as in the latency gate: BCa would add a jackknife of n more mAPs
per interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from xprune.errors import XpruneError
# the evaluation a bootstrap resamples, importable from here too
from xprune.evaluate.image_matches import ImageMatches, check_same_dataset


def resample_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) image positions drawn with replacement, seeded."""
    if n < 2:
        raise XpruneError(f"a bootstrap over images needs at least 2 images, got {n}")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The two-sided percentile interval of bootstrap `values` at `confidence`."""
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


@dataclass
class ImageBootstrap:
    """Seeded resamples of one image set and the resampled mAPs of every evaluation scored on it."""

    resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0
    _indices: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)
    _maps: dict[int, tuple[ImageMatches, np.ndarray]] = field(default_factory=dict, init=False, repr=False,
                                                              compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.resamples, int) or self.resamples < 1:
            raise XpruneError(f"resamples must be a positive integer, got {self.resamples}")
        if not 0 < self.confidence < 1:
            raise XpruneError(f"confidence must be in (0, 1), got {self.confidence}")

    def indices(self, n: int) -> np.ndarray:
        """The resamples of `n` images, (resamples, n) positions: drawn once, the same for every evaluation."""
        if self._indices is None or self._indices.shape[1] != n:
            self._indices = resample_indices(n, self.resamples, self.seed)
        return self._indices

    def resampled(self, m: ImageMatches) -> np.ndarray:
        """mAP@[.50:.95] of `m` on every resample, computed once per evaluation."""
        key = id(m)
        if key not in self._maps:  # the object is kept beside its values, so its id is not reused
            self._maps[key] = (m, m.resampled_maps(self.indices(len(m.image_ids))))
        return self._maps[key][1]

    def map_interval(self, m: ImageMatches) -> tuple[float, float]:
        """Two-sided percentile interval of mAP@[.50:.95] over the images."""
        return percentile_interval(self.resampled(m), self.confidence)

    def delta_interval(self, base: ImageMatches, cand: ImageMatches) -> tuple[float, float, float]:
        """(mAP(cand) - mAP(base), low, high), paired over the same resampled images."""
        check_same_dataset(base, cand)
        low, high = percentile_interval(self.resampled(cand) - self.resampled(base), self.confidence)
        return cand.map() - base.map(), low, high


def map_interval(m: ImageMatches, resamples: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Two-sided percentile-bootstrap interval of mAP@[.50:.95] over the images (seeded, so reproducible)."""
    return ImageBootstrap(resamples, confidence, seed).map_interval(m)


def delta_interval(base: ImageMatches, cand: ImageMatches, resamples: int = 1000, confidence: float = 0.95,
                   seed: int = 0) -> tuple[float, float, float]:
    """(mAP(cand) - mAP(base), low, high): a paired percentile bootstrap, each resample of the images scoring
    both models."""
    return ImageBootstrap(resamples, confidence, seed).delta_interval(base, cand)


__all__ = ["ImageBootstrap", "ImageMatches", "check_same_dataset", "delta_interval", "map_interval",
           "percentile_interval", "resample_indices"]
