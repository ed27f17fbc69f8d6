"""Accuracy-budget search: finds the largest k within the budget with a fake mAP (monotone, and with a
non-monotone dip), reports every evaluation, validates the budget, restores the weights; the held-out images are
never train images (the first val images by default, half of val at most; a calib split drawn from train is
refused) nor the scoring images, and the plan records which they were; one small real run (YOLOv8n random init,
64 px, synthetic data)."""

import dataclasses
import json
import math

import pytest
import torch
from PIL import Image

from xprune.data.coco import CocoDetectionSet, calibration_set
from xprune.data.folder import DatasetWriter, ImageRecord
from xprune.data.splits import shared_images
from xprune.data.trees import calib_draw
from xprune.errors import XpruneError
from xprune.evaluate.coco_map import evaluate_map
from xprune.importance.scores import score_layers
from xprune.prune.budget import budget_plan, held_out_split, scored_images
from xprune.prune.budget_search import search_rate
from xprune.prune.plan import float64_probe, outputs_depend_on_input, plan_pruning

SIZE = 64  # the input size of the `yolo` fixture (conftest.py)


def zeroed_count(det) -> int:
    return sum(int(not c.weight.detach().any()) for c in det.conv_layers().values())


def fake_map(table: dict[int, float], slope: float = 0.01, base: float = 0.5):
    """mAP = base - slope x k, except where `table` says otherwise; k read off the detector itself."""
    calls = []

    def evaluate(det) -> float:
        k = zeroed_count(det)
        calls.append(k)
        return table.get(k, base - slope * k)
    evaluate.calls = calls
    return evaluate


def _weights(det) -> float:
    return float(sum(c.weight.detach().abs().sum() for c in det.conv_layers().values()))


def test_monotone_drop_finds_the_largest_k(yolo, l1):
    before = _weights(yolo)
    evaluate = fake_map({})
    report = search_rate(yolo, l1, evaluate, max_map_drop=0.1, policy="all")
    n = report.candidates
    assert n == len(yolo.conv_layers()) and report.max_k == n - 1
    assert report.chosen["k"] == 10 and report.rate == pytest.approx(10 / n)
    assert report.chosen["drop"] == pytest.approx(0.1)
    assert report.monotone and report.search == "bisection+lookahead"
    assert report.plan.layers == \
        [e["layer"] for e in sorted(l1["layers"], key=lambda e: (e["score"], e["layer"]))][:10]
    # every evaluation is reported, in order, baseline first; each k measured once
    ks = [r["k"] for r in report.evaluations]
    assert ks[0] == 0 and evaluate.calls == ks and len(set(ks)) == len(ks)
    for r in report.evaluations:
        assert r["map"] == pytest.approx(0.5 - 0.01 * r["k"])
        assert r["drop"] == pytest.approx(report.baseline_map - r["map"])
        assert r["within"] == (r["k"] <= 10)
    assert len(ks) <= 1 + math.ceil(math.log2(n)) + 3  # bisection + lookahead
    assert _weights(yolo) == before  # every zeroing undone


def test_a_dip_just_above_the_bisection_answer_is_found_by_the_lookahead(yolo, l1):
    # drops 0.01 k, budget 0.105: k <= 10 within, 11 and 12 over, 13 back within (a non-monotone dip), 14.. over.
    # Bisection over 0..63 measures 32, 16, 8, 12, 10, 11 and stops at 10; the lookahead goes on to 13.
    report = search_rate(yolo, l1, fake_map({13: 0.5 - 0.10}), max_map_drop=0.105, policy="all")
    assert report.candidates == 64
    assert [r["k"] for r in report.evaluations][:7] == [0, 32, 16, 8, 12, 10, 11]
    assert report.chosen["k"] == 13 and not report.monotone
    measured = {r["k"]: r for r in report.evaluations}
    assert measured[13]["within"] is True and measured[12]["within"] is False
    assert all(not measured[k]["within"] for k in (14, 15)) and 17 not in measured
    # a lookahead of two stops after 11 and 12 are over: the bisection's answer stands
    short = search_rate(yolo, l1, fake_map({13: 0.5 - 0.10}), max_map_drop=0.105, policy="all", lookahead=2)
    assert short.chosen["k"] == 10 and 13 not in {r["k"] for r in short.evaluations}


def test_nothing_within_budget_and_improvements(yolo, l1):
    none = search_rate(yolo, l1, fake_map({}), max_map_drop=0.0, policy="all")
    assert none.chosen["k"] == 0 and none.rate is None and none.plan is None
    # pruning that never hurts: the largest k allowed (max_rate bounds it)
    flat = search_rate(yolo, l1, fake_map({}, slope=0.0), max_map_drop=0.0, policy="all", max_rate=0.25)
    assert flat.max_k == round(0.25 * flat.candidates) == flat.chosen["k"]


def test_grid_measures_exactly_the_given_rates(yolo, l1):
    evaluate = fake_map({})
    report = search_rate(yolo, l1, evaluate, max_map_drop=0.1, policy="all", rates=[0.2, 0.05, 0.1, 0.1])
    n = report.candidates
    wanted = sorted({round(r * n) for r in (0.05, 0.1, 0.2)})
    assert [r["k"] for r in report.evaluations] == [0, *wanted] and report.search == "grid"
    assert report.rate == 0.1 and report.chosen["k"] == round(0.1 * n)
    assert len(report.plan.selected) == round(0.1 * n)
    with pytest.raises(XpruneError, match="either rates"):
        search_rate(yolo, l1, evaluate, 0.1, policy="all", rates=[0.1], max_rate=0.5)


@pytest.mark.parametrize("bad", [-0.01, 1.0, 1.5, float("nan"), True, "0.1"])
def test_bad_max_map_drop(yolo, l1, bad):
    with pytest.raises(XpruneError, match="max-map-drop must be in"):
        search_rate(yolo, l1, fake_map({}), max_map_drop=bad)


def test_bad_evaluate_and_policy(yolo, l1):
    with pytest.raises(XpruneError, match="non-finite"):
        search_rate(yolo, l1, lambda d: float("nan"), 0.1)
    with pytest.raises(XpruneError, match="mAP number"):
        search_rate(yolo, l1, lambda d: {"map": 0.5}, 0.1)
    with pytest.raises(XpruneError, match="unknown candidate policy"):
        search_rate(yolo, l1, fake_map({}), 0.1, policy="some")


def test_held_out_images_are_the_first_val_images_never_train_ones(synth_data):
    val = CocoDetectionSet.from_folder(synth_data, "val", SIZE)
    held = held_out_split(synth_data, SIZE, 3)
    assert held.split == "val" and held.data.image_ids == val.image_ids[:3] and held.total == 8
    assert held_out_split(synth_data, SIZE, 100).data.image_ids == val.image_ids[:4]  # half of val at most
    assert shared_images(held.data.image_paths(), synth_data, "train") == []
    assert held.record() == {"split": "val", "first": 0, "images": 3, "of": 8, "image_ids": val.image_ids[:3],
                             "annotations": held.record()["annotations"]}
    assert held.record()["annotations"].endswith("instances_val.json")
    assert held.describe() == "val images 1-3 of 8 (in image-id order)"
    with pytest.raises(XpruneError, match="not on 'train'"):
        held_out_split(synth_data, SIZE, 3, split="train")


def test_held_out_split_is_disjoint_from_the_scoring_images(synth_data, tmp_path):
    calib = calibration_set(synth_data, SIZE, 4)
    scores = {"calibration": {"annotations": str(calib.annotations), "images": 4}}
    assert scored_images(scores, synth_data, "calib") == 4 and scored_images(scores, synth_data, "val") == 0
    held = held_out_split(synth_data, SIZE, 100, skip=4, split="calib")  # a calib split disjoint from train
    assert len(held.data) == 4 and held.first == 4 and not set(held.data.image_ids) & set(calib.image_ids)
    assert scored_images({"calibration": None}, synth_data, "calib") == 0
    assert scored_images({"calibration": {"annotations": "/elsewhere.json", "images": 4}}, synth_data, "calib") == 0
    with pytest.raises(XpruneError, match="were used for scoring"):
        held_out_split(synth_data, SIZE, 4, skip=8, split="calib")
    with pytest.raises(XpruneError, match="at least 2 'val' images after the 7 scored on"):
        held_out_split(synth_data, SIZE, 4, skip=7)
    (tmp_path / "annotations").mkdir()
    with pytest.raises(XpruneError, match="'val' split"):
        held_out_split(tmp_path, SIZE, 4)


def test_a_calib_split_drawn_from_train_is_refused(synth_data, tmp_path):
    """The trees set's calib: train tiles written again. Measuring the budget there is refused in one line; the
    default (val) works on the same dataset."""
    train = [ImageRecord(p.name, Image.open(p).convert("RGB"), [(0, [2.0, 2.0, 30.0, 30.0])])
             for p in CocoDetectionSet.from_folder(synth_data, "train", SIZE).image_paths()]
    val = [ImageRecord(f"v{i}.jpg", Image.new("RGB", (32, 32), (40 * i, 0, 0)), [(0, [2.0, 2.0, 30.0, 30.0])])
           for i in range(4)]
    writer = DatasetWriter(tmp_path / "trees", ["circle"], "calib drawn from train", "t.json")
    for split, records in (("train", train), ("val", val), ("calib", calib_draw(train, 6))):
        writer.write_split(split, records)
    root = writer.finish({}, splits=("train", "val", "calib"))
    with pytest.raises(XpruneError, match=r"6 of the 6 'calib' images .* are train images too"):
        held_out_split(root, SIZE, 6, split="calib")
    assert len(held_out_split(root, SIZE, 6).data) == 2


def test_real_search_safe_policy(yolo, synth_data):
    """attr scores on the first 4 calib images, mAP on the first 4 val images; random init: mAP is ~0, so this checks the
    plumbing (safe plans, zeroing, restoring, the final plan) rather than the choice."""
    scores = score_layers(yolo, "attr", calibration_set(synth_data, SIZE, 4), batch_size=4)
    held = held_out_split(synth_data, SIZE, 4, skip=scored_images(scores, synth_data, "val")).data
    before = _weights(yolo)
    lines = []
    report = search_rate(yolo, scores, lambda d: evaluate_map(d, held, batch_size=4)["map"], max_map_drop=0.01,
                         policy="safe", max_rate=0.2, log=lines.append)
    assert _weights(yolo) == before and lines and len(lines) == len(report.evaluations) + 1
    k = report.chosen["k"]
    assert all(r["feasible"] for r in report.evaluations)
    assert k > 0, "a random-init model has nothing to lose: some layers must fit the budget"
    plan = report.plan
    assert len(plan.selected) == k and plan.policy == "safe"
    assert plan == plan_pruning(yolo, scores, report.rate, "safe")
    assert not set(plan.layers) & set(yolo.predictor_layers)
    probe = float64_probe(yolo)
    convs = probe.conv_layers()
    with torch.no_grad():
        for name in plan.layers:
            convs[name].weight.zero_()
    assert outputs_depend_on_input(probe)


def test_budget_plan_carries_its_search_and_writes_it(yolo, l1, synth_data, tmp_path, monkeypatch):
    path = tmp_path / "search.json"
    plan = budget_plan(yolo, l1, synth_data, 0.5, "all", held_out_images=4, max_rate=0.1, search_report=path)
    written = json.loads(path.read_text())
    assert plan.budget == {k: v for k, v in written.items() if k != "plan"}
    assert written["plan"] == dataclasses.replace(plan, budget=None).to_json()
    assert len(plan.selected) == written["chosen"]["k"] and plan.rate == written["rate"]
    val = CocoDetectionSet.from_folder(synth_data, "val", SIZE)
    assert plan.budget["held_out"]["split"] == "val" and plan.budget["held_out"]["image_ids"] == val.image_ids[:4]
    with pytest.raises(XpruneError, match="needs --data"):
        budget_plan(yolo, l1, None, 0.1)
    with pytest.raises(XpruneError, match="max-map-drop must be in"):
        budget_plan(yolo, l1, synth_data, 1.5)
    # nothing within budget: the search is still written, then a one-line error
    path.unlink()
    monkeypatch.setattr("xprune.prune.budget.evaluate_map", lambda det, held: {"map": fake_map({})(det)})
    with pytest.raises(XpruneError, match=f"no rate keeps the mAP drop within 0.0 .*{path.name}"):
        budget_plan(yolo, l1, synth_data, 0.0, "all", held_out_images=4, max_rate=0.1, search_report=path)
    assert json.loads(path.read_text())["plan"] is None
