"""Selection at a MAC target: the conv layers to zero so that the fold removes at least a fraction F of the exported
graph's MACs while the importance scores of the zeroed layers sum to the least.

The candidates are units, not layers. The fold removes a residual bottleneck, a squeeze-excite gate or a level's head
branch whole, whichever of its convs is zeroed, so candidate layers whose zeroing alone removes the same nodes (and
the same MACs) are one unit, zeroed through its least important conv: that conv's score is the unit's importance,
the branch's MACs are its MACs. MACs are not additive (two branches into one Add without a bypass remove what
follows only together; a unit whose convs go with another unit adds nothing to it), so every set of units is
measured by the fold analysis (`FoldAnalysis.macs_after`), never summed.

The choice (`choose_units`), with n the number of units:
1. greedy with completion: at every step, record the cheapest unit that completes the target on top of the units
   taken (the ratio greedy's last step may overshoot at great cost), and take the unit of least importance per MAC
   it adds; each recorded set then drops every unit of positive importance the target does without, most
   important first, and the cheapest set is the incumbent (n^2 replays of a few ms at most);
2. exact: sets of units in increasing total importance, each enumerated once (a heap over sorted scores); the first
   safe one that reaches the target is the optimum. The search stops there, at the incumbent's importance (which is
   then proven optimal), or after `exact_budget` sets; only then the plan says `optimal: false`.
The safe policy holds for every set: no output may become a constant in the fold (`dead_outputs`), and the float64
probe (`float64_probe`) must still see every output depend on the input. Both are monotone (a set that fails makes
every larger set fail), so the searches never extend a set that fails.

The target is a fraction of the exported graph's MACs before the fold, the figure of the plan's `fold` block: on a
checkpoint pruned before, its zeroed layers count towards it.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from xprune.errors import XpruneError
from xprune.prune.plan import (SKIP_REASON, float64_probe, fold_summary, outputs_depend_on_input, ranked_candidates,
                               with_fold_macs, zeroed)
from xprune.prune.plan_types import LayerChoice, Plan

if TYPE_CHECKING:
    from xprune.export.fold.analysis import FoldAnalysis
    from xprune.models.detector import Detector

EXACT_BUDGET = 1000  # sets the exact search visits at most (each a replay of a few ms)
NOTHING_LEFT_REASON = "the fold removes nothing with it (its branch is gone already in this checkpoint)"


def check_target_macs(target: float) -> float:
    if not (0.0 < target < 1.0):
        raise XpruneError(f"--target-macs must be in (0, 1), got {target}")
    return target


@dataclass(frozen=True)
class Unit:
    """Conv layers the fold removes together. `layer`: the candidate zeroed to remove them (the least important of
    those that remove exactly this), `score` its importance, `layers` every conv that goes with it, `macs` what the
    fold removes with it alone, `position` its 1-based place among the candidates in plain order."""

    layer: str
    score: float
    layers: tuple[str, ...]
    macs: int
    position: int


class SafetyCheck:
    """Policy 'safe': a set of zeroed layers is safe when no output became a constant in the fold and, with a
    detector, its float64 copy still sees every output depend on the input (probed once per set). Policy 'all':
    every set is."""

    def __init__(self, fold: FoldAnalysis, policy: str = "safe", detector: Detector | None = None):
        self.fold, self.policy, self.detector = fold, policy, detector
        self._probe: Detector | None = None
        self._probed: dict[frozenset[str], bool] = {}

    def by_fold(self, layers: Sequence[str]) -> bool:
        return self.policy == "all" or not self.fold.outcome(layers).dead_outputs

    def __call__(self, layers: Sequence[str]) -> bool:
        if not self.by_fold(layers):
            return False
        if self.policy == "all" or self.detector is None:
            return True
        key = frozenset(layers)
        if key not in self._probed:
            if self._probe is None:
                self._probe = float64_probe(self.detector)
            with zeroed(self._probe, list(layers)):
                self._probed[key] = outputs_depend_on_input(self._probe)
        return self._probed[key]


def candidate_units(fold: FoldAnalysis, ranked: list[dict],
                    safety: SafetyCheck) -> tuple[list[Unit], list[LayerChoice]]:
    """The units among the ranked candidate entries, cheapest first, and the candidates no unit can use (each with
    its reason): one whose zeroing alone kills an output, one whose branch is gone already."""
    bad = next((e for e in ranked if e["score"] < 0), None)
    if bad is not None:
        raise XpruneError(f"--target-macs needs importance scores >= 0; {bad['layer']} has {bad['score']}")
    base = fold.outcome(())
    groups: dict[tuple, tuple[int, dict]] = {}
    unusable = []
    for position, entry in enumerate(ranked, start=1):
        alone = fold.outcome([entry["layer"]])
        if base.macs - alone.macs <= 0:
            unusable.append(LayerChoice.from_scores(entry, position, NOTHING_LEFT_REASON, gain_macs=0))
        elif not safety.by_fold([entry["layer"]]):
            unusable.append(LayerChoice.from_scores(entry, position, SKIP_REASON, gain_macs=base.macs - alone.macs))
        else:  # ranked is sorted by score: the first of a group is its least important conv
            groups.setdefault((alone.removed_nodes, alone.macs), (position, entry))
    units = []
    for position, entry in groups.values():
        branch = fold.branch(entry["layer"])
        units.append(Unit(entry["layer"], float(entry["score"]), branch.layers, branch.macs, position))
    return sorted(units, key=lambda u: (u.score, u.position)), unusable


@dataclass(frozen=True)
class TargetChoice:
    """The units chosen for a target (indices into the units, cheapest first), how, and what they reach."""

    target: float
    chosen: tuple[int, ...]
    macs_before: int
    macs_after: int
    search: str  # "exact": found by the exact search; "greedy": the greedy's set, which the exact search kept
    optimal: bool  # proven: the exact search finished
    sets_searched: int

    @property
    def reached(self) -> float:
        return 1.0 - self.macs_after / self.macs_before if self.macs_before else 0.0


def choose_units(fold: FoldAnalysis, units: list[Unit], target: float, safety: Callable[[Sequence[str]], bool],
                 exact_budget: int | None = None, by_fold: Callable[[Sequence[str]], bool] | None = None
                 ) -> TargetChoice:
    """The set of units of least total importance whose zeroing removes at least `target` of the exported MACs and
    that `safety` accepts (`by_fold`: its cheap, fold-only part, used while walking; default `safety`). `units`
    must be sorted by score; `exact_budget`: default EXACT_BUDGET. Raises XpruneError when no safe set is found
    that reaches the target."""
    check_target_macs(target)
    budget = EXACT_BUDGET if exact_budget is None else exact_budget
    cheap = by_fold or safety
    before = fold.macs_before
    goal = target * before

    def layers(chosen: Sequence[int]) -> list[str]:
        return [units[i].layer for i in chosen]

    def reaches(chosen: Sequence[int]) -> bool:
        return before - fold.macs_after(layers(chosen)) >= goal

    def cost(chosen: Sequence[int]) -> float:
        return math.fsum(units[i].score for i in chosen)

    def choice(chosen: Sequence[int], search: str, optimal: bool, searched: int) -> TargetChoice:
        chosen = tuple(sorted(chosen))
        return TargetChoice(target, chosen, before, fold.macs_after(layers(chosen)), search, optimal, searched)

    if reaches(()):  # the checkpoint's zeroed layers reach it already
        return choice((), "exact", True, 1)
    everything = tuple(range(len(units)))
    if not reaches(everything):  # zeroing more never brings an op back: no set reaches it
        most = 1.0 - fold.macs_after(layers(everything)) / before
        raise XpruneError(f"--target-macs {target}: all {len(units)} candidate units zeroed together (outputs "
                          f"aside) remove {most:.1%} of the exported MACs, less than {target:.1%}")
    found, largest = greedy_with_completion(fold, units, goal, lambda c: cheap(layers(c)))
    ordered = sorted({drop_unneeded(units, s, reaches) for s in found}, key=lambda s: (cost(s), len(s), s))
    incumbent = next((s for s in ordered if safety(layers(s))), None)
    if incumbent is None and found:  # the probe refused what the fold allowed: walk again with the probe
        found, largest = greedy_with_completion(fold, units, goal, lambda c: safety(layers(c)))
        ordered = sorted({drop_unneeded(units, s, reaches) for s in found}, key=lambda s: (cost(s), len(s), s))
        incumbent = ordered[0] if ordered else None
    bound = cost(incumbent) if incumbent is not None else math.inf
    best, searched, finished = exact_search(fold, units, reaches, cheap, lambda c: safety(layers(c)), bound,
                                             budget)
    if best is not None:
        return choice(best, "exact", True, searched)
    if incumbent is not None:
        return choice(incumbent, "greedy", finished, searched)
    most = 1.0 - fold.macs_after(layers(largest)) / before if before else 0.0
    proof = "" if finished else f" (the exact search stopped after {searched} sets)"
    raise XpruneError(f"--target-macs {target}: no safe set of the {len(units)} candidate units reaches "
                      f"{target:.1%} of the exported MACs; the most found removes {most:.1%}{proof}")


def greedy_with_completion(fold: FoldAnalysis, units: list[Unit], goal: float,
                           safe: Callable[[tuple[int, ...]], bool]) -> tuple[list[tuple[int, ...]], tuple[int, ...]]:
    """The greedy by importance per marginal MAC, recording at every step the cheapest safe unit that completes the
    target on top of the units taken (such a unit is then set aside: on a larger set it costs no less). The walk
    ends when the units taken cost as much as the cheapest completed set. Returns the completed sets and the largest
    safe set walked (what an unreachable target reaches)."""
    before = fold.macs_before
    taken: list[int] = []
    pool = list(range(len(units)))
    found: list[tuple[int, ...]] = []
    cheapest = math.inf  # of the completed sets
    while pool and math.fsum(units[i].score for i in taken) < cheapest:  # a larger set costs no less
        after = fold.macs_after(units[i].layer for i in taken)
        gains = {i: after - fold.macs_after([units[t].layer for t in taken] + [units[i].layer]) for i in pool}
        pool = [i for i in pool if gains[i] > 0]  # nothing more now is nothing more later: its nodes are gone
        completing = [i for i in pool if before - (after - gains[i]) >= goal]
        for i in completing:  # pool is in score order
            if safe(tuple(taken + [i])):
                found.append(tuple(taken + [i]))
                cheapest = min(cheapest, math.fsum(units[j].score for j in found[-1]))
                break
        pool = [i for i in pool if i not in completing]
        for i in sorted(pool, key=lambda i: (units[i].score / gains[i], i)):
            pool.remove(i)
            if safe(tuple(taken + [i])):
                taken.append(i)
                break
    return found, tuple(taken)


def drop_unneeded(units: list[Unit], chosen: tuple[int, ...], reaches: Callable[[Sequence[int]], bool]
                  ) -> tuple[int, ...]:
    """Drop, most important first, every unit of positive importance without which the set still reaches the
    target (a subset of a safe set is safe). Zero-importance units stay: their MACs cost nothing."""
    kept = list(chosen)
    for i in sorted(chosen, key=lambda i: (-units[i].score, -i)):
        rest = [j for j in kept if j != i]
        if units[i].score > 0 and reaches(rest):
            kept = rest
    return tuple(sorted(kept))


def exact_search(fold: FoldAnalysis, units: list[Unit], reaches: Callable[[Sequence[int]], bool],
                 by_fold: Callable[[Sequence[str]], bool], safe: Callable[[tuple[int, ...]], bool], bound: float,
                 budget: int) -> tuple[tuple[int, ...] | None, int, bool]:
    """Sets of units in nondecreasing total importance (units sorted by score; a set's successors replace its last
    unit by the next one, or add the next one), the first safe one that reaches the target and costs less than
    `bound`. Returns (that set or None, sets visited, whether the search finished, i.e. proved its answer). A set
    holding a unit whose convs go with another of its units is not measured (it adds nothing), and neither it nor
    a set that fails the safety check is extended."""
    costs = [u.score for u in units]
    gone_with = [fold.outcome([u.layer]).removed_nodes for u in units]
    nodes = [{x.name for x in fold.nodes_of_layer[u.layer]} for u in units]
    nested = {(a, b) for a in range(len(units)) for b in range(len(units)) if a != b and nodes[a] <= gone_with[b]}
    heap: list[tuple[float, tuple[int, ...]]] = [(costs[0], (0,))] if units else []
    searched = 0
    while heap:
        total, chosen = heapq.heappop(heap)
        if total >= bound:
            return None, searched, True
        if searched >= budget:
            return None, searched, False
        searched += 1
        last = chosen[-1]
        if last + 1 < len(units):
            replaced = chosen[:-1] + (last + 1,)
            heapq.heappush(heap, (math.fsum(costs[i] for i in replaced), replaced))
        if any((a, b) in nested for a in chosen for b in chosen):
            continue
        if not by_fold([units[i].layer for i in chosen]):
            continue
        if reaches(chosen):
            if safe(chosen):
                return chosen, searched, True
            continue
        if last + 1 < len(units):
            grown = chosen + (last + 1,)
            heapq.heappush(heap, (math.fsum(costs[i] for i in grown), grown))
    return None, searched, True


def plan_for_target(detector: Detector, scores: dict, target: float, policy: str, fold: FoldAnalysis,
                    exact_budget: int | None = None) -> Plan:
    """The plan zeroing the units `choose_units` picks for `target`; its `fold` block records the target, the
    fraction reached, how it was chosen and each unit (zeroed layer, score, the layers going with it, MACs)."""
    check_target_macs(target)
    ranked = with_fold_macs(ranked_candidates(detector, scores, policy), fold, required=True)
    safety = SafetyCheck(fold, policy, detector)
    units, unusable = candidate_units(fold, ranked, safety)
    result = choose_units(fold, units, target, safety, exact_budget, by_fold=safety.by_fold)
    entries = {e["layer"]: e for e in ranked}
    # the chosen units in the order of their importance per MAC removed alone, each with what it adds
    order = sorted(result.chosen, key=lambda i: (units[i].score / units[i].macs, i))
    selected: list[LayerChoice] = []
    records: list[dict] = []
    taken: list[str] = []
    how = "least total importance" + ("" if result.optimal else " the greedy found (not proven optimal)")
    for k, i in enumerate(order, start=1):
        unit = units[i]
        gain = fold.removed_macs(unit.layer, taken)
        taken.append(unit.layer)
        reason = (f"unit {k} of {len(order)} ({len(unit.layers)} conv layers go with it): {how} for "
                  f"{target:.1%} of the exported MACs")
        selected.append(LayerChoice.from_scores(entries[unit.layer], unit.position, reason, gain_macs=gain))
        records.append({"zeroed": unit.layer, "score": unit.score, "layers": list(unit.layers), "macs": unit.macs,
                        "gain_macs": gain})
    protected = sorted(detector.predictor_layers) if policy == "safe" else []
    plan = Plan(model=detector.family, method=scores["method"], rate=len(selected) / max(len(ranked), 1),
                policy=policy, candidates=len(ranked), protected_predictors=protected, selected=selected,
                skipped=unusable, rank="per-mac")
    plan.fold = {**fold_summary(fold, plan.layers),
                 "target": {"fraction": target, "reached": result.reached, "search": result.search,
                            "optimal": result.optimal, "sets_searched": result.sets_searched,
                            "candidate_units": len(units), "units": records}}
    return plan


__all__ = ["EXACT_BUDGET", "SafetyCheck", "TargetChoice", "Unit", "candidate_units", "check_target_macs",
           "choose_units", "drop_unneeded", "exact_search", "greedy_with_completion", "plan_for_target"]
