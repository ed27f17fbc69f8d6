"""`xprune bench`, `gate` and `compare` from the command line: results files with raw samples, exit codes, errors;
and the runner contract and backend registry they stand on."""

import importlib
import json

import numpy as np
import pytest
import torch

from cli_helpers import one_line_error, run_cli
from xprune.cli import main
from xprune.errors import XpruneError
from xprune.evaluate.image_matches import ImageMatches
from xprune.models import build_detector, save_checkpoint
from xprune.runtime.onnxruntime.runner import OnnxRuntimeRunner
from xprune.runtime.registry import BACKENDS, backend_for


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random-init yolov8n at 64 px as checkpoint and ONNX file, with the same 6 classes as the synth fixture."""
    d = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    save_checkpoint(build_detector("yolov8n", "none", num_classes=6, input_size=64), d / "y.pt")
    assert main(["export", "--model", "yolov8n", "--weights", str(d / "y.pt"), "--out", str(d / "y.onnx")]) == 0
    return d


FAST = ["--runs", "5", "--warmup-runs", "1", "--min-seconds", "0"]


def test_bench_writes_raw_samples_environment_and_map(tiny, synth_data, tmp_path, capsys):
    out = tmp_path / "r.json"
    code, stdout, _ = run_cli(["bench", str(tiny / "y.onnx"), str(tiny / "y.pt"), "--model", "yolov8n", "--interleave",
                            "--data", str(synth_data), "--val-images", "4", "--out", str(out), *FAST], capsys)
    assert code == 0 and "onnxruntime" in stdout
    doc = json.loads(out.read_text())
    assert doc["format"] == "xprune-bench-1" and doc["environment"]["libraries"]["onnxruntime"]
    assert {r["engine"] for r in doc["rows"]} == {"onnxruntime", "torch"}
    for r in doc["rows"]:
        assert len(r["samples_ms"]) >= 5 and r["median_ms"] > 0 and r["val_images"] == 4
        assert 0.0 <= r["map"] <= 1.0
        # the per-image evaluation the accuracy gate bootstraps over: the same mAP, on the same images
        matches = ImageMatches.from_json(r["map_matches"])
        assert matches.map() == r["map"] and len(matches.image_ids) == 4
        backend = r["backend"]
        assert set(backend) == {"backend", "version", "device", "precision", "threads"}
        assert (backend["backend"], backend["device"], backend["precision"]) == (r["engine"], "cpu", "fp32")
        assert backend["version"].startswith(doc["environment"]["libraries"][r["engine"]])  # torch adds "+cu..."
        assert isinstance(backend["threads"], int) and backend["threads"] >= 1
        assert r["timing"] == "host-wall-clock"


def test_bench_reference_workload_then_gate_passes_on_itself(tiny, tmp_path, capsys):
    a = tmp_path / "a.json"
    assert main(["bench", str(tiny / "y.onnx"), "--reference-workload", "--out", str(a), *FAST]) == 0
    doc = json.loads(a.read_text())
    assert len(doc["rows"][0]["reference_samples_ms"]) == len(doc["rows"][0]["samples_ms"])
    assert doc["protocol"]["reference_workload"]["name"]
    code, _, _ = run_cli(["gate", "--baseline", str(a), "--current", str(a), "--verdict", str(tmp_path / "v.json")], capsys)
    verdict = json.loads((tmp_path / "v.json").read_text())
    assert code == 0 and verdict["decision"] == "pass" and verdict["rows"][0]["ratio"] == 1.0


def test_gate_flags_a_slower_current(tiny, tmp_path, capsys):
    a = tmp_path / "a.json"
    assert main(["bench", str(tiny / "y.onnx"), "--out", str(a), *FAST]) == 0
    doc = json.loads(a.read_text())
    # Quiet synthetic samples: the decision, not this machine's noise, is under test here.
    doc["rows"][0]["samples_ms"] = [10.0 + 0.1 * (i % 5) for i in range(20)]
    a.write_text(json.dumps(doc))
    doc["rows"][0]["samples_ms"] = [15.0 + 0.1 * (i % 5) for i in range(20)]
    (tmp_path / "b.json").write_text(json.dumps(doc))
    code, _, _ = run_cli(["gate", "--baseline", str(a), "--current", str(tmp_path / "b.json")], capsys)
    assert code == 1


@pytest.mark.parametrize("content", [None, "", "{not json", '{"format": "xprune-bench-1", "rows": []}',
                                     '{"format": "other"}'])
def test_gate_unusable_input_exits_2(tiny, tmp_path, capsys, content):
    a = tmp_path / "a.json"
    assert main(["bench", str(tiny / "y.onnx"), "--out", str(a), *FAST]) == 0
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    capsys.readouterr()
    code, _, err = run_cli(["gate", "--baseline", str(a), "--current", str(bad)], capsys)
    assert code == 2 and one_line_error(err).startswith("xprune: error:")


def test_gate_mismatched_models_exit_2(tiny, tmp_path, capsys):
    a = tmp_path / "a.json"
    assert main(["bench", str(tiny / "y.onnx"), "--out", str(a), *FAST]) == 0
    doc = json.loads(a.read_text())
    doc["rows"][0]["model"] = "ssd-mobilenetv2"
    (tmp_path / "b.json").write_text(json.dumps(doc))
    capsys.readouterr()
    code, _, err = run_cli(["gate", "--baseline", str(a), "--current", str(tmp_path / "b.json")], capsys)
    assert code == 2 and "xprune: error:" in one_line_error(err)


def test_bench_bad_targets(tiny, tmp_path, capsys):
    out = tmp_path / "r.json"
    for target, message in [(tmp_path / "missing.onnx", "not found"), (tiny / "y.pt", "needs --model")]:
        code, _, err = run_cli(["bench", str(target), "--out", str(out)], capsys)
        assert code == 2 and message in one_line_error(err)
    (tmp_path / "m.engine").write_bytes(b"x")
    code, _, err = run_cli(["bench", "--engine", str(tmp_path / "m.engine"), "--out", str(out)], capsys)
    assert code == 2 and "TensorRT is not installed" in one_line_error(err)
    assert not out.exists()


def test_compare_onnx_against_pytorch(tiny, capsys):
    code, out, _ = run_cli(["compare", str(tiny / "y.pt"), str(tiny / "y.onnx"), "--model", "yolov8n",
                         "--inputs", "2"], capsys)
    assert code == 0 and "agree" in out


def test_compare_different_models_exits_1_with_the_failing_report(tiny, tmp_path, capsys):
    torch.manual_seed(0)
    other = build_detector("yolov8n", "none", num_classes=6, input_size=64)
    with torch.no_grad():  # the same model with every parameter scaled: a real difference, not noise
        for p in other.model.parameters():
            p.mul_(1.5)
    save_checkpoint(other, tmp_path / "other.pt")
    code, out, err = run_cli(["compare", str(tiny / "y.pt"), str(tmp_path / "other.pt"), "--model", "yolov8n"],
                             capsys)
    report = json.loads(out)
    assert code == 1 and err.strip() == "outputs differ beyond the fp32 tolerances"
    assert not report["passed"] and report["reference"] == "b" and report["rtol"] == 1e-3
    assert [o["name"] for o in report["outputs"]] == ["boxes", "scores"]


def test_registry_maps_every_suffix_to_one_backend():
    assert {s: backend_for(f"m{s}").name for s in (".pt", ".pth", ".onnx", ".ENGINE", ".plan", ".trt")} == {
        ".pt": "torch", ".pth": "torch", ".onnx": "onnxruntime", ".ENGINE": "tensorrt", ".plan": "tensorrt",
        ".trt": "tensorrt"}
    suffixes = [s for b in BACKENDS.values() for s in b.suffixes]
    assert len(suffixes) == len(set(suffixes))
    for backend in BACKENDS.values():
        package = importlib.import_module(backend.package)
        assert callable(package.available) and callable(package.open_file)
    with pytest.raises(XpruneError, match=r"unknown benchmark target type '\.xyz' \(expected \.pt, .* or \.trt\)"):
        backend_for("m.xyz")


def test_runner_is_used_inside_one_with_block(tiny):
    runner = OnnxRuntimeRunner(tiny / "y.onnx", threads=1)
    x = np.zeros((1, 3, 64, 64), np.float32)
    with pytest.raises(XpruneError, match="OnnxRuntimeRunner is used outside its `with` block"):
        runner.infer(x)
    with runner:
        with pytest.raises(XpruneError, match="already active"):
            runner.__enter__()
        assert [o.shape[0] for o in runner.infer(x)] == [1, 1]
        assert runner.describe()["threads"] == 1
    assert not runner.is_active
    with pytest.raises(XpruneError, match="outside its `with` block"):
        runner.infer(x)
    with runner:  # entered again after leaving
        runner.infer(x)


def test_interleaved_baseline_and_candidate_then_gate(tiny, tmp_path, capsys):
    run = tmp_path / "run.json"
    assert main(["bench", str(tiny / "y.onnx"), "--baseline", str(tiny / "y.onnx"), "--out", str(run), *FAST]) == 0
    doc = json.loads(run.read_text())
    assert [r["role"] for r in doc["rows"]] == ["baseline", "candidate"] and doc["protocol"]["interleaved"]
    # the speedup column: the candidate's paired ratio to the baseline, round by round, in the file and the table
    base, cand = doc["rows"]
    ratios = [c / b for c, b in zip(cand["samples_ms"], base["samples_ms"])]
    assert base["vs_baseline"] is None
    assert cand["vs_baseline"]["median"] == pytest.approx(float(np.median(ratios)))
    assert cand["vs_baseline"]["n"] == len(ratios)
    table = capsys.readouterr().out
    assert "speedup" in table and f"{1 / cand['vs_baseline']['median']:.3f}x" in table
    code, out, _ = run_cli(["gate", "--interleaved", str(run), "--verdict", str(tmp_path / "v.json")], capsys)
    (row,) = json.loads((tmp_path / "v.json").read_text())["rows"]
    # The candidate is paired with the baseline row even though both rows are timed separately (same file twice).
    assert row["n_baseline"] == len(doc["rows"][0]["samples_ms"]) and row["n_current"] == len(doc["rows"][1]["samples_ms"])
    assert code == (1 if row["decision"] == "regression" else 0)
    separate = tmp_path / "separate.json"
    assert main(["bench", str(tiny / "y.onnx"), "--out", str(separate), *FAST]) == 0
    capsys.readouterr()
    code, _, err = run_cli(["gate", "--interleaved", str(separate)], capsys)
    assert code == 2 and "--baseline BASELINE" in one_line_error(err)
    code, _, err = run_cli(["gate", "--baseline", str(separate)], capsys)
    assert code == 2 and "--current" in one_line_error(err)
