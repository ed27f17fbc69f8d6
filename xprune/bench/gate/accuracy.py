"""The accuracy half of the gate: did a row's mAP fall by more than the allowed drop?

Both rows must carry their per-image evaluation (`map_matches`, recorded by `xprune bench --data`). The
difference is mAP(current) - mAP(baseline) on the same images, with a paired bootstrap over images
(`xprune.evaluate.bootstrap.delta_interval`): each resample scores both models on the same images, so what the
images have in common cancels and the interval is about the models, not about which images were drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

from xprune.errors import XpruneError


@dataclass
class AccuracyVerdict:
    baseline_map: float        # mAP@[.50:.95] on the images both were evaluated on
    current_map: float
    delta: float               # current - baseline (0.05 = 5 mAP points)
    delta_low: float           # one-sided lower bound at `confidence`
    delta_high: float          # one-sided upper bound at `confidence`
    images: int
    decision: str              # "regression", "inconclusive", "pass", "improvement"


def decide_accuracy(delta: float, low: float, high: float, max_drop: float) -> str:
    """The latency rule mirrored: the drop against the tolerance, guarded by the interval excluding no change.
    A drop beyond the tolerance whose interval still reaches 0 is inconclusive (too few images to tell)."""
    if delta < -max_drop:
        return "regression" if high < 0 else "inconclusive"
    if delta > max_drop and low > 0:
        return "improvement"
    return "pass"


def row_matches(row: dict, side: str, label: str):
    from xprune.evaluate.image_matches import ImageMatches

    d = row.get("map_matches")
    if d is None:
        had = "has an mAP but no per-image evaluation" if row.get("map") is not None else "has no mAP"
        raise XpruneError(f"--max-map-drop needs mAP per image in both files, but {side} {had} for {label}; "
                          f"record it with `xprune bench ... --data DIR`")
    return ImageMatches.from_json(d, f"{side}'s per-image evaluation of {label}")


def judge_accuracy(baseline_row: dict, current_row: dict, label: str, max_drop: float, confidence: float,
                   resamples: int, seed: int) -> AccuracyVerdict:
    from xprune.evaluate.bootstrap import delta_interval
    from xprune.evaluate.image_matches import check_same_dataset

    base, cur = row_matches(baseline_row, "baseline", label), row_matches(current_row, "current", label)
    check_same_dataset(base, cur, f"baseline and current of {label}")
    delta, low, high = delta_interval(base, cur, resamples=resamples, confidence=2 * confidence - 1, seed=seed)
    return AccuracyVerdict(baseline_map=base.map(), current_map=cur.map(), delta=delta, delta_low=low,
                           delta_high=high, images=len(base.image_ids),
                           decision=decide_accuracy(delta, low, high, max_drop))


def check_accuracy_params(max_map_drop: float | None, map_resamples: int) -> None:
    if max_map_drop is None:
        return
    if not (isinstance(max_map_drop, (int, float)) and 0 <= max_map_drop < 1):
        raise XpruneError(f"max_map_drop must be in [0, 1) (0.01 = one mAP point), got {max_map_drop}")
    if not isinstance(map_resamples, int) or map_resamples < 100:
        raise XpruneError(f"map_resamples must be an integer >= 100, got {map_resamples}")
