"""The two searches for the largest pruning plan whose mAP drop stays within a budget, over any `evaluate` callable
(`xprune.prune.budget` runs them on a dataset's held-out split).

The candidate layers are a ranked list, and a plan at k layers zeroes a prefix of it (under `safe`, the first k
layers the greedy dependence check accepts: the selection for k is the start of the selection for any larger k).
The drop (baseline mAP minus pruned mAP, absolute: 0.01 is one mAP point) is usually but not strictly monotone
in k: a layer whose removal hurts can be followed by one whose removal happens to help on a small split. Hence
`search_rate`:

- bisection over k in 0..K (K = candidates - 1, or round(max_rate x candidates)) for the largest k within
  budget, assuming monotonicity: about log2(K) evaluations;
- then a linear check upward: k keeps growing past the best k within budget until `lookahead` consecutive
  values of k are over budget (values already measured count), so a narrow non-monotone dip just above the
  bisection's answer is found;
- the chosen k is the largest k *measured* within budget; it is never inferred. A dip wider than `lookahead`,
  or one far above, can still hide a larger admissible k: pass `rates` to measure an explicit grid instead.

Every measured k is reported with its rate, mAP and drop. The layers are zeroed in place for each evaluation
(`plan.zeroed`) and restored afterwards, so `evaluate` sees the caller's detector object.

With fine-tuning (`iterative_search`), a plan's accuracy is what it has after recovery training, and training
changes the weights the next plan starts from, so the search walks upward instead: zero the next step of layers
from the same walk, fine-tune with every zeroed layer held at zero, measure; keep the step if the drop is within
budget, else restore the weights of the last kept plan and retry with half the step, down to one layer. It stops
at the largest plan it kept, and records every step it tried.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from xprune.errors import XpruneError
from xprune.models.detector import Detector
from xprune.prune.plan import Infeasible, Plan, Selection, apply_plan, check_rate, layers_for_rate, zeroed

if TYPE_CHECKING:
    from xprune.export.fold.analysis import FoldAnalysis

# Slack on the drop comparison: COCOeval's mAP is a mean of interpolated precisions, 1e-9 is far below its
# resolution but absorbs float noise such as 0.5 - 0.49 > 0.01.
DROP_TOLERANCE = 1e-9


def check_max_map_drop(max_map_drop: float) -> float:
    if isinstance(max_map_drop, bool) or not isinstance(max_map_drop, (int, float)) or not (
            0.0 <= max_map_drop < 1.0):
        raise XpruneError(f"--max-map-drop must be in [0, 1) (absolute mAP, 0.01 = one point), got {max_map_drop}")
    return float(max_map_drop)


def check_step_rate(step_rate: float) -> float:
    if isinstance(step_rate, bool) or not isinstance(step_rate, (int, float)) or not 0.0 < step_rate < 1.0:
        raise XpruneError(f"--step-rate must be in (0, 1) (a fraction of the candidate layers), got {step_rate}")
    return float(step_rate)


class SearchRecord:
    """What both searches share: a `plan` field beside the record of how it was chosen."""

    plan: Plan | None

    def record(self) -> dict:
        """The search without its plan: what the chosen plan stores as `budget`."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "plan"}  # type: ignore[arg-type]

    def to_json(self) -> dict:
        doc = self.record()
        doc["plan"] = self.plan.to_json() if self.plan is not None else None
        return doc


@dataclass
class BudgetSearch(SearchRecord):
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


def search_rate(detector: Detector, scores: dict, evaluate: Callable[[Detector], float], max_map_drop: float,
                policy: str = "safe", rates: Sequence[float] | None = None, max_rate: float | None = None,
                lookahead: int = 3, log: Callable[[str], None] | None = None, rank: str = "plain",
                fold: FoldAnalysis | None = None) -> BudgetSearch:
    """The largest pruning rate whose mAP drop on the caller's held-out split is at most `max_map_drop`.

    evaluate(detector) -> mAP (a fraction, e.g. COCO mAP@[.5:.95] from `evaluate_map(...)["map"]`) on the held-out
    split (`held_out_split`); called once for the baseline and once per measured k, with the layers zeroed in
    place. rates=None: bisection + linear lookahead over k (module docstring), up to max_rate if given;
    rates=[...]: measure exactly those rates (k = `layers_for_rate(rate, candidates)`, as `plan_pruning`).
    rank and fold: the ranking of the candidates (see `Selection`)."""
    t0 = time.perf_counter()
    max_map_drop = check_max_map_drop(max_map_drop)
    if lookahead < 1:
        raise XpruneError(f"lookahead must be >= 1, got {lookahead}")
    if rates is not None and not rates:
        raise XpruneError("rates must name at least one rate")
    if rates is not None and max_rate is not None:
        raise XpruneError("pass either rates (a grid) or max_rate (a bound on the bisection), not both")
    say = log or (lambda message: None)
    selection = Selection(detector, scores, policy, rank, fold)
    n = selection.candidates
    top = n - 1  # plan rates are < 1
    if max_rate is not None:
        top = min(top, round(check_rate(max_rate) * n))

    baseline = measure_map(evaluate, detector)
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
                value = measure_map(evaluate, detector)
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


@dataclass
class IterativeSearch(SearchRecord):
    """What `iterative_search` tried and kept. `path`: every step in order (the layers it added, the folded MACs
    where known, mAP with the layers zeroed and after fine-tuning, the drop, kept or not); `plan`: the largest plan
    kept (None when no step stayed within budget)."""

    search: str  # "iterative+finetune"
    policy: str
    rank: str
    max_map_drop: float
    candidates: int
    max_k: int
    step: int  # layers in the first step
    finetune: dict[str, Any]
    baseline_map: float
    path: list[dict[str, Any]]
    chosen: dict[str, Any]  # k, rate, map, drop
    rate: float | None
    plan: Plan | None
    seconds: float


def iterative_search(detector: Detector, scores: dict, evaluate: Callable[[Detector], float],
                     finetune: Callable[[Detector, list[str], int], dict], max_map_drop: float,
                     step_rate: float = 0.05, policy: str = "safe", rank: str = "plain",
                     fold: FoldAnalysis | None = None, max_rate: float | None = None,
                     finetune_record: dict | None = None, log: Callable[[str], None] | None = None) -> IterativeSearch:
    """Alternate zeroing the next round(step_rate x candidates) layers of the walk and fine-tuning, keeping each
    step whose mAP drop is within `max_map_drop` (module docstring): a step within budget as zeroed is kept without
    fine-tuning ("map_finetuned" None in its path entry); one over budget is fine-tuned and measured again.

    evaluate(detector) -> mAP on the held-out split; finetune(detector, layers, step) trains in place with `layers`
    (the whole plan so far) held at zero and returns a record for the path. The detector is left with the weights
    of the largest plan kept (its layers zeroed, fine-tuned), or as it came when none was kept."""
    t0 = time.perf_counter()
    max_map_drop = check_max_map_drop(max_map_drop)
    step_rate = check_step_rate(step_rate)
    say = log or (lambda message: None)
    selection = Selection(detector, scores, policy, rank, fold)
    n = selection.candidates
    top = n - 1 if max_rate is None else min(n - 1, round(check_rate(max_rate) * n))
    first = step = max(1, round(step_rate * n))
    kept_state = snapshot(detector)
    baseline = measure_map(evaluate, detector)
    say(f"baseline mAP {baseline:.4f} ({n} candidate layers, budget {max_map_drop:.4f}, steps of {step} layers)")
    path: list[dict[str, Any]] = []
    kept: dict[str, Any] = {"k": 0, "rate": 0.0, "map": baseline, "drop": 0.0}
    kept_plan: Plan | None = None
    while kept["k"] < top:
        k = min(kept["k"] + step, top)
        plan = selection.plan(k)
        if isinstance(plan, Infeasible):
            say(f"k={k}: {plan.reason}")
            if step == 1:
                break
            step = max(1, step // 2)
            continue
        apply_plan(detector, plan)
        zeroed_map = measure_map(evaluate, detector)
        trained, finetuned_map, value = None, None, zeroed_map
        # A step already within budget is kept as it is: training a model that lost nothing can only move it.
        if baseline - zeroed_map > max_map_drop + DROP_TOLERANCE:
            say(f"step {len(path) + 1}: k={k} ({k - kept['k']} more layers), mAP {zeroed_map:.4f} zeroed; "
                "fine-tuning")
            trained = finetune(detector, plan.layers, len(path) + 1)
            value = finetuned_map = measure_map(evaluate, detector)
        drop = baseline - value
        within = drop <= max_map_drop + DROP_TOLERANCE
        path.append({"step": len(path) + 1, "k": k, "rate": k / n, "layers": plan.layers[kept["k"]:],
                     "fold": plan.fold, "map_zeroed": zeroed_map, "map_finetuned": finetuned_map, "drop": drop,
                     "within": within, "kept": within, "finetune": trained})
        say(f"step {len(path)}: k={k} mAP {value:.4f} {'after fine-tuning' if trained else 'zeroed, no fine-tuning needed'}"
            f", drop {drop:+.4f} ({'kept' if within else 'over budget: back to k=' + str(kept['k'])})")
        if within:
            kept, kept_plan = {"k": k, "rate": k / n, "map": value, "drop": drop}, plan
            kept_state = snapshot(detector)
        else:
            detector.model.load_state_dict(kept_state)
            if step == 1:
                break
            step = max(1, step // 2)
    if kept_plan is None:
        say(f"no step keeps the mAP drop within {max_map_drop:.4f}")
    else:
        say(f"chosen k={kept['k']} rate={kept['rate']:.4f}: mAP {kept['map']:.4f}, drop {kept['drop']:+.4f}")
    return IterativeSearch(search="iterative+finetune", policy=policy, rank=rank, max_map_drop=max_map_drop,
                           candidates=n, max_k=top, step=first, finetune=dict(finetune_record or {}),
                           baseline_map=baseline, path=path, chosen=kept,
                           rate=kept["rate"] if kept_plan is not None else None, plan=kept_plan,
                           seconds=round(time.perf_counter() - t0, 3))


def snapshot(detector: Detector) -> dict[str, torch.Tensor]:
    """A copy of the model's tensors, to go back to after a step over budget."""
    return {k: v.detach().clone() for k, v in detector.model.state_dict().items()}


def measure_map(evaluate: Callable[[Detector], float], detector: Detector) -> float:
    """`evaluate(detector)` as a finite float, or one clear error."""
    value = evaluate(detector)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise XpruneError(f"evaluate must return an mAP number, got {type(value).__name__}") from None
    if not math.isfinite(value):
        raise XpruneError(f"evaluate returned a non-finite mAP ({value})")
    return value


__all__ = ["DROP_TOLERANCE", "BudgetSearch", "IterativeSearch", "SearchRecord", "check_max_map_drop", "check_step_rate",
           "iterative_search", "measure_map", "search_rate", "snapshot"]
