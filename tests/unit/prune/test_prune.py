"""Pruning plans: `safe` never takes a layer on the only input-to-output path; `all` does what it is told; every
rate is a prefix of one walk over the ranking; a plan survives its JSON form."""

import copy
import itertools

import pytest
import torch

from xprune.errors import XpruneError
from xprune.importance.scores import score_layers
from xprune.models import build_detector
from xprune.prune.plan import (Infeasible, LayerChoice, Plan, apply_plan, float64_probe, layers_for_rate,
                               outputs_depend_on_input, plan_pruning, plans_for_rates, safe_selection, zeroed)

STEM = "model.0.conv"  # YOLOv8's first conv: every path from the image to the outputs goes through it


@pytest.fixture(scope="module")
def yolo():
    return build_detector("yolov8n", "none", num_classes=6, input_size=96)


def _scores_with_lowest(det, lowest: list[str]) -> dict:
    doc = score_layers(det, "l1")
    for e in doc["layers"]:
        if e["layer"] in lowest:
            e["score"] = -1.0 + lowest.index(e["layer"]) * 1e-3
    return doc


def test_dependence_check_sees_a_dead_stem(yolo):
    probe = float64_probe(yolo)
    assert outputs_depend_on_input(probe)
    with zeroed(probe, [STEM]):
        assert not outputs_depend_on_input(probe)
    assert outputs_depend_on_input(probe)  # weights restored


@pytest.mark.slow
def test_safe_skips_the_only_path_and_keeps_the_model_alive(yolo):
    scores = _scores_with_lowest(yolo, [STEM, "model.1.conv"])
    plan = plan_pruning(yolo, scores, 0.3, "safe")
    chosen = set(plan.layers)
    assert STEM not in chosen and "model.1.conv" not in chosen
    assert {e.layer for e in plan.skipped} >= {STEM, "model.1.conv"}
    assert not chosen & set(yolo.predictor_layers)
    assert len(chosen) == round(0.3 * plan.candidates)
    pruned = copy.deepcopy(yolo)
    apply_plan(pruned, plan)
    assert outputs_depend_on_input(float64_probe(pruned))
    convs = pruned.conv_layers()
    assert all(float(convs[n].weight.detach().abs().sum()) == 0.0 for n in chosen)


def test_all_policy_takes_what_the_ranking_says(yolo):
    scores = _scores_with_lowest(yolo, [STEM, yolo.predictor_layers[0]])
    plan = plan_pruning(yolo, scores, 0.03, "all")
    assert plan.layers[:2] == [STEM, yolo.predictor_layers[0]]


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.1, 1.5])
def test_rate_outside_open_interval(yolo, rate):
    with pytest.raises(XpruneError, match="rate must be in"):
        plan_pruning(yolo, score_layers(yolo, "l1"), rate)


def test_scores_of_another_model_are_refused(yolo):
    other = build_detector("ssdlite320-mbv3", "none", num_classes=6, input_size=96)
    with pytest.raises(XpruneError, match="scores are for"):
        plan_pruning(yolo, score_layers(other, "l1"), 0.05)


@pytest.mark.slow
def test_safe_plan_on_torchvision_ssd_keeps_outputs_alive():
    det = build_detector("ssd-mobilenetv2", "none", num_classes=6, input_size=96)
    plan = plan_pruning(det, score_layers(det, "l1"), 0.1, "safe")
    pruned = copy.deepcopy(det)
    apply_plan(pruned, plan)
    assert outputs_depend_on_input(float64_probe(pruned))
    x = torch.rand(1, 3, 96, 96)
    assert len(pruned.predict(x)) == 1


def test_layers_for_rate_takes_at_least_one():
    assert layers_for_rate(0.05, 64) == 3 and layers_for_rate(0.001, 64) == 1 and layers_for_rate(0.5, 7) == 4


@pytest.mark.slow  # the full suite runs it; the fast loop stays under two minutes
def test_every_rate_is_a_prefix_of_one_walk(yolo):
    scores = _scores_with_lowest(yolo, [STEM, "model.1.conv"])
    plans = plans_for_rates(yolo, scores, (0.3, 0.05, 0.1), "safe")
    assert list(plans) == [0.3, 0.05, 0.1]
    assert plans[0.3] == plan_pruning(yolo, scores, 0.3, "safe")
    for rate in (0.3, 0.05, 0.1):
        plan = plans[rate]
        assert plan.rate == rate and len(plan.selected) == layers_for_rate(rate, plan.candidates)
        assert plans[0.3].prefix(len(plan.selected), rate) == plan
    # the walk itself, lazily: candidates once each in ranking order, the dead stem skipped with its reason
    ranked = sorted((e for e in scores["layers"] if e["layer"] not in yolo.predictor_layers),
                    key=lambda e: (e["score"], e["layer"]))
    steps = list(itertools.islice(safe_selection(yolo, ranked, "l1", "safe"), 20))
    assert [c.candidate_rank for _, c in steps] == list(range(1, 21))
    assert not steps[0][0] and steps[0][1].layer == STEM and "input-independent" in steps[0][1].reason
    assert [c.layer for taken, c in steps if taken][:len(plans[0.1].selected)] == plans[0.1].layers


@pytest.mark.slow  # the full suite runs it; the fast loop stays under two minutes
def test_an_unreachable_rate_is_infeasible():
    small = build_detector("yolov8n", "none", num_classes=6, input_size=32)  # two full walks: keep them cheap
    scores = score_layers(small, "l1")
    (infeasible,) = plans_for_rates(small, scores, (0.99,), "safe").values()
    assert isinstance(infeasible, Infeasible) and "can be zeroed safely at rate 0.99" in infeasible.reason
    with pytest.raises(XpruneError, match=f"^{infeasible.reason}$"):
        plan_pruning(small, scores, 0.99, "safe")


@pytest.fixture(scope="module")
def l1_plan(yolo):
    return plan_pruning(yolo, score_layers(yolo, "l1"), 0.1, "safe")


def test_plan_json_roundtrip_and_derived_totals(l1_plan):
    plan = copy.deepcopy(l1_plan)
    doc = plan.to_json()
    assert list(doc) == ["model", "method", "rate", "policy", "candidates", "protected_predictors", "selected",
                         "skipped", "zeroed_params", "zeroed_conv_macs", "rank"]
    assert doc["rank"] == "plain"
    assert list(doc["selected"][0]) == ["layer", "type", "score", "rank", "params", "macs", "candidate_rank", "reason"]
    assert doc["zeroed_params"] == sum(e["params"] for e in doc["selected"]) == plan.zeroed_params > 0
    assert doc["zeroed_conv_macs"] == sum(e["macs"] for e in doc["selected"]) == plan.zeroed_conv_macs
    assert Plan.from_json(doc) == plan
    plan.weights, plan.budget = "w.pt", {"search": "grid"}
    assert list(plan.to_json())[-2:] == ["budget", "weights"] and Plan.from_json(plan.to_json()) == plan
    assert LayerChoice.from_json({"layer": "a", "score": 1.0, "candidate_rank": 1, "reason": "r"}).to_json() == \
        {"layer": "a", "score": 1.0, "candidate_rank": 1, "reason": "r"}


@pytest.mark.parametrize("broken", [[], {"model": "yolov8n"}, "selected", {"selected": [{"layer": 3}]}])
def test_malformed_plan_is_a_clear_error(l1_plan, broken):
    doc = l1_plan.to_json()
    if isinstance(broken, dict):
        doc.update(broken)
        if "model" in broken:
            del doc["rate"]
    elif broken == "selected":
        doc["selected"][0].pop("reason")
    else:
        doc = broken
    with pytest.raises(XpruneError, match="malformed pruning plan"):
        Plan.from_json(doc)


def test_prefix_bounds(l1_plan):
    plan = l1_plan
    assert plan.prefix(1).layers == plan.layers[:1] and plan.prefix(1).rate == 1 / plan.candidates
    with pytest.raises(XpruneError, match="prefix of this plan"):
        plan.prefix(len(plan.selected) + 1)
