"""Global ranking, candidate policy and zeroing.

Candidate policies:
- safe (default): every conv except the final predictors of each head, and a layer is taken only if, with it and
  the layers already taken zeroed, every model output still depends on the input (a conv on the only
  input-to-output path makes the detector output a constant: it is skipped, with the reason in the plan);
- all: every conv, predictors included, no check (the paper's procedure).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch

from xprune.errors import XpruneError
from xprune.models.detector import Detector

POLICIES = ("safe", "all")


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


def plan_pruning(detector: Detector, scores: dict, rate: float, policy: str = "safe") -> dict:
    """Pick round(rate x candidates) layers (at least one) from the bottom of the global ranking."""
    check_rate(rate)
    if policy not in POLICIES:
        raise XpruneError(f"unknown candidate policy '{policy}'; choose one of: {', '.join(POLICIES)}")
    if scores.get("model") != detector.family:
        raise XpruneError(f"scores are for {scores.get('model')}, not {detector.family}")
    probe = float64_probe(detector) if policy == "safe" else detector
    convs = detector.conv_layers()
    missing = [entry["layer"] for entry in scores["layers"] if entry["layer"] not in convs]
    if missing:
        raise XpruneError(f"scores name {len(missing)} layers this model does not have (first: {missing[0]})")
    predictors = set(detector.predictor_layers)
    candidates = [e for e in scores["layers"] if policy == "all" or e["layer"] not in predictors]
    candidates.sort(key=lambda e: (e["score"], e["layer"]))
    wanted = max(1, round(rate * len(candidates)))
    selected, skipped = [], []
    for position, entry in enumerate(candidates, start=1):
        if len(selected) == wanted:
            break
        chosen = [e["layer"] for e in selected] + [entry["layer"]]
        if policy == "safe":
            with zeroed(probe, chosen):
                alive = outputs_depend_on_input(probe)
            if not alive:
                skipped.append({**_brief(entry), "candidate_rank": position,
                                "reason": "zeroing it makes an output input-independent (no bypass around it)"})
                continue
        selected.append({**_brief(entry), "candidate_rank": position,
                         "reason": f"candidate {position} of {len(candidates)} by {scores['method']} score"})
    if len(selected) < wanted:
        raise XpruneError(f"only {len(selected)} of {wanted} layers can be zeroed safely at rate {rate}")
    return {"model": detector.family, "method": scores["method"], "rate": rate, "policy": policy,
            "candidates": len(candidates), "protected_predictors": sorted(predictors) if policy == "safe" else [],
            "selected": selected, "skipped": skipped,
            "zeroed_params": sum(e["params"] for e in selected), "zeroed_conv_macs": sum(e["macs"] for e in selected)}


def _brief(entry: dict) -> dict:
    return {k: entry[k] for k in ("layer", "type", "score", "rank", "params", "macs") if k in entry}


def apply_plan(detector: Detector, plan: dict) -> list[str]:
    """Zero the planned layers' weights in place; returns their names."""
    convs = detector.conv_layers()
    names = [e["layer"] for e in plan["selected"]]
    with torch.no_grad():
        for n in names:
            convs[n].weight.zero_()
    return names
