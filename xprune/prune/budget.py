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

import dataclasses
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

from xprune.data.coco import CocoDetectionSet
from xprune.errors import XpruneError
from xprune.evaluate.coco_map import evaluate_map
from xprune.files import write_json
from xprune.models.detector import Detector
from xprune.prune.plan import Infeasible, Plan, Selection, check_rate, layers_for_rate, zeroed

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


@dataclass
class BudgetSearch:
    """What `search_rate` measured and chose. `plan` is the plan at the chosen rate (None when no k >= 1 is within
    budget); everything else is the search record a plan chosen this way carries as its `budget`."""

    search: str  # "bisection+lookahead" or "grid"
    policy: str
    max_map_drop: float
    candidates: int
    max_k: int
    lookahead: int | None  # None for a grid
    baseline_map: float
    evaluations: list[dict[str, Any]]  # every measured k in order: k, rate, map, drop, within, feasible
    monotone: bool  # drops non-decreasing in k over the measured k
    chosen: dict[str, Any]  # k, rate, map, drop
    rate: float | None
    plan: Plan | None
    seconds: float

    def record(self) -> dict:
        """The search without its plan: what the chosen plan stores as `budget`."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "plan"}

    def to_json(self) -> dict:
        doc = {f.name: getattr(self, f.name) for f in fields(self)}
        doc["plan"] = self.plan.to_json() if self.plan is not None else None
        return doc


def search_rate(detector: Detector, scores: dict, evaluate: Callable[[Detector], float], max_map_drop: float,
                policy: str = "safe", rates: Sequence[float] | None = None, max_rate: float | None = None,
                lookahead: int = 3, log: Callable[[str], None] | None = None) -> BudgetSearch:
    """The largest pruning rate whose mAP drop on the caller's held-out split is at most `max_map_drop`.

    evaluate(detector) -> mAP (a fraction, e.g. COCO mAP@[.5:.95] from `evaluate_map(...)["map"]`) on the held-out
    split (`held_out_split`); called once for the baseline and once per measured k, with the layers zeroed in
    place. rates=None: bisection + linear lookahead over k (module docstring), up to max_rate if given;
    rates=[...]: measure exactly those rates (k = `layers_for_rate(rate, candidates)`, as `plan_pruning`)."""
    t0 = time.perf_counter()
    max_map_drop = check_max_map_drop(max_map_drop)
    if lookahead < 1:
        raise XpruneError(f"lookahead must be >= 1, got {lookahead}")
    if rates is not None and not rates:
        raise XpruneError("rates must name at least one rate")
    if rates is not None and max_rate is not None:
        raise XpruneError("pass either rates (a grid) or max_rate (a bound on the bisection), not both")
    say = log or (lambda message: None)
    selection = Selection(detector, scores, policy)
    n = selection.candidates
    top = n - 1  # plan rates are < 1
    if max_rate is not None:
        top = min(top, round(check_rate(max_rate) * n))

    baseline = _measure(evaluate, detector)
    say(f"baseline mAP {baseline:.4f} ({n} candidate layers, budget {max_map_drop:.4f})")
    evaluations: list[dict[str, Any]] = [{"k": 0, "rate": 0.0, "map": baseline, "drop": 0.0, "within": True,
                                          "feasible": True}]
    by_k = {0: evaluations[0]}
    plans: dict[int, Plan] = {}

    def measure(k: int, rate: float | None = None) -> dict[str, Any]:
        if k in by_k:
            return by_k[k]
        rate = k / n if rate is None else rate
        plan = selection.plan(k, rate)
        if isinstance(plan, Infeasible):
            row: dict[str, Any] = {"k": k, "rate": rate, "map": None, "drop": None, "within": False, "feasible": False}
            say(f"k={k} rate={rate:.4f}: no {policy} plan zeroes {k} layers")
        else:
            plans[k] = plan
            with zeroed(detector, plan.layers):
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
        wanted = sorted({layers_for_rate(check_rate(float(r)), n): float(r) for r in rates}.items())
        for k, rate in wanted:  # duplicates measured once
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
            misses = 0 if row["within"] else misses + 1
            k += 1

    chosen = max((r for r in evaluations if r["within"]), key=lambda r: r["k"])
    measured = sorted((r for r in evaluations if r["feasible"]), key=lambda r: r["k"])
    monotone = all(a["drop"] <= b["drop"] for a, b in zip(measured, measured[1:]))
    if chosen["k"] == 0:
        say(f"no rate keeps the mAP drop within {max_map_drop:.4f}")
    else:
        say(f"chosen k={chosen['k']} rate={chosen['rate']:.4f}: mAP {chosen['map']:.4f}, drop {chosen['drop']:+.4f}")
    return BudgetSearch(search=search, policy=policy, max_map_drop=max_map_drop, candidates=n, max_k=top,
                        lookahead=lookahead if rates is None else None, baseline_map=baseline,
                        evaluations=evaluations, monotone=monotone,
                        chosen={k: chosen[k] for k in ("k", "rate", "map", "drop")},
                        rate=chosen["rate"] if chosen["k"] > 0 else None, plan=plans.get(chosen["k"]),
                        seconds=round(time.perf_counter() - t0, 3))


def budget_plan(detector: Detector, scores: dict, data: str | Path | None, max_map_drop: float,
                policy: str = "safe", held_out_images: int = 64, max_rate: float | None = None,
                search_report: str | Path | None = None, log: Callable[[str], None] | None = None) -> Plan:
    """The plan at the largest rate whose COCO mAP drop on DATA's held-out calib images (`held_out_split`, after
    the images the scores were computed on) stays within `max_map_drop`; it carries the search as `budget`.
    The search is written to `search_report` when given, also when no rate fits (then XpruneError)."""
    max_map_drop = check_max_map_drop(max_map_drop)
    if not data:
        raise XpruneError("--max-map-drop needs --data DIR: mAP is measured on its calib images after the scored ones")
    held = held_out_split(data, detector.input_size, held_out_images, skip=scored_calib_images(scores, data))
    search = search_rate(detector, scores, lambda d: evaluate_map(d, held)["map"], max_map_drop, policy,
                         max_rate=max_rate, log=log)
    if search_report is not None:
        write_json(search_report, search.to_json())
    if search.plan is None:
        where = f" (search written to {search_report})" if search_report is not None else ""
        raise XpruneError(f"no rate keeps the mAP drop within {max_map_drop}{where}")
    return dataclasses.replace(search.plan, budget=search.record())


def _measure(evaluate: Callable[[Detector], float], detector: Detector) -> float:
    value = evaluate(detector)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise XpruneError(f"evaluate must return an mAP number, got {type(value).__name__}") from None
    if not math.isfinite(value):
        raise XpruneError(f"evaluate returned a non-finite mAP ({value})")
    return value
