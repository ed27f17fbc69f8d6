"""Bootstrap intervals over images for a study's mAPs: one interval per mAP, and a paired one per ΔmAP (a variant
against the unpruned baseline, the same resampled images scoring both).

The bootstrap is `xprune.evaluate.bootstrap.ImageBootstrap`: a study scores many variants on the same images, so
one set of resamples (seeded) serves the whole model and each evaluation's resampled mAPs are computed once; the
variant's own interval and its paired ΔmAP interval reuse them, and the baseline's serve every variant. What this
module adds is the study's side: which evaluations get which interval, and how the method is recorded.
"""

from __future__ import annotations

from xprune.evaluate.bootstrap import ImageBootstrap
from xprune.runtime.registry import map_backends
from xprune.study.settings import FRAMEWORK, Log, map_prefix
from xprune.study.variants import Variant

# where a variant's mAP was measured: the framework, and each backend that runs exported files for their mAP; a
# variant pairs with the baseline measured on the same one
SOURCES = (FRAMEWORK, *(b.name for b in map_backends()))


class Intervals(ImageBootstrap):
    """The study's bootstrap over its val images, described in the study's results."""

    def describe(self) -> dict:
        return {"method": "percentile bootstrap over val images, paired for ΔmAP", "resamples": self.resamples,
                "confidence": self.confidence, "seed": self.seed}


def add_intervals(name: str, variants: list[Variant], intervals: Intervals, log: Log) -> None:
    """Every variant's mAP interval per evaluation it has (PyTorch, ONNX Runtime, OpenVINO) and, for pruned variants, the
    paired ΔmAP against the baseline's evaluation on the same runtime: `<prefix>map_low/high`, `<prefix>dmap`,
    `<prefix>dmap_low/high` in the variant's info."""
    base = variants[0]
    for source in SOURCES:
        prefix = map_prefix(source)
        todo = [v for v in variants if source in v.matches]
        if not todo:
            continue
        log(f"[{name}] bootstrap intervals ({source} mAP, {len(todo)} variants, {intervals.resamples} resamples)")
        for v in todo:
            m = v.matches[source]
            low, high = intervals.map_interval(m)
            v.info.update({f"{prefix}map_low": low, f"{prefix}map_high": high})
            bm = base.matches.get(source)
            if not v.is_baseline and bm is not None:
                d, low, high = intervals.delta_interval(bm, m)
                v.info.update({f"{prefix}dmap": d, f"{prefix}dmap_low": low, f"{prefix}dmap_high": high})
