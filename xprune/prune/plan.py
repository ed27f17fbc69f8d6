"""The pruning plan: which conv layers are zeroed, chosen from the bottom of one global ranking.

Candidate policies:
- safe (default): every conv except the final predictors of each head, and a layer is taken only if, with it and
  the layers already taken zeroed, every model output still depends on the input (a conv on the only
  input-to-output path makes the detector output a constant: it is skipped, with the reason in the plan);
- all: every conv, predictors included, no check (the paper's procedure).

Rankings:
- plain (default): lowest importance score first;
- per-mac: lowest importance per MAC the fold removes first (a knapsack-style greedy: `per_mac_selection`). The MACs
  are the layer's branch on the exported graph (`FoldAnalysis`), marginal to the layers already taken, so
  a layer whose branch went with an earlier one is skipped: zeroing it would cost accuracy for no speed.

The walk over the ranking (`safe_selection`, `per_mac_selection`) is deterministic, so the plan at k layers is the
start of the plan at any larger k: one walk serves every rate (`plans_for_rates`) and every step of the budget search.
The plan itself, as data and JSON, is `xprune.prune.plan_types`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, ContextManager, Iterator, Sequence

from xprune.errors import XpruneError
from xprune.models.detector import Detector
from xprune.prune.plan_types import RANKS, Infeasible, LayerChoice, Plan

if TYPE_CHECKING:
    from xprune.export.fold.analysis import FoldAnalysis

POLICIES = ("safe", "all")
SKIP_REASON = "zeroing it makes an output input-independent (no bypass around it)"
NO_GAIN_REASON = "the fold removes nothing more with it (its branch is already gone with the layers taken)"


def zeroed(detector: Detector, layers: list[str]) -> ContextManager[None]:
    """Temporarily zero the weights of `layers` (biases stay: a zeroed conv outputs its bias)."""
    return detector.zeroed(layers)


def outputs_depend_on_input(detector: Detector, probes: int = 2, seed: int = 0) -> bool:
    """True when every raw output changes between random inputs; run on a `float64_probe` so that a live but
    saturated output (an untrained head) still differs from a dead one, which zeroing makes exactly constant."""
    return detector.outputs_depend_on_input(probes, seed)


def float64_probe(detector: Detector) -> Detector:
    """A copy of the detector for the dependence check, computing in float64 (the original stays untouched)."""
    return detector.float64_probe()


def check_rate(rate: float) -> float:
    if not (0.0 < rate < 1.0):
        raise XpruneError(f"--rate must be in (0, 1), got {rate}")
    return rate


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise XpruneError(f"unknown candidate policy '{policy}'; choose one of: {', '.join(POLICIES)}")
    return policy


def check_rank(rank: str) -> str:
    if rank not in RANKS:
        raise XpruneError(f"unknown ranking '{rank}'; choose one of: {', '.join(RANKS)}")
    return rank


def layers_for_rate(rate: float, candidates: int) -> int:
    """How many layers a plan at `rate` zeroes: round(rate x candidates), at least one."""
    return max(1, round(rate * candidates))


def ranked_candidates(detector: Detector, scores: dict, policy: str) -> list[dict]:
    """The scores file's candidate entries in pruning order: lowest score first, ties by layer name."""
    check_policy(policy)
    if scores.get("model") != detector.family:
        raise XpruneError(f"scores are for {scores.get('model')}, not {detector.family}")
    convs = detector.conv_layers()
    missing = [entry["layer"] for entry in scores["layers"] if entry["layer"] not in convs]
    if missing:
        raise XpruneError(f"scores name {len(missing)} layers this model does not have (first: {missing[0]})")
    predictors = set(detector.predictor_layers)
    candidates = [e for e in scores["layers"] if policy == "all" or e["layer"] not in predictors]
    return sorted(candidates, key=lambda e: (e["score"], e["layer"]))


class _DependenceCheck:
    """Do the outputs still depend on the input with these layers zeroed? Checked on a float64 copy of the
    detector, made at the first check."""

    def __init__(self, detector: Detector):
        self.detector = detector
        self.probe: Detector | None = None

    def alive(self, layers: list[str]) -> bool:
        if self.probe is None:
            self.probe = float64_probe(self.detector)
        with zeroed(self.probe, layers):
            return outputs_depend_on_input(self.probe)


def safe_selection(detector: Detector, ranked: list[dict], method: str,
                   policy: str) -> Iterator[tuple[bool, LayerChoice]]:
    """Walk the ranking once, lazily: (True, choice) for a layer taken, (False, choice) for one skipped because
    zeroing it together with the layers taken so far makes an output input-independent (policy 'safe' only)."""
    check = _DependenceCheck(detector)
    taken: list[str] = []
    for position, entry in enumerate(ranked, start=1):
        if policy == "safe" and not check.alive(taken + [entry["layer"]]):
            yield False, LayerChoice.from_scores(entry, position, SKIP_REASON)
            continue
        taken.append(entry["layer"])
        yield True, LayerChoice.from_scores(entry, position, f"candidate {position} of {len(ranked)} by {method} score")


def per_mac_selection(detector: Detector, ranked: list[dict], method: str, policy: str,
                      fold: FoldAnalysis) -> Iterator[tuple[bool, LayerChoice]]:
    """The knapsack-style greedy: repeatedly the candidate with the least importance per MAC the fold removes on
    top of the layers taken so far (ties: plain order), under the same dependence check as `safe_selection`.
    Every step recomputes each remaining candidate's marginal MACs (a graph replay of a few ms): they are not
    additive (two branches that feed one Add remove the Add's consumers only together). A candidate whose nodes
    the fold already removes with the layers taken, or that is left when no candidate removes anything more, is
    skipped (`NO_GAIN_REASON`)."""
    check = _DependenceCheck(detector)
    taken: list[str] = []
    pool = list(enumerate(ranked))  # (plain order, entry)
    position = 0

    def skip(entry: dict, reason: str, gain: int) -> tuple[bool, LayerChoice]:
        nonlocal position
        position += 1
        return False, LayerChoice.from_scores(entry, position, reason, gain_macs=gain)

    while pool:
        gone = fold.outcome(taken).removed_nodes
        gains = {}
        for order, entry in list(pool):
            nodes = fold.nodes_of_layer[entry["layer"]]
            if taken and all(x.name in gone for x in nodes):
                pool.remove((order, entry))
                yield skip(entry, NO_GAIN_REASON, 0)
            else:
                gains[order] = fold.removed_macs(entry["layer"], taken)
        useful = sorted((_per_mac(e["score"], gains[o]), o, e) for o, e in pool if gains[o] > 0)
        if not useful:
            for order, entry in pool:
                yield skip(entry, NO_GAIN_REASON, max(gains.get(order, 0), 0))
            return
        for _, order, entry in useful:
            pool.remove((order, entry))
            layers = taken + [entry["layer"]]
            # an output the fold turns into a constant is dead for certain; the probe decides the rest
            if policy == "safe" and (fold.outcome(layers).dead_outputs or not check.alive(layers)):
                yield skip(entry, SKIP_REASON, gains[order])
                continue
            taken.append(entry["layer"])
            position += 1
            yield True, LayerChoice.from_scores(
                entry, position, f"candidate {position} of {len(ranked)} by {method} score per MAC removed",
                gain_macs=gains[order])
            break


def _per_mac(score: float, macs: int) -> float:
    return score / macs if macs > 0 else math.inf


class Selection:
    """One scores file's ranking and the safe selection over it, walked only as far as a plan asks. With `fold`
    (the detector's `FoldAnalysis`), every candidate carries its fold-removed MACs and every plan the folded graph's
    MACs; rank 'per-mac' needs it."""

    def __init__(self, detector: Detector, scores: dict, policy: str = "safe", rank: str = "plain",
                 fold: FoldAnalysis | None = None):
        check_rank(rank)
        ranked = ranked_candidates(detector, scores, policy)
        if rank == "per-mac" and fold is None:
            raise XpruneError("the per-mac ranking needs the fold-removed MACs of every candidate (a FoldAnalysis)")
        if fold is not None:
            ranked = with_fold_macs(ranked, fold, required=rank == "per-mac")
        protected = sorted(detector.predictor_layers) if policy == "safe" else []
        self._fold = fold
        self._empty = Plan(model=detector.family, method=scores["method"], rate=0.0, policy=policy,
                           candidates=len(ranked), protected_predictors=protected, selected=[], skipped=[], rank=rank)
        if rank == "per-mac":
            self._walk = per_mac_selection(detector, ranked, scores["method"], policy, fold)
        else:
            self._walk = safe_selection(detector, ranked, scores["method"], policy)
        self._taken: list[LayerChoice] = []
        self._skipped: list[LayerChoice] = []

    @property
    def candidates(self) -> int:
        return self._empty.candidates

    def _walk_to(self, k: int) -> int:
        """Take layers until k are taken or the ranking is exhausted; returns how many are taken."""
        while len(self._taken) < k:
            step = next(self._walk, None)
            if step is None:
                break
            taken, choice = step
            (self._taken if taken else self._skipped).append(choice)
        return len(self._taken)

    def plan(self, k: int, rate: float | None = None) -> Plan | Infeasible:
        """The plan zeroing the first k layers the walk takes (k >= 1), at `rate` (default k / candidates)."""
        taken = self._walk_to(k)
        if taken < k:
            return Infeasible(f"only {taken} of {k} layers can be zeroed safely"
                              + ("" if rate is None else f" at rate {rate}"))
        full = dataclasses.replace(self._empty, selected=self._taken, skipped=self._skipped)
        plan = full.prefix(k, rate)
        if self._fold is not None:
            plan.fold = fold_summary(self._fold, plan.layers)
        return plan

    def largest(self) -> Plan | Infeasible:
        """The plan at the end of the walk: every layer it takes."""
        taken = self._walk_to(self.candidates)
        return self.plan(taken) if taken else Infeasible("no candidate layer can be zeroed safely")

    def plan_at(self, rate: float) -> Plan | Infeasible:
        return self.plan(layers_for_rate(check_rate(rate), self.candidates), rate)


def with_fold_macs(ranked: list[dict], fold: FoldAnalysis, required: bool = False) -> list[dict]:
    """Copies of the ranked entries with 'fold_macs': what the fold removes if the layer alone is zeroed. A layer
    without a node in the export gets none (an error when `required`)."""
    missing = set(fold.unmapped(e["layer"] for e in ranked))
    if missing and required:
        raise XpruneError(f"{len(missing)} candidate layers have no node in the exported graph (first: "
                          f"{sorted(missing)[0]}); their fold-removed MACs are unknown")
    return [{**e, "fold_macs": fold.removed_macs(e["layer"])} if e["layer"] not in missing else dict(e)
            for e in ranked]


def fold_summary(fold: FoldAnalysis, layers: list[str]) -> dict:
    """The exported graph's MACs before folding and after the fold with `layers` zeroed."""
    before, after = fold.macs_before, fold.macs_after(layers)
    return {"macs_before": before, "macs_after": after,
            "removed_mac_fraction": 1.0 - after / before if before else 0.0}


def plan_pruning(detector: Detector, scores: dict, rate: float, policy: str = "safe", rank: str = "plain",
                 fold: FoldAnalysis | None = None) -> Plan:
    """Pick round(rate x candidates) layers (at least one) from the bottom of the global ranking."""
    check_rate(rate)
    plan = Selection(detector, scores, policy, rank, fold).plan_at(rate)
    if isinstance(plan, Infeasible):
        raise XpruneError(plan.reason)
    return plan


def plans_for_rates(detector: Detector, scores: dict, rates: Sequence[float], policy: str = "safe",
                    rank: str = "plain", fold: FoldAnalysis | None = None) -> dict[float, Plan | Infeasible]:
    """{rate: plan_pruning(detector, scores, rate, policy)} from one walk over the ranking; a rate that cannot be
    reached (too few safe layers) maps to Infeasible."""
    for rate in rates:
        check_rate(rate)
    selection = Selection(detector, scores, policy, rank, fold)
    return {rate: selection.plan_at(rate) for rate in rates}


def apply_plan(detector: Detector, plan: Plan) -> list[str]:
    """Zero the planned layers' weights in place; returns their names."""
    return detector.zero_layers(plan.layers)
