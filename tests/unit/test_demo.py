"""`xprune demo` end to end on the committed reference models, with small settings."""

import json

import pytest

from xprune.cli import main
from xprune.reference import reference_models


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, synth_data):
    out = tmp_path_factory.mktemp("demo")
    code = main(["demo", "--out", str(out), "--data", str(synth_data), "--val-images", "8", "--calib-images", "8",
                 "--latency-runs", "3"])
    assert code == 0
    return out


def test_reference_models_are_committed():
    refs = reference_models()
    assert "yolov8n" in refs and refs["yolov8n"]["val_map"] >= 0.40
    assert any(not name.startswith("yolov8") for name in refs), "one torchvision family is trained too"


def test_demo_rows_cover_every_model_method_and_backend(demo_run):
    rows = json.loads((demo_run / "results.json").read_text())
    required = {"model", "method", "rate", "map", "map50", "params", "macs", "latency_ms_median", "backend"}
    assert all(required <= r.keys() for r in rows)
    for model in reference_models():
        mine = [r for r in rows if r["model"] == model]
        assert {(r["backend"], r["method"], r["variant"]) for r in mine} == {
            ("torch", "baseline", "baseline"), ("torch", "l1", "zeroed"), ("torch", "attr", "zeroed"),
            ("onnxruntime", "baseline", "baseline"), ("onnxruntime", "l1", "zeroed"), ("onnxruntime", "l1", "folded"),
            ("onnxruntime", "attr", "zeroed"), ("onnxruntime", "attr", "folded")}
        by = {(r["backend"], r["method"], r["variant"]): r for r in mine}
        for method in ("l1", "attr"):
            folded, zeroed = by[("onnxruntime", method, "folded")], by[("onnxruntime", method, "zeroed")]
            assert abs(folded["map"] - zeroed["map"]) <= 1e-3, "folding must not change what the model detects"
            assert folded["macs"] < zeroed["macs"]
        assert all(len(r["latency"]["samples_ms"]) >= 3 for r in mine if r["backend"] == "torch")
        bench = json.loads((demo_run / f"bench-{model}-onnxruntime.json").read_text())
        assert all(len(r["samples_ms"]) >= 3 for r in bench["rows"])


def test_demo_writes_scores_plans_and_overlap(demo_run):
    overlap = json.loads((demo_run / "overlap.json").read_text())
    for model in reference_models():
        assert (demo_run / f"scores-{model}-attr.json").is_file()
        assert (demo_run / f"plan-{model}-l1.json").is_file()
        assert 0.0 <= overlap[model]["overlap"] <= 1.0


def test_demo_unknown_reference_model(tmp_path, capsys, synth_data):
    code = main(["demo", "--out", str(tmp_path / "d"), "--data", str(synth_data), "--models", "ssd-nope"])
    assert code == 2
    assert "no reference checkpoint for ssd-nope" in capsys.readouterr().err
    assert not (tmp_path / "d" / "results.json").exists()
