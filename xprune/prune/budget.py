"""Accuracy-budget pruning: the largest rate whose mAP drop stays within a budget.

The candidate layers are a ranked list, and a plan at k layers zeroes a prefix of it (under `safe`, the first k
layers the greedy dependence check accepts: the selection for k is the start of the selection for any larger k).
The drop (baseline mAP minus pruned mAP, absolute: 0.01 is one mAP point) is usually but not strictly monotone
in k: a layer whose removal hurts can be followed by one whose removal happens to help on a small split. Hence:

- bisection over k in 0..K (K = candidates - 1, or round(max_rate x candidates)) for the largest k within
  budget, assuming monotonicity: about log2(K) evaluations;
- then a linear check upward: k keeps growing past the best k within budget until `lookahead` consecutive
  values of k are over budget (values already measured count), so a narrow non-monotone dip just above the
  bisection's answer is found;
- the chosen k is the largest k *measured* within budget; it is never inferred. A dip wider than `lookahead`,
  or one far above, can still hide a larger admissible k: pass `rates` to measure an explicit grid instead.

Every measured k is reported with its rate, mAP and drop. The layers are zeroed in place for each evaluation
(`plan.zeroed`) and restored afterwards, so `evaluate` sees the caller's detector object.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from xprune.data.coco import CocoDetectionSet
from xprune.errors import XpruneError
from xprune.models.detector import Detector
from xprune.prune.plan import POLICIES, check_rate, float64_probe, outputs_depend_on_input, plan_pruning, zeroed

# Slack on the drop comparison: COCOeval's mAP is a mean of interpolated precisions, 1e-9 is far below its
# resolution but absorbs float noise such as 0.5 - 0.49 > 0.01.
DROP_TOLERANCE = 1e-9
HELD_OUT_SPLIT = "calib"


def check_max_map_drop(max_map_drop: float) -> float:
    if isinstance(max_map_drop, bool) or not isinstance(max_map_drop, (int, float)) or not (
            0.0 <= max_map_drop < 1.0):
        raise XpruneError(f"--max-map-drop must be in [0, 1) (absolute mAP, 0.01 = one point), got {max_map_drop}")
    return float(max_map_drop)


def scored_calib_images(scores: dict, root: str | Path) -> int:
    """How many images at the start of ROOT's calib split the scores were computed on (0 for data-free criteria
    or scores computed on another annotations file)."""
    calibration = scores.get("calibration")
    if not calibration:
        return 0
    ann = Path(root) / "annotations" / f"instances_{HELD_OUT_SPLIT}.json"
    try:
        same = Path(calibration["annotations"]).resolve() == ann.resolve()
    except (KeyError, TypeError, OSError):
        return 0
    return int(calibration.get("images", 0)) if same else 0


def held_out_split(root: str | Path, size: int, images: int, skip: int = 0) -> CocoDetectionSet:
    """The split the budget search evaluates on: images `skip` .. `skip + images - 1` of the dataset's 'calib'
    split (sorted image ids), i.e. the calib images after the ones the scores were computed on
    (`scored_calib_images`); fewer when the split is shorter.

    Why there: 'train' images were seen in training (inflated mAP, the drop under pruning is not the drop on
    new images); 'val' is where final results are reported, so choosing the rate on it would make the reported
    drop optimistic (selection on the test set); the calib images used for scoring are the ones a data-driven
    ranking was fit on (optimistic again). The calib tail is disjoint from all three. It is small: the drop's
    resolution is that of mAP on a few dozen images, so give it as many as the split allows (score on half of
    calib, e.g. `xprune score --calib-images 32` with 64 calib images, or synthesize a larger calib split)."""
    if images < 1 or skip < 0:
        raise XpruneError(f"held-out split needs images >= 1 and skip >= 0, got {images} and {skip}")
    root = Path(root)
    if not (root / "annotations" / f"instances_{HELD_OUT_SPLIT}.json").is_file():
        raise XpruneError(f"the budget search evaluates on the '{HELD_OUT_SPLIT}' split, held out from training "
                          f"and from the val results; {root} has no annotations/instances_{HELD_OUT_SPLIT}.json")
    data = CocoDetectionSet.from_folder(root, HELD_OUT_SPLIT, size, limit=skip + images)
    if len(data) <= skip:
        raise XpruneError(f"all {len(data)} images of the '{HELD_OUT_SPLIT}' split were used for scoring; score on "
                          f"fewer (--calib-images) or use a larger '{HELD_OUT_SPLIT}' split")
    data.image_ids = data.image_ids[skip:]
    return data


class _Ladder:
    """The plan's selection for every k, built lazily: candidates in the plan's order, and under `safe` the
    same greedy dependence check as `plan_pruning`, so prefix(k) equals plan_pruning's selection at k."""

    def __init__(self, detector: Detector, scores: dict, policy: str):
        convs = detector.conv_layers()
        missing = [e["layer"] for e in scores["layers"] if e["layer"] not in convs]
        if missing:
            raise XpruneError(f"scores name {len(missing)} layers this model does not have (first: {missing[0]})")
        predictors = set(detector.predictor_layers)
        self.candidates = sorted((e for e in scores["layers"] if policy == "all" or e["layer"] not in predictors),
                                 key=lambda e: (e["score"], e["layer"]))
        self.policy = policy
        self.detector = detector
        self.probe: Detector | None = None
        self.selected: list[str] = []
        self.next = 0

    def prefix(self, k: int) -> list[str] | None:
        """The first k layers of the plan, or None when no plan of k layers exists (safe ran out)."""
        while len(self.selected) < k and self.next < len(self.candidates):
            name = self.candidates[self.next]["layer"]
            self.next += 1
            if self.policy == "safe":
                if self.probe is None:
                    self.probe = float64_probe(self.detector)
                probe = self.probe
                with zeroed(probe, self.selected + [name]):
                    if not outputs_depend_on_input(probe):
                        continue
            self.selected.append(name)
        return self.selected[:k] if len(self.selected) >= k else None


def search_rate(detector: Detector, scores: dict, evaluate: Callable[[Detector], float], max_map_drop: float,
                policy: str = "safe", rates: Sequence[float] | None = None, max_rate: float | None = None,
                lookahead: int = 3, log: Callable[[str], None] | None = None) -> dict:
    """The largest pruning rate whose mAP drop on the caller's held-out split is at most `max_map_drop`.

    evaluate(detector) -> mAP (a fraction, e.g. COCO mAP@[.5:.95] from `evaluate_map(...)["map"]`) on the held-out
    split (`held_out_split`); called once for the baseline and once per measured k, with the layers zeroed in
    place. rates=None: bisection + linear lookahead over k (module docstring), up to max_rate if given;
    rates=[...]: measure exactly those rates (plan_pruning's k = max(1, round(rate x candidates))).

    Returns {"search", "policy", "max_map_drop", "candidates", "max_k", "baseline_map", "evaluations" (every
    measured k in order: k, rate, map, drop, within, feasible), "monotone" (drops non-decreasing in k over the
    measured k), "chosen" {k, rate, map, drop}, "rate" (None when no k >= 1 is within budget), "plan"
    (plan_pruning's plan at that rate, or None), "seconds"}."""
    t0 = time.perf_counter()
    max_map_drop = check_max_map_drop(max_map_drop)
    if policy not in POLICIES:
        raise XpruneError(f"unknown candidate policy '{policy}'; choose one of: {', '.join(POLICIES)}")
    if scores.get("model") != detector.family:
        raise XpruneError(f"scores are for {scores.get('model')}, not {detector.family}")
    if lookahead < 1:
        raise XpruneError(f"lookahead must be >= 1, got {lookahead}")
    say = log or (lambda message: None)
    ladder = _Ladder(detector, scores, policy)
    n = len(ladder.candidates)
    top = n - 1  # plan rates are < 1
    if max_rate is not None:
        check_rate(max_rate)
        top = min(top, round(max_rate * n))

    def rate_of(k: int) -> float:
        return k / n

    baseline = _measure(evaluate, detector)
    say(f"baseline mAP {baseline:.4f} ({n} candidate layers, budget {max_map_drop:.4f})")
    evaluations: list[dict[str, Any]] = [{"k": 0, "rate": 0.0, "map": baseline, "drop": 0.0, "within": True,
                                          "feasible": True}]
    by_k = {0: evaluations[0]}

    def measure(k: int, rate: float | None = None) -> dict[str, Any]:
        if k in by_k:
            return by_k[k]
        rate = rate_of(k) if rate is None else rate
        layers = ladder.prefix(k)
        if layers is None:
            row: dict[str, Any] = {"k": k, "rate": rate, "map": None, "drop": None, "within": False, "feasible": False}
            say(f"k={k} rate={rate:.4f}: no {policy} plan zeroes {k} layers")
        else:
            with zeroed(detector, layers):
                value = _measure(evaluate, detector)
            drop = baseline - value
            row = {"k": k, "rate": rate, "map": value, "drop": drop, "within": drop <= max_map_drop + DROP_TOLERANCE,
                   "feasible": True}
            say(f"k={k} rate={rate:.4f}: mAP {value:.4f}, drop {drop:+.4f} "
                f"({'within' if row['within'] else 'over'} budget)")
        evaluations.append(row)
        by_k[k] = row
        return row

    if rates is not None:
        search = "grid"
        if not rates:
            raise XpruneError("rates must name at least one rate")
        if max_rate is not None:
            raise XpruneError("pass either rates (a grid) or max_rate (a bound on the bisection), not both")
        wanted = sorted({max(1, round(check_rate(float(r)) * n)): float(r) for r in rates}.items())
        for k, rate in wanted:  # plan_pruning's own k for each rate; duplicates measured once
            measure(k, rate)
    else:
        search = "bisection+lookahead"
        lo, hi = 0, top + 1  # invariant: lo measured within budget; hi over budget or past the end
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if measure(mid)["within"]:
                lo = mid
            else:
                hi = mid
        misses, k = 0, lo + 1  # the chosen k is the largest measured within budget, below
        while k <= top and misses < lookahead:
            row = measure(k)
            if not row["feasible"]:
                break  # safe plans are prefixes: no larger k is feasible either
            if row["within"]:
                misses = 0
            else:
                misses += 1
            k += 1

    admissible = [r for r in evaluations if r["within"]]
    chosen = max(admissible, key=lambda r: r["k"])
    plan = None
    if chosen["k"] > 0:
        plan = plan_pruning(detector, scores, chosen["rate"], policy)
        planned = [e["layer"] for e in plan["selected"]]
        if planned != ladder.prefix(chosen["k"]):
            raise XpruneError("internal error: the budget search's layers differ from plan_pruning's; report this")
    measured = sorted((r for r in evaluations if r["feasible"]), key=lambda r: r["k"])
    monotone = all(a["drop"] <= b["drop"] for a, b in zip(measured, measured[1:]))
    if chosen["k"] == 0:
        say(f"no rate keeps the mAP drop within {max_map_drop:.4f}")
    else:
        say(f"chosen k={chosen['k']} rate={chosen['rate']:.4f}: mAP {chosen['map']:.4f}, drop {chosen['drop']:+.4f}")
    return {"search": search, "policy": policy, "max_map_drop": max_map_drop, "candidates": n, "max_k": top,
            "lookahead": lookahead if rates is None else None, "baseline_map": baseline,
            "evaluations": evaluations, "monotone": monotone,
            "chosen": {k: chosen[k] for k in ("k", "rate", "map", "drop")},
            "rate": chosen["rate"] if chosen["k"] > 0 else None, "plan": plan,
            "seconds": round(time.perf_counter() - t0, 3)}


def _measure(evaluate: Callable[[Detector], float], detector: Detector) -> float:
    value = evaluate(detector)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise XpruneError(f"evaluate must return an mAP number, got {type(value).__name__}") from None
    if not math.isfinite(value):
        raise XpruneError(f"evaluate returned a non-finite mAP ({value})")
    return value
