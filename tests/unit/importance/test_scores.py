"""Importance scores: attr is deterministic, differs from l1, and l1 is the sum of |W|."""

import pytest

from xprune.data.coco import calibration_set
from xprune.errors import XpruneError
from xprune.importance.scores import read_scores, score_layers, write_scores
from xprune.models import build_detector


@pytest.fixture(scope="module")
def yolo():
    return build_detector("yolov8n", "none", num_classes=6, input_size=128)


@pytest.mark.slow
def test_attr_is_deterministic_and_leaves_no_hooks(yolo, synth_data):
    calib = calibration_set(synth_data, 128, 8)
    a = score_layers(yolo, "attr", calib, batch_size=4)
    b = score_layers(yolo, "attr", calib, batch_size=4)
    assert [e["score"] for e in a["layers"]] == [e["score"] for e in b["layers"]]
    assert all(e["score"] >= 0 for e in a["layers"])
    assert any(e["score"] > 0 for e in a["layers"])
    assert all(not m._forward_hooks for m in yolo.model.modules())
    assert a["calibration"]["images"] == 8 and a["calibration"]["batches"] == 2


def test_l1_is_sum_of_abs_weights_and_ranks_differ_from_attr(yolo, synth_data):
    l1 = score_layers(yolo, "l1")
    convs = yolo.conv_layers()
    for e in l1["layers"]:
        assert e["score"] == pytest.approx(float(convs[e["layer"]].weight.detach().abs().sum()), rel=1e-6)
    attr = score_layers(yolo, "attr", calibration_set(synth_data, 128, 8), batch_size=4)
    rank = lambda doc: [e["layer"] for e in sorted(doc["layers"], key=lambda e: e["rank"])]  # noqa: E731
    assert rank(l1) != rank(attr)
    assert sorted(e["rank"] for e in l1["layers"]) == list(range(1, len(convs) + 1))
    assert sum(e["macs"] for e in l1["layers"]) > 0


def test_attr_needs_data_and_unknown_method(yolo):
    with pytest.raises(XpruneError, match="needs calibration data"):
        score_layers(yolo, "attr", None)
    with pytest.raises(XpruneError, match="unknown scoring method"):
        score_layers(yolo, "shapley")


def test_scores_file_roundtrip_and_validation(yolo, tmp_path):
    doc = score_layers(yolo, "l1")
    write_scores(tmp_path / "s.json", doc)
    assert read_scores(tmp_path / "s.json") == doc
    (tmp_path / "bad.json").write_text('{"layers": 3}')
    with pytest.raises(XpruneError, match="not an xprune scores file"):
        read_scores(tmp_path / "bad.json")
