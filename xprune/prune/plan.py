"""The pruning plan: which conv layers are zeroed, chosen from the bottom of one global ranking.

Candidate policies:
- safe (default): every conv except the final predictors of each head, and a layer is taken only if, with it and
  the layers already taken zeroed, every model output still depends on the input (a conv on the only
  input-to-output path makes the detector output a constant: it is skipped, with the reason in the plan);
- all: every conv, predictors included, no check (the paper's procedure).

The walk over the ranking (`safe_selection`) is deterministic, so the plan at k layers is the start of the plan at
any larger k: one walk serves every rate (`plans_for_rates`) and every step of the budget search.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from xprune.errors import XpruneError
from xprune.models.detector import Detector

POLICIES = ("safe", "all")
SKIP_REASON = "zeroing it makes an output input-independent (no bypass around it)"


@contextlib.contextmanager
def zeroed(detector: Detector, layers: list[str]) -> Iterator[None]:
    """Temporarily zero the weights of `layers` (biases stay: a zeroed conv outputs its bias)."""
    convs = detector.conv_layers()
    saved = {n: convs[n].weight.detach().clone() for n in layers}
    try:
        with torch.no_grad():
            for n in layers:
                convs[n].weight.zero_()
        yield
    finally:
        with torch.no_grad():
            for n, w in saved.items():
                convs[n].weight.copy_(w)


def outputs_depend_on_input(detector: Detector, probes: int = 2, seed: int = 0) -> bool:
    """True when every raw output changes between random inputs. Zeroing makes a dead output exactly constant;
    run in float64 (see `float64_probe`) so that a live but saturated output (an untrained head) still differs."""
    dtype = next(detector.model.parameters()).dtype
    g = torch.Generator().manual_seed(seed)
    s = detector.input_size
    xs = torch.rand((probes, 3, s, s), generator=g, dtype=torch.float64).to(dtype)
    detector.model.eval()
    with torch.no_grad():
        outs = [detector.raw(xs[i:i + 1]) for i in range(probes)]
    for k in range(len(outs[0])):
        first = outs[0][k]
        if all(o[k].shape == first.shape and torch.equal(o[k], first) for o in outs[1:]):
            return False
    return True


def float64_probe(detector: Detector) -> Detector:
    """A float64 copy of the detector for the dependence check (the original stays untouched)."""
    probe = copy.deepcopy(detector)
    probe.model.double()
    return probe


def check_rate(rate: float) -> float:
    if not (0.0 < rate < 1.0):
        raise XpruneError(f"--rate must be in (0, 1), got {rate}")
    return rate


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise XpruneError(f"unknown candidate policy '{policy}'; choose one of: {', '.join(POLICIES)}")
    return policy


def layers_for_rate(rate: float, candidates: int) -> int:
    """How many layers a plan at `rate` zeroes: round(rate x candidates), at least one."""
    return max(1, round(rate * candidates))


@dataclass
class LayerChoice:
    """One candidate layer as the plan saw it: selected (zeroed) or skipped, and why. type, rank, params and macs
    are copied from the scores file and absent (None) when it does not carry them."""

    layer: str
    score: float
    candidate_rank: int  # 1-based position in the plan's ranking of candidates
    reason: str
    type: str | None = None
    rank: int | None = None  # rank among all conv layers in the scores file
    params: int | None = None
    macs: int | None = None

    _SCORE_FIELDS = ("layer", "type", "score", "rank", "params", "macs")  # copied from a scores entry, in order

    @classmethod
    def from_scores(cls, entry: dict, candidate_rank: int, reason: str) -> LayerChoice:
        return cls(candidate_rank=candidate_rank, reason=reason,
                   **{k: entry[k] for k in cls._SCORE_FIELDS if k in entry})

    def to_json(self) -> dict:
        doc = {k: getattr(self, k) for k in self._SCORE_FIELDS if getattr(self, k) is not None}
        return {**doc, "candidate_rank": self.candidate_rank, "reason": self.reason}

    @classmethod
    def from_json(cls, doc: Any) -> LayerChoice:
        _expect(doc, dict, "a layer entry")
        kinds = {"layer": str, "score": (int, float), "candidate_rank": int, "reason": str, "type": str, "rank": int,
                 "params": int, "macs": int}
        for key, kind in kinds.items():
            if key in ("layer", "score", "candidate_rank", "reason") or doc.get(key) is not None:
                _expect(doc.get(key), kind, f"a layer's '{key}'")
        return cls(**{k: doc[k] for k in kinds if k in doc})


@dataclass
class Infeasible:
    """No plan exists at this rate (too few layers can be zeroed safely)."""

    reason: str


@dataclass
class Plan:
    """The layers one criterion's ranking zeroes at one rate. `budget` is the accuracy-budget search that chose
    the rate (see `xprune.prune.budget`), `weights` the checkpoint the plan was applied to; both are optional."""

    model: str
    method: str
    rate: float
    policy: str
    candidates: int
    protected_predictors: list[str]
    selected: list[LayerChoice]
    skipped: list[LayerChoice]
    budget: dict | None = None
    weights: str | None = None

    @property
    def layers(self) -> list[str]:
        return [c.layer for c in self.selected]

    @property
    def zeroed_params(self) -> int:
        return sum(c.params or 0 for c in self.selected)

    @property
    def zeroed_conv_macs(self) -> int:
        return sum(c.macs or 0 for c in self.selected)

    def prefix(self, k: int, rate: float | None = None) -> Plan:
        """The plan zeroing only the first k selected layers (at `rate`, default k / candidates), with the layers
        skipped before its last one: the plan the same walk gives for k layers."""
        if not 1 <= k <= len(self.selected):
            raise XpruneError(f"a prefix of this plan has 1 to {len(self.selected)} layers, not {k}")
        selected = self.selected[:k]
        last = selected[-1].candidate_rank
        return dataclasses.replace(self, rate=k / self.candidates if rate is None else rate,
                                   protected_predictors=list(self.protected_predictors), selected=selected,
                                   skipped=[c for c in self.skipped if c.candidate_rank < last])

    def to_json(self) -> dict:
        doc = {"model": self.model, "method": self.method, "rate": self.rate, "policy": self.policy,
               "candidates": self.candidates, "protected_predictors": list(self.protected_predictors),
               "selected": [c.to_json() for c in self.selected], "skipped": [c.to_json() for c in self.skipped],
               "zeroed_params": self.zeroed_params, "zeroed_conv_macs": self.zeroed_conv_macs}
        if self.budget is not None:
            doc["budget"] = self.budget
        if self.weights is not None:
            doc["weights"] = self.weights
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> Plan:
        """A plan from its JSON form (a plan file, or a checkpoint's meta["pruning"])."""
        _expect(doc, dict, "a pruning plan")
        for key, kind in (("model", str), ("method", str), ("rate", (int, float)), ("policy", str),
                          ("candidates", int), ("protected_predictors", list), ("selected", list), ("skipped", list)):
            _expect(doc.get(key), kind, f"a plan's '{key}'")
        _expect(doc.get("budget", {}), dict, "a plan's 'budget'")
        _expect(doc.get("weights", ""), str, "a plan's 'weights'")
        return cls(model=doc["model"], method=doc["method"], rate=doc["rate"], policy=doc["policy"],
                   candidates=doc["candidates"], protected_predictors=list(doc["protected_predictors"]),
                   selected=[LayerChoice.from_json(e) for e in doc["selected"]],
                   skipped=[LayerChoice.from_json(e) for e in doc["skipped"]],
                   budget=doc.get("budget"), weights=doc.get("weights"))


def _expect(value: Any, kind: type | tuple[type, ...], what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, kind):
        raise XpruneError(f"malformed pruning plan: expected {what}, got {str(value)[:80]}")


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


def safe_selection(detector: Detector, ranked: list[dict], method: str,
                   policy: str) -> Iterator[tuple[bool, LayerChoice]]:
    """Walk the ranking once, lazily: (True, choice) for a layer taken, (False, choice) for one skipped because
    zeroing it together with the layers taken so far makes an output input-independent (policy 'safe' only).
    The check runs on a float64 copy of the detector, made at the first check."""
    probe = None
    taken: list[str] = []
    for position, entry in enumerate(ranked, start=1):
        if policy == "safe":
            if probe is None:
                probe = float64_probe(detector)
            with zeroed(probe, taken + [entry["layer"]]):
                alive = outputs_depend_on_input(probe)
            if not alive:
                yield False, LayerChoice.from_scores(entry, position, SKIP_REASON)
                continue
        taken.append(entry["layer"])
        yield True, LayerChoice.from_scores(entry, position, f"candidate {position} of {len(ranked)} by {method} score")


class Selection:
    """One scores file's ranking and the safe selection over it, walked only as far as a plan asks."""

    def __init__(self, detector: Detector, scores: dict, policy: str = "safe"):
        ranked = ranked_candidates(detector, scores, policy)
        protected = sorted(detector.predictor_layers) if policy == "safe" else []
        self._empty = Plan(model=detector.family, method=scores["method"], rate=0.0, policy=policy,
                           candidates=len(ranked), protected_predictors=protected, selected=[], skipped=[])
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
        return full.prefix(k, rate)

    def plan_at(self, rate: float) -> Plan | Infeasible:
        return self.plan(layers_for_rate(check_rate(rate), self.candidates), rate)


def plan_pruning(detector: Detector, scores: dict, rate: float, policy: str = "safe") -> Plan:
    """Pick round(rate x candidates) layers (at least one) from the bottom of the global ranking."""
    check_rate(rate)
    plan = Selection(detector, scores, policy).plan_at(rate)
    if isinstance(plan, Infeasible):
        raise XpruneError(plan.reason)
    return plan


def plans_for_rates(detector: Detector, scores: dict, rates: Sequence[float],
                    policy: str = "safe") -> dict[float, Plan | Infeasible]:
    """{rate: plan_pruning(detector, scores, rate, policy)} from one walk over the ranking; a rate that cannot be
    reached (too few safe layers) maps to Infeasible."""
    for rate in rates:
        check_rate(rate)
    selection = Selection(detector, scores, policy)
    return {rate: selection.plan_at(rate) for rate in rates}


def apply_plan(detector: Detector, plan: Plan) -> list[str]:
    """Zero the planned layers' weights in place; returns their names."""
    convs = detector.conv_layers()
    with torch.no_grad():
        for name in plan.layers:
            convs[name].weight.zero_()
    return plan.layers
