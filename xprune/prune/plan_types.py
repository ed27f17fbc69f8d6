"""The pruning plan as data: which conv layers a plan zeroes and which it skipped, each with its reason and the facts
copied from the scores file, and its JSON form (a plan file, or a checkpoint's meta["pruning"]). How a plan is
chosen is `xprune.prune.plan`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from xprune.errors import XpruneError

RANKS = ("plain", "per-mac")


@dataclass
class LayerChoice:
    """One candidate layer as the plan saw it: selected (zeroed) or skipped, and why. type, rank, params and macs
    are copied from the scores file and absent (None) when it does not carry them. fold_macs: the MACs the fold
    removes if this layer alone is zeroed (its branch on the exported graph); gain_macs (per-mac ranking): the MACs
    it added to the layers taken before it. Both None when not computed."""

    layer: str
    score: float
    candidate_rank: int  # 1-based position in the plan's ranking of candidates
    reason: str
    type: str | None = None
    rank: int | None = None  # rank among all conv layers in the scores file
    params: int | None = None
    macs: int | None = None
    fold_macs: int | None = None
    gain_macs: int | None = None

    _SCORE_FIELDS = ("layer", "type", "score", "rank", "params", "macs")  # copied from a scores entry, in order
    _FOLD_FIELDS = ("fold_macs", "gain_macs")

    @classmethod
    def from_scores(cls, entry: dict, candidate_rank: int, reason: str, gain_macs: int | None = None) -> LayerChoice:
        return cls(candidate_rank=candidate_rank, reason=reason, fold_macs=entry.get("fold_macs"), gain_macs=gain_macs,
                   **{k: entry[k] for k in cls._SCORE_FIELDS if k in entry})

    def to_json(self) -> dict:
        doc = {k: getattr(self, k) for k in self._SCORE_FIELDS if getattr(self, k) is not None}
        fold = {k: getattr(self, k) for k in self._FOLD_FIELDS if getattr(self, k) is not None}
        return {**doc, **fold, "candidate_rank": self.candidate_rank, "reason": self.reason}

    @classmethod
    def from_json(cls, doc: Any) -> LayerChoice:
        _expect(doc, dict, "a layer entry")
        kinds = {"layer": str, "score": (int, float), "candidate_rank": int, "reason": str, "type": str, "rank": int,
                 "params": int, "macs": int, "fold_macs": int, "gain_macs": int}
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
    the rate (see `xprune.prune.budget`), `weights` the checkpoint the plan was applied to, `fold` the exported
    graph's MACs before and after the fold with these layers zeroed (`FoldAnalysis`); all optional. `rank`: the
    ranking that ordered the candidates (RANKS)."""

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
    rank: str = "plain"
    fold: dict | None = None

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
                                   skipped=[c for c in self.skipped if c.candidate_rank < last], fold=None)

    def to_json(self) -> dict:
        doc = {"model": self.model, "method": self.method, "rate": self.rate, "policy": self.policy,
               "candidates": self.candidates, "protected_predictors": list(self.protected_predictors),
               "selected": [c.to_json() for c in self.selected], "skipped": [c.to_json() for c in self.skipped],
               "zeroed_params": self.zeroed_params, "zeroed_conv_macs": self.zeroed_conv_macs, "rank": self.rank}
        if self.fold is not None:
            doc["fold"] = self.fold
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
        _expect(doc.get("fold", {}), dict, "a plan's 'fold'")
        if doc.get("rank", "plain") not in RANKS:
            raise XpruneError(f"malformed pruning plan: unknown rank {str(doc.get('rank'))[:40]}")
        return cls(model=doc["model"], method=doc["method"], rate=doc["rate"], policy=doc["policy"],
                   candidates=doc["candidates"], protected_predictors=list(doc["protected_predictors"]),
                   selected=[LayerChoice.from_json(e) for e in doc["selected"]],
                   skipped=[LayerChoice.from_json(e) for e in doc["skipped"]],
                   budget=doc.get("budget"), weights=doc.get("weights"), rank=doc.get("rank", "plain"),
                   fold=doc.get("fold"))


def _expect(value: Any, kind: type | tuple[type, ...], what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, kind):
        raise XpruneError(f"malformed pruning plan: expected {what}, got {str(value)[:80]}")
