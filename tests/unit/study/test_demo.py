"""`xprune demo` end to end on the committed reference models, with small settings: the study's demo preset."""

import json

import pytest

from xprune.bench.results import read_results
from xprune.cli import main
from xprune.reference import reference_models
from xprune.study.settings import DEMO_MODELS


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, synth_data):
    out = tmp_path_factory.mktemp("demo")
    code = main(["demo", "--out", str(out), "--data", str(synth_data), "--val-images", "8", "--calib-images", "8",
                 "--latency-runs", "3"])
    assert code == 0
    return out, json.loads((out / "study.json").read_text())


def test_reference_models_are_committed():
    refs = reference_models()
    assert "yolov8n" in refs and refs["yolov8n"]["val_map"] >= 0.40
    assert any(not name.startswith("yolov8") for name in refs), "one torchvision family is trained too"


@pytest.mark.slow
def test_demo_rows_cover_every_model_method_and_backend(demo_run):
    out, study = demo_run
    rows = study["rows"]
    required = {"model", "method", "rate", "map", "map50", "params", "macs", "effective_macs", "median_ms",
                "paired_ratio", "backend", "variant"}
    assert all(required <= r.keys() for r in rows)
    demo_models = set(DEMO_MODELS) & set(reference_models())
    assert {m["model"] for m in study["models"]} == demo_models and "yolov8n" in demo_models
    for model in demo_models:
        mine = [r for r in rows if r["model"] == model]
        assert {(r["backend"], r["method"], r["variant"]) for r in mine} == {
            ("torch", "baseline", "baseline"), ("torch", "l1", "zeroed"), ("torch", "attr", "zeroed"),
            ("onnxruntime", "baseline", "baseline"), ("onnxruntime", "l1", "folded"),
            ("onnxruntime", "attr", "folded")}
        assert all(r["rate"] == 0.05 for r in mine if r["method"] != "baseline")
        by = {(r["backend"], r["method"]): r for r in mine}
        for (backend, method), r in by.items():  # every mAP has its interval; every ΔmAP its paired one
            assert r["map_low"] <= r["map"] <= r["map_high"] and r["val_images"] == 8
            if method != "baseline":
                assert r["dmap_low"] <= r["dmap"] <= r["dmap_high"]
                assert r["dmap"] == pytest.approx(r["map"] - by[(backend, "baseline")]["map"], abs=1e-12)
        for method in ("l1", "attr"):
            folded = by[("onnxruntime", method)]
            assert folded["map_source"] == "onnxruntime"
            assert folded["map"] == next(v for v in next(m for m in study["models"] if m["model"] == model)
                                         ["variants"] if v["id"] == folded["variant_id"])["onnx_map"]
            assert folded["zeroed_onnx_fps"] > 0 and folded["zeroed_onnx_paired_ratio"] > 0  # the zeroed-only ONNX
            assert abs(folded["map"] - folded["zeroed_onnx_map"]) <= 1e-3, "folding must not change what it detects"
            assert folded["effective_macs"] < folded["macs"]
        # every row's variant was timed with all its samples kept
        bench_files = next(m for m in study["models"] if m["model"] == model)["bench_files"]
        assert set(bench_files) == {"torch", "onnxruntime"}
        for backend, rel in bench_files.items():
            bench = read_results(out / rel)
            assert all(len(r["samples_ms"]) >= 3 for r in bench["rows"])
            timed = {r["variant_id"] for r in bench["rows"]}
            assert {r["variant_id"] for r in mine if r["backend"] == backend} | {"baseline-copy"} <= timed
            if backend == "onnxruntime":
                assert {f"{r['variant_id']}-zeroed" for r in mine if r["method"] != "baseline"} <= timed
    assert (out / "report.md").is_file()


@pytest.mark.slow
def test_demo_writes_scores_plans_and_agreement(demo_run):
    out, study = demo_run
    for m in study["models"]:
        assert (out / "scores" / f"{m['model']}-attr.json").is_file()
        assert (out / "scores" / f"{m['model']}-l1.json").is_file()
        assert m["plans"]["l1"]["0.05"]["layers"] and m["plans"]["attr"]["0.05"]["layers"]
        assert 0.0 <= m["agreement"]["l1-vs-attr"]["per_rate"]["0.05"]["overlap"] <= 1.0


def test_demo_unknown_reference_model(tmp_path, capsys, synth_data):
    code = main(["demo", "--out", str(tmp_path / "d"), "--data", str(synth_data), "--models", "ssd-nope"])
    assert code == 2
    assert "no reference checkpoint for ssd-nope" in capsys.readouterr().err
    assert not (tmp_path / "d" / "study.json").exists()
