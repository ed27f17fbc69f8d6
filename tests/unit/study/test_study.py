"""The study end to end at toy size: random-init YOLOv8n at 64 px (speed-only rows), 2 rates, 3 timed runs ->
study.json, raw bench docs, report.md and PNGs; the report's numbers are the JSON's. Plus the pieces: prefix plans
equal independent plans, the Ultralytics output adapter, and the report's accuracy columns."""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xprune.bench.latency import LatencyProtocol
from xprune.bench.results import read_results
from xprune.study.report import DASH, load_study, render
from xprune.study.settings import StudySettings
from xprune.bench.paired import paired_ratios, ratio_summary
from xprune.study.stats import pct_change, spearman
from xprune.study.sweep import run_study

ROOT = Path(__file__).resolve().parents[3]
TINY = LatencyProtocol(warmup_runs=1, warmup_s=0.0, runs=3, min_s=0.0)


@pytest.fixture(scope="module")
def study(tmp_path_factory, synth_data):
    out = tmp_path_factory.mktemp("study")
    settings = StudySettings(out=out, models=["yolov8n"], criteria=("l1", "attr"), rates=(0.02, 0.05),
                             data=synth_data, calib_images=4, batch_size=4, use_reference=False,
                             speed_input_size=64, latency=TINY, progress=False, command="pytest tiny study",
                             backends=("torch", "onnxruntime", "openvino", "tensorrt"))
    lines: list[str] = []
    path = run_study(settings, log=lines.append)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import reproduce
    finally:
        sys.path.pop(0)
    assert reproduce.main(["--render-only", "--out", str(out)], log=lines.append) == 0
    return path, lines


def _table_rows(md: str, title_start: str) -> list[list[str]]:
    """Cells of the markdown table under the heading that starts with `title_start`."""
    section = md.split(f"## {title_start}", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in r.strip("|").split("|")] for r in rows[1:]]  # without the header


def _num(cell: str) -> float | None:
    if cell == DASH:
        return None
    return float(cell.replace(",", "").replace("%", "").replace("+", "").replace(" †", ""))


@pytest.mark.slow
def test_study_writes_json_bench_docs_report_and_figures(study):
    path, lines = study
    doc = load_study(path)
    out = path.parent
    assert doc["complete"] and doc["command"] == "pytest tiny study"
    assert doc["environment"]["cpu_count"] and doc["environment"]["libraries"]["onnxruntime"]
    try:
        import tensorrt  # noqa: F401
        has_trt = hasattr(tensorrt, "Builder")
    except ImportError:
        has_trt = False
    if not has_trt:
        assert doc["tensorrt"] == ("unavailable (TensorRT is not installed; install xprune[trt] on a machine with an "
                                   "NVIDIA GPU)")
    assert any("yolov8n" in line for line in lines)  # progress lines
    # every backend that ran kept every sample
    for backend, rel in doc["models"][0]["bench_files"].items():
        bench = read_results(out / rel)
        assert bench["protocol"]["interleaved"]
        assert all(len(r["samples_ms"]) >= 3 for r in bench["rows"])
    ran = ("torch", "onnxruntime", "openvino")
    assert set(doc["models"][0]["bench_files"]) == set(ran)
    # one row per (backend, method, rate), baselines included
    keys = {(r["backend"], r["method"], r["rate"]) for r in doc["rows"]}
    assert keys == {(b, m, r) for b in ran for m in ("l1", "attr") for r in (0.02, 0.05)} | {
        (b, "baseline", 0.0) for b in ran}
    for name in ("report.md", "importance-yolov8n.png", "rate-sweep-fps.png", "object-sizes.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "scores" / "yolov8n-attr.json").is_file()


@pytest.mark.slow
def test_every_row_records_threads_runner_and_timing_order(study):
    path, _ = study
    doc = load_study(path)
    m = doc["models"][0]
    assert doc["threads"]["torch"] == torch.get_num_threads()  # the run put torch's count back as it found it
    for r in doc["rows"]:
        assert r["threads"] == r["runtime"]["threads"] and r["threads"] >= 1
        assert r["runtime"]["backend"] == r["backend"] and r["order_seed"] == 0
    assert all(r["threads"] == doc["threads"]["torch"] for r in doc["rows"] if r["backend"] == "torch")
    for backend, rel in m["bench_files"].items():
        bench = read_results(path.parent / rel)
        order = m["timing_order"][backend]
        assert bench["protocol"]["order_seed"] == order["seed"] == 0
        assert order["round_orders"] == bench["protocol"]["round_orders"]
        assert len(order["round_orders"]) == len(bench["rows"][0]["samples_ms"])
        assert order["targets"] == [r["variant_id"] for r in bench["rows"]]
    assert set(m["zero_scores"]) == {"l1", "attr"}
    stats = doc["dataset_stats"]
    assert abs(sum(stats["fractions"].values()) - 1.0) < 1e-9 and stats["coco_fractions"]["small"] == 0.41
    md = (path.parent / "report.md").read_text()
    assert "## Dataset: object sizes" in md and "scores 0 or < 1e-9 × median for" in md


@pytest.mark.slow
def test_speed_only_model_is_marked(study):
    path, _ = study
    doc = load_study(path)
    m = doc["models"][0]
    assert m["accuracy"] is False and m["weights"]["source"] == "random-init"
    assert all(r["accuracy"] is False and r["map"] is None and r["dmap_pct"] is None for r in doc["rows"])
    md = (path.parent / "report.md").read_text()
    for row in _table_rows(md, "Table 2 — ONNX Runtime"):
        assert row[0] == "yolov8n (speed only)" and row[4] == DASH
    # no accuracy figures for a study without accuracy rows
    assert not (path.parent / "rate-sweep-map.png").exists()


@pytest.mark.slow
def test_rates_are_prefixes_of_one_ranking_and_fold_shrinks_macs(study):
    doc = load_study(study[0])
    m = doc["models"][0]
    for method, plans in m["plans"].items():
        small, large = plans["0.02"]["layers"], plans["0.05"]["layers"]
        assert large[:len(small)] == small and len(large) > len(small)
    base = next(v for v in m["variants"] if v["id"] == "baseline")
    for v in m["variants"]:
        assert v["onnx_max_rel_error_vs_torch"] < 1e-4
        assert v["params"] == base["params"] and v["macs"] == base["macs"]  # zeroing changes no dense count
        if v["id"] != "baseline":
            assert v["effective_macs"] < base["effective_macs"]


@pytest.mark.slow
def test_report_numbers_are_the_json_numbers(study):
    path, _ = study
    doc = load_study(path)
    md = (path.parent / "report.md").read_text()
    assert doc["environment"]["cpu"] in md and "`pytest tiny study`" in md
    for backend, title in (("torch", "Table 2 — PyTorch"), ("onnxruntime", "Table 2 — ONNX Runtime")):
        table = _table_rows(md, title)
        rows = [r for r in doc["rows"] if r["backend"] == backend]
        assert len(table) == len(rows)
        for cells in table:
            method = cells[1].replace(" †", "")
            rate = 0.0 if cells[2] == DASH else float(cells[2].rstrip("%")) / 100
            r = next(r for r in rows if r["method"] == method and abs(r["rate"] - rate) < 1e-9)
            assert _num(cells[10]) == pytest.approx(r["fps"], abs=0.005)
            if r["dfps_pct"] is None:
                assert cells[11] == DASH
            else:
                assert _num(cells[11]) == pytest.approx(r["dfps_pct"], abs=0.0501)
            assert _num(cells[13]) == r["params"]
            assert _num(cells[14]) == pytest.approx(r["macs"] / 1e9, abs=5e-4)
            assert _num(cells[15]) == pytest.approx(r["effective_macs"] / 1e9, abs=5e-4)
            assert int(cells[16]) == r["threads"]
    # a peer section per runtime Ultralytics exports for, each from the same run as xprune's variants there
    assert set(doc["peers"]) == {"onnxruntime", "openvino"}
    for backend, title, fmt in (("onnxruntime", "ONNX Runtime", "onnx"), ("openvino", "OpenVINO", "openvino")):
        peer = doc["peers"][backend]
        assert peer["available"] and peer["export"]["exporter"] == "ultralytics" and peer["export"]["format"] == fmt
        assert peer["decoded_max_rel_error_vs_torch"] < 1e-4
        assert f"{peer['fps']:.2f} FPS" in md
        bench = read_results(path.parent / doc["models"][0]["bench_files"][backend])
        assert any(r.get("variant") == "peer-ultralytics" for r in bench["rows"])
        assert len(_table_rows(md, f"Peer on {title}")) == len(peer["comparisons"]) == 4


@pytest.mark.slow
def test_report_accuracy_columns_come_from_the_json(study):
    """The same renderer with accuracy rows: made-up mAPs go into the JSON and come out in the tables."""
    doc = copy.deepcopy(load_study(study[0]))
    doc["models"][0]["accuracy"] = True
    for i, r in enumerate(doc["rows"]):
        base = r["method"] == "baseline"
        r.update(accuracy=True, map=0.5 - 0.01 * i, map50=0.7 - 0.01 * i, map_source="torch",
                 map_low=0.45 - 0.01 * i, map_high=0.55 - 0.01 * i,
                 dmap=None if base else -0.01 * i, dmap_low=None if base else -0.02 * i,
                 dmap_high=None if base else 0.001 * i, dmap_pct=None if base else -1.25 * i)
    md = render(doc, {})
    table = _table_rows(md, "Table 2 — PyTorch")
    for cells, r in zip(table, [r for r in doc["rows"] if r["backend"] == "torch"]):
        assert cells[0] == "yolov8n"
        assert _num(cells[4]) == pytest.approx(r["map"], abs=5e-5)
        assert [_num(c) for c in cells[5].split(" – ")] == pytest.approx([r["map_low"], r["map_high"]], abs=5e-5)
        assert _num(cells[6]) == pytest.approx(r["map50"], abs=5e-5)
        if r["dmap"] is None:
            assert cells[7] == cells[8] == cells[9] == DASH
        else:
            assert float(cells[7]) == pytest.approx(r["dmap"], abs=5e-5)
            low, high = (float(c) for c in cells[8].split(" – "))
            assert (low, high) == pytest.approx((r["dmap_low"], r["dmap_high"]), abs=5e-5)
            assert _num(cells[9]) == pytest.approx(r["dmap_pct"], abs=0.0501)


@pytest.mark.slow  # the full suite runs it; the fast loop stays under two minutes
def test_prefix_plans_equal_independent_plans():
    from xprune.importance.scores import score_layers
    from xprune.models import build_detector
    from xprune.prune.plan import Infeasible, plan_pruning, plans_for_rates

    det = build_detector("yolov8n", "none", num_classes=6, input_size=64)
    scores = score_layers(det, "l1")
    plans = plans_for_rates(det, scores, (0.05, 0.10), "safe")
    assert plans[0.05] == plan_pruning(det, scores, 0.05, "safe")
    assert plans[0.10] == plan_pruning(det, scores, 0.10, "safe")
    assert isinstance(plans_for_rates(det, scores, (0.99,), "safe")[0.99], Infeasible)


def test_ultralytics_output_adapter():
    from xprune.study.peer import decode_ultralytics
    y = np.zeros((1, 4 + 3, 2), np.float32)
    y[0, :4, 0] = [10, 20, 4, 6]  # cx, cy, w, h
    y[0, 4:, 0] = [0.1, 0.9, 0.2]
    boxes, scores = decode_ultralytics(y)
    assert boxes.shape == (1, 2, 4) and scores.shape == (1, 2, 3)
    assert torch.allclose(boxes[0, 0], torch.tensor([8.0, 17.0, 12.0, 23.0]))
    assert torch.allclose(scores[0, 0], torch.tensor([0.1, 0.9, 0.2]))


def test_small_helpers():
    assert pct_change(0.9, 1.0) == pytest.approx(-10.0) and pct_change(1.0, 0.0) is None
    assert ratio_summary(paired_ratios([2.0, 4.0, 6.0], [2.0, 2.0, 2.0]))["median"] == 2.0
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_settings_are_checked(tmp_path):
    from xprune.errors import XpruneError
    with pytest.raises(XpruneError, match="unknown criterion"):
        StudySettings(out=tmp_path, criteria=("nope",)).validate()
    with pytest.raises(XpruneError, match="rate"):
        StudySettings(out=tmp_path, rates=(1.5,)).validate()
    with pytest.raises(XpruneError, match="unknown model"):
        StudySettings(out=tmp_path, models=["resnet"]).validate()


@pytest.mark.slow
def test_study_json_is_plain_json(study):
    text = study[0].read_text()
    assert not re.search(r"\bNaN\b|\bInfinity\b", text)
    json.loads(text)


@pytest.mark.parametrize("given, message", [(["yolov8n"], "MODEL=CHECKPOINT"), (["yolov8n=missing.pt"], "not found"),
                                            (["=x.pt"], "MODEL=CHECKPOINT")])
def test_study_weights_option_is_checked_in_one_line(given, message, tmp_path, capsys):
    from cli_helpers import one_line_error, run_cli
    code, _, err = run_cli(["study", "--models", "yolov8n", "--weights", *given, "--out", str(tmp_path)], capsys)
    assert code == 2 and message in one_line_error(err)
    assert not any(tmp_path.iterdir())


def test_study_weights_option_names_the_checkpoint_per_model(tmp_path):
    from xprune.study.options import parse_weights
    ckpt = tmp_path / "mine.pt"
    ckpt.write_bytes(b"x")
    assert parse_weights([f"yolov8n={ckpt}"]) == {"yolov8n": str(ckpt)}
    assert parse_weights(None) is None


def test_train_missing_says_how_long_then_trains_only_what_is_missing(tmp_path, monkeypatch):
    import xprune.reference as reference
    import xprune.train.reference as train_reference
    from xprune.study.options import train_missing

    trained: list[str] = []
    monkeypatch.setattr(reference, "reference_models", lambda dataset="synth": {"yolov8n": {}})
    monkeypatch.setattr(train_reference, "estimate_seconds", lambda model, data, epochs: 600.0)
    monkeypatch.setattr(train_reference, "train_reference", lambda model, data, log=print: trained.append(model))
    lines: list[str] = []
    done = train_missing(["yolov8n", "ssd-mobilenetv2", "ssd-shufflenetv2", "yolov8s"], tmp_path, lines.append)
    assert done == trained == ["ssd-mobilenetv2", "ssd-shufflenetv2"]  # yolov8s has no reference training
    assert len(lines) == 2 and all("about 10 min" in line and "resumes" in line for line in lines)
    assert train_missing(["yolov8n"], tmp_path, lines.append) == [] and "every model" in lines[-1]
