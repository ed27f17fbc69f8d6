"""From one model to the variants a study measures: one ranking per criterion, the plans every rate takes from
it (prefixes of the same greedy selection), and one variant per distinct set of zeroed layers, shared by every
(criterion, rate) pair that selects exactly that set."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xprune.models.detector import Detector
from xprune.prune.plan import Infeasible, Plan
from xprune.study.settings import FIGURE_RATE, Log, StudySettings

BASELINE = "baseline"
BASELINE_COPY = "baseline-copy"  # the baseline timed a second time: the A/A control


@dataclass
class Variant:
    """One distinct model measured: the baseline or one set of zeroed layers. `info` is its entry in study.json;
    `onnx` its export (folded unless it is the baseline), `onnx_zeroed` the unfolded export when asked for;
    `matches` its per-image evaluations by runtime (the framework slot's name and the registry's ONNX backend's),
    from which intervals are drawn."""

    id: str
    method: str
    layers: tuple[str, ...]
    detector: Detector
    uses: list[tuple[str, float]] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    onnx: Path | None = None
    onnx_zeroed: Path | None = None
    matches: dict[str, Any] = field(default_factory=dict)

    @property
    def is_baseline(self) -> bool:
        return self.id == BASELINE


@dataclass
class Rankings:
    """Per criterion, the scores of every conv layer (study.json "layer_scores") and the plan of every rate."""

    layer_scores: dict[str, Any]
    plans: dict[str, dict[float, Plan | Infeasible]]


def rank_layers(det: Detector, calib, rates: tuple[float, ...], weights_label: str, settings: StudySettings,
                scores_dir: Path, log: Log) -> Rankings:
    """Score every conv layer once per criterion (scores written to `scores_dir/<model>-<criterion>.json`) and
    plan every rate from that one ranking."""
    from xprune.importance.scores import score_layers, write_scores
    from xprune.prune.plan import layers_for_rate, plans_for_rates

    name = det.family
    convs = list(det.conv_layers())
    predictors = set(det.predictor_layers)
    candidate_mask = [settings.policy == "all" or n not in predictors for n in convs]
    layer_scores: dict[str, Any] = {"layers": convs, "predictor": [n in predictors for n in convs],
                                    "candidate": candidate_mask, "criteria": {}}
    plans: dict[str, dict[float, Plan | Infeasible]] = {}
    for method in settings.criteria:
        log(f"[{name}] scoring with {method}")
        scores = score_layers(det, method, calib, batch_size=settings.batch_size, progress=settings.progress,
                              weights=weights_label)
        write_scores(scores_dir / f"{name}-{method}.json", scores)
        by_layer = {e["layer"]: e["score"] for e in scores["layers"]}
        log(f"[{name}] planning {method} at rates {', '.join(f'{r:g}' for r in rates)} ({settings.policy})")
        plans[method] = plans_for_rates(det, scores, rates, settings.policy)
        ranked = sorted((by_layer[n], n) for n, c in zip(convs, candidate_mask) if c)
        k = layers_for_rate(FIGURE_RATE, len(ranked))
        layer_scores["criteria"][method] = {
            "scores": [by_layer[n] for n in convs], "seconds": scores["seconds"],
            "bottom": [n for _, n in ranked[:k]], "bottom_rate": FIGURE_RATE,
            "zeroed": {f"{r:g}": p.layers for r, p in plans[method].items() if not isinstance(p, Infeasible)}}
    return Rankings(layer_scores, plans)


def distinct_variants(det: Detector, plans: dict[str, dict[float, Plan | Infeasible]]
                      ) -> tuple[list[Variant], list[dict]]:
    """The baseline and one zeroed copy of `det` per distinct layer set, and the (criterion, rate) pairs no plan
    could reach."""
    from xprune.prune.plan import apply_plan

    pruned: dict[frozenset, Variant] = {}
    infeasible = []
    for method, by_rate in plans.items():
        for rate, plan in by_rate.items():
            if isinstance(plan, Infeasible):
                infeasible.append({"method": method, "rate": rate, "reason": plan.reason})
                continue
            key = frozenset(plan.layers)
            if key not in pruned:
                model = copy.deepcopy(det)
                apply_plan(model, plan)
                model.meta = {"pruning": plan.to_json()}
                pruned[key] = Variant(f"{method}-{len(plan.layers)}", method, tuple(plan.layers), model)
            pruned[key].uses.append((method, rate))
    base = Variant(BASELINE, BASELINE, (), det, [(BASELINE, 0.0)])
    return [base, *pruned.values()], infeasible


def plan_brief(plan: Plan | Infeasible) -> dict:
    """A plan as study.json records it."""
    if isinstance(plan, Infeasible):
        return {"infeasible": plan.reason}
    return {"layers": plan.layers, "candidates": plan.candidates,
            "skipped": [{"layer": e.layer, "reason": e.reason} for e in plan.skipped],
            "zeroed_params": plan.zeroed_params, "zeroed_conv_macs": plan.zeroed_conv_macs}
