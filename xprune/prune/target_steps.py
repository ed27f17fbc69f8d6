"""Iterative pruning toward a MAC target: steps of a few percent of the exported MACs, each chosen by the MAC-target
selection (`plan_for_target`) on the model as the previous steps left it, each followed by a short recovery when its
mAP drop is over the budget, until the target is reached or the budget stops it.

A step zeroes the units that remove `step` more of the start's folded MACs at least total importance, on top of the
layers kept so far (those are zero in the model the step sees, so their branches count as gone). It is measured on
the held-out images: within budget as zeroed, it is kept without training; over budget, it is fine-tuned with every
zeroed layer held at zero and measured again; kept if now within budget, else the weights go back to the last kept
step and the step is halved, down to `min_step`. The importance scores are the ones given, computed on the
unpruned model: they are not recomputed after fine-tuning. Every step tried is recorded in the path.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from xprune.errors import XpruneError
from xprune.models.detector import Detector
from xprune.prune.budget_search import DROP_TOLERANCE, SearchRecord, check_max_map_drop, measure_map, snapshot
from xprune.prune.mac_target import check_target_macs
from xprune.prune.plan import fold_summary
from xprune.prune.plan_types import Plan

if TYPE_CHECKING:
    from xprune.export.fold.analysis import FoldAnalysis

MIN_STEP = 0.01  # of the start's MACs: a step is halved after a failure down to this


def check_step_macs(step: float) -> float:
    if not (0.0 < step < 1.0):
        raise XpruneError(f"--step-macs must be in (0, 1), got {step}")
    return step


@dataclass
class TargetSearch(SearchRecord):
    """What `iterative_target_search` tried and kept. Fractions are of the start's folded MACs."""

    search: str  # "iterative-target" (+finetune when steps may train)
    policy: str
    target_macs: float
    max_map_drop: float
    step_macs: float
    finetune: dict[str, Any] | None
    baseline_map: float
    start_macs: int
    path: list[dict[str, Any]]
    chosen: dict[str, Any]  # reached, layers, map, drop
    stopped_by: str  # "target", "budget" or "no candidates"
    plan: Plan | None
    seconds: float


def iterative_target_search(detector: Detector, scores: dict, evaluate: Callable[[Detector], float],
                            finetune: Callable[[Detector, list[str], int], dict] | None, target: float,
                            max_map_drop: float, step_macs: float = 0.05, policy: str = "safe",
                            analyse: Callable[[Detector], FoldAnalysis] | None = None,
                            finetune_record: dict | None = None, min_step: float = MIN_STEP,
                            log: Callable[[str], None] | None = None) -> TargetSearch:
    """The module docstring's walk. `analyse(detector)` gives the fold analysis of the model as it stands (the
    export's MACs with its zero layers folded); `finetune(detector, layers, step)` trains in place with `layers`
    held at zero (None: steps are never trained). The detector is left at the last kept step (fine-tuned where
    that step was), or as it came when none was kept."""
    from xprune.export.fold.analysis import fold_analysis_for
    from xprune.prune.mac_target import plan_for_target

    t0 = time.perf_counter()
    target, step = check_target_macs(target), check_step_macs(step_macs)
    max_map_drop = check_max_map_drop(max_map_drop)
    say = log or (lambda message: None)
    analyse = analyse or (lambda det: fold_analysis_for(det, "--target-macs"))
    first_fold = analyse(detector)
    start_macs, unfolded = first_fold.macs_after(), first_fold.macs_before
    baseline = measure_map(evaluate, detector)
    say(f"baseline mAP {baseline:.4f}; toward {target:.0%} of {start_macs / 1e9:.3f} GMACs in steps of {step:.0%}, "
        f"budget {max_map_drop:.4f}")
    kept_state, kept_plans = snapshot(detector), []  # type: ignore[var-annotated]
    kept = {"reached": 0.0, "layers": 0, "map": baseline, "drop": 0.0}
    path: list[dict[str, Any]] = []
    fold, stopped_by, failed_goal = first_fold, "target", None
    failed: set[frozenset[str]] = set()  # layer sets over budget on top of the kept ones: never trained twice
    while kept["reached"] < target - 1e-9:
        goal = min(target, kept["reached"] + step)
        if failed_goal is not None and goal >= failed_goal - 1e-12:  # the same step again would fail again
            if step / 2 < min_step:
                stopped_by = "budget"
                break
            step /= 2
            continue
        try:  # the goal as a fraction of the unfolded export, which plan_for_target counts in
            plan = plan_for_target(detector, scores, 1.0 - (1.0 - goal) * start_macs / unfolded, policy, fold)
        except XpruneError as e:
            say(f"toward {goal:.1%}: {e}")
            if step / 2 < min_step:
                stopped_by = "no candidates"
                break
            step /= 2
            continue
        if frozenset(plan.layers) in failed:  # a smaller goal chose the same units: halve again
            failed_goal = goal
            continue
        layers = [*_layers(kept_plans), *plan.layers]
        detector.zero_layers(plan.layers)
        reached = 1.0 - plan.fold["macs_after"] / start_macs
        zeroed_map = measure_map(evaluate, detector)
        trained, finetuned_map, value = None, None, zeroed_map
        if baseline - zeroed_map > max_map_drop + DROP_TOLERANCE and finetune is not None:
            say(f"step {len(path) + 1}: {reached:.1%} of the MACs ({len(plan.layers)} more layers), mAP "
                f"{zeroed_map:.4f} zeroed; fine-tuning")
            trained = finetune(detector, layers, len(path) + 1)
            value = finetuned_map = measure_map(evaluate, detector)
        drop = baseline - value
        within = drop <= max_map_drop + DROP_TOLERANCE
        path.append({"step": len(path) + 1, "goal": goal, "reached": reached, "layers": plan.layers,
                     "units": plan.fold["target"]["units"], "map_zeroed": zeroed_map,
                     "map_finetuned": finetuned_map, "drop": drop, "kept": within, "finetune": trained})
        say(f"step {len(path)}: {reached:.1%} of the MACs, mAP {value:.4f}"
            f"{' after fine-tuning' if trained else ' zeroed'}, drop {drop:+.4f} "
            f"({'kept' if within else 'over budget: back to ' + format(kept['reached'], '.1%')})")
        if within:
            kept_plans.append(plan)
            kept = {"reached": reached, "layers": len(layers), "map": value, "drop": drop}
            kept_state, failed_goal, failed = snapshot(detector), None, set()
            fold = analyse(detector)
        else:
            detector.model.load_state_dict(kept_state)
            failed_goal = goal
            failed.add(frozenset(plan.layers))
            if step / 2 < min_step:
                stopped_by = "budget"
                break
            step /= 2
    final = merged_plan(kept_plans, first_fold) if kept_plans else None
    say(f"kept {kept['layers']} layers, {kept['reached']:.1%} of the MACs, mAP {kept['map']:.4f} "
        f"(drop {kept['drop']:+.4f}); stopped by the {stopped_by}")
    return TargetSearch(search="iterative-target" + ("+finetune" if finetune else ""), policy=policy,
                        target_macs=target, max_map_drop=max_map_drop, step_macs=step_macs,
                        finetune=dict(finetune_record) if finetune_record else None, baseline_map=baseline,
                        start_macs=start_macs, path=path, chosen=kept, stopped_by=stopped_by, plan=final,
                        seconds=round(time.perf_counter() - t0, 3))


def _layers(plans: list[Plan]) -> list[str]:
    return [layer for p in plans for layer in p.layers]


def merged_plan(plans: list[Plan], fold: FoldAnalysis) -> Plan:
    """One plan of every kept step's layers, in step order; its fold block is the start's analysis of them all."""
    last = plans[-1]
    selected = [choice for p in plans for choice in p.selected]
    layers = [c.layer for c in selected]
    merged = dataclasses.replace(last, selected=selected, rate=len(selected) / max(last.candidates, 1),
                                 skipped=[], fold=None)
    merged.fold = {**fold_summary(fold, layers), "steps": [p.fold for p in plans]}
    return merged


__all__ = ["MIN_STEP", "TargetSearch", "check_step_macs", "iterative_target_search", "merged_plan"]
