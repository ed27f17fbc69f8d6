"""Bootstrap intervals over images for a study's mAPs: one interval per mAP, and a paired one per ΔmAP (a variant
against the unpruned baseline, the same resampled images scoring both).

Each evaluation is an `xprune.evaluate.bootstrap.ImageMatches` (COCOeval's per-image matches). A study scores
many variants on the same images, so `Intervals` draws one set of resamples (seeded) for the whole model and
computes each evaluation's resampled mAPs once: the variant's own interval and its paired ΔmAP interval reuse
them, and the baseline's serve every variant. Intervals are two-sided percentile intervals, as in
`xprune.evaluate.bootstrap`.

The resampled mAPs come from `ImageMatches.resampled_maps` (pycocotools' accumulate with images weighted by
how often a resample holds them), which is what makes 1000 resamples per variant affordable on a small CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from xprune.errors import XpruneError
from xprune.study.settings import Log
from xprune.study.variants import Variant

SOURCES = {"torch": ("", "torch"), "onnxruntime": ("onnx_", "onnxruntime")}


@dataclass
class Intervals:
    """Seeded resamples of one image set and the resampled mAPs of every evaluation scored on it."""

    resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0
    _indices: np.ndarray | None = None
    _maps: dict[int, tuple[object, np.ndarray]] = field(default_factory=dict)

    def indices(self, n: int) -> np.ndarray:
        if n < 2:
            raise XpruneError(f"a bootstrap over images needs at least 2 images, got {n}")
        if self._indices is None or self._indices.shape[1] != n:
            self._indices = np.random.default_rng(self.seed).integers(0, n, size=(self.resamples, n))
        return self._indices

    def resampled(self, m) -> np.ndarray:
        """mAP@[.50:.95] of `m` (an ImageMatches) on every resample, computed once per evaluation."""
        key = id(m)
        if key not in self._maps:  # the object is kept beside its values, so its id is not reused
            self._maps[key] = (m, m.resampled_maps(self.indices(len(m.image_ids))))
        return self._maps[key][1]

    def _bounds(self, values: np.ndarray) -> tuple[float, float]:
        tail = 100.0 * (1.0 - self.confidence) / 2.0
        low, high = np.percentile(values, [tail, 100.0 - tail])
        return float(low), float(high)

    def map_interval(self, m) -> tuple[float, float]:
        return self._bounds(self.resampled(m))

    def delta_interval(self, base, cand) -> tuple[float, float, float]:
        """(mAP(cand) - mAP(base), low, high), paired over the same resampled images."""
        from xprune.evaluate.bootstrap import check_same_dataset

        check_same_dataset(base, cand)
        low, high = self._bounds(self.resampled(cand) - self.resampled(base))
        return cand.map() - base.map(), low, high

    def describe(self) -> dict:
        return {"method": "percentile bootstrap over val images, paired for ΔmAP", "resamples": self.resamples,
                "confidence": self.confidence, "seed": self.seed}


def add_intervals(name: str, variants: list[Variant], intervals: Intervals, log: Log) -> None:
    """Every variant's mAP interval per evaluation it has (PyTorch, ONNX Runtime) and, for pruned variants, the
    paired ΔmAP against the baseline's evaluation on the same runtime: `<prefix>map_low/high`, `<prefix>dmap`,
    `<prefix>dmap_low/high` in the variant's info."""
    base = variants[0]
    for source, (prefix, base_source) in SOURCES.items():
        todo = [v for v in variants if source in v.matches]
        if not todo:
            continue
        log(f"[{name}] bootstrap intervals ({source} mAP, {len(todo)} variants, {intervals.resamples} resamples)")
        for v in todo:
            m = v.matches[source]
            low, high = intervals.map_interval(m)
            v.info.update({f"{prefix}map_low": low, f"{prefix}map_high": high})
            bm = base.matches.get(base_source)
            if not v.is_baseline and bm is not None:
                d, low, high = intervals.delta_interval(bm, m)
                v.info.update({f"{prefix}dmap": d, f"{prefix}dmap_low": low, f"{prefix}dmap_high": high})
