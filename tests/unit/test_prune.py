"""Pruning plans: `safe` never takes a layer on the only input-to-output path; `all` does what it is told."""

import copy

import pytest
import torch

from xprune.errors import XpruneError
from xprune.importance.scores import score_layers
from xprune.models import build_detector
from xprune.prune.plan import apply_plan, float64_probe, outputs_depend_on_input, plan_pruning, zeroed

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


def test_safe_skips_the_only_path_and_keeps_the_model_alive(yolo):
    scores = _scores_with_lowest(yolo, [STEM, "model.1.conv"])
    plan = plan_pruning(yolo, scores, 0.3, "safe")
    chosen = {e["layer"] for e in plan["selected"]}
    assert STEM not in chosen and "model.1.conv" not in chosen
    assert {e["layer"] for e in plan["skipped"]} >= {STEM, "model.1.conv"}
    assert not chosen & set(yolo.predictor_layers)
    assert len(chosen) == round(0.3 * plan["candidates"])
    pruned = copy.deepcopy(yolo)
    apply_plan(pruned, plan)
    assert outputs_depend_on_input(float64_probe(pruned))
    convs = pruned.conv_layers()
    assert all(float(convs[n].weight.detach().abs().sum()) == 0.0 for n in chosen)


def test_all_policy_takes_what_the_ranking_says(yolo):
    scores = _scores_with_lowest(yolo, [STEM, yolo.predictor_layers[0]])
    plan = plan_pruning(yolo, scores, 0.03, "all")
    assert [e["layer"] for e in plan["selected"]][:2] == [STEM, yolo.predictor_layers[0]]


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.1, 1.5])
def test_rate_outside_open_interval(yolo, rate):
    with pytest.raises(XpruneError, match="rate must be in"):
        plan_pruning(yolo, score_layers(yolo, "l1"), rate)


def test_scores_of_another_model_are_refused(yolo):
    other = build_detector("ssdlite320-mbv3", "none", num_classes=6, input_size=96)
    with pytest.raises(XpruneError, match="scores are for"):
        plan_pruning(yolo, score_layers(other, "l1"), 0.05)


def test_safe_plan_on_torchvision_ssd_keeps_outputs_alive():
    det = build_detector("ssd-mobilenetv2", "none", num_classes=6, input_size=96)
    plan = plan_pruning(det, score_layers(det, "l1"), 0.1, "safe")
    pruned = copy.deepcopy(det)
    apply_plan(pruned, plan)
    assert outputs_depend_on_input(float64_probe(pruned))
    x = torch.rand(1, 3, 96, 96)
    assert len(pruned.predict(x)) == 1
