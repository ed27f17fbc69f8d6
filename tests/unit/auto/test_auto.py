"""`xprune auto` end to end on a tiny random-init YOLOv8n: every stage's file, a report whose numbers are the
results files', a resumed run that redoes nothing, and one-line refusals."""

import json

import pytest

from cli_helpers import one_line_error, run_cli
from xprune.models import build_detector, save_checkpoint

SIZE = 64
FAST = ["--score-images", "4", "--held-out-images", "4", "--finetune-images", "8", "--runs", "10",
        "--max-map-drop", "0.5", "--target-macs", "0.3", "--step-macs", "0.15", "--finetune-epochs", "1",
        "--threads", "1"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory, synth_data):
    det = build_detector("yolov8n", "none", num_classes=6, input_size=SIZE)
    path = tmp_path_factory.mktemp("auto") / "mine.pt"
    save_checkpoint(det, path)
    return path


@pytest.mark.slow
def test_auto_runs_every_stage_and_resumes(weights, synth_data, tmp_path, capsys):
    out = tmp_path / "job"
    code, stdout, err = run_cli(["auto", "--weights", str(weights), "--data", str(synth_data), "--out", str(out),
                                 *FAST], capsys)
    assert code == 0, err
    for name in ("scores.json", "pruned.pt", "pruned.plan.json", "baseline.onnx", "model.onnx", "bench.json",
                 "auto.json", "report.md"):
        assert (out / name).is_file(), name
    state = json.loads((out / "auto.json").read_text())
    assert state["model"] == "yolov8n" and all(state["stages"][s]["done"] for s in
                                               ("score", "prune", "levels", "export", "bench", "verdict"))
    bench = json.loads((out / "bench.json").read_text())
    split = state["stages"]["levels"]
    assert split["available"] and split["silent_macs"] + split["live_macs"] == split["removed_macs"] > 0
    silent = bool(split["silent_layers"])
    assert [r["role"] for r in bench["rows"]] == ["baseline", "aa-copy", "candidate"] + \
        (["silent-levels-only"] if silent else [])
    assert (out / "silent.onnx").is_file() == silent
    assert bench["protocol"]["interleaved"] and all("map_matches" in r for r in bench["rows"])
    report = (out / "report.md").read_text()
    model = bench["rows"][2]
    assert f"{model['median_ms']:.3f} ms" in report
    assert f"{state['stages']['bench']['latency']['median']:.3f}" in report
    assert state["stages"]["verdict"]["accuracy"]["decision"] in report
    plan = json.loads((out / "pruned.plan.json").read_text())
    assert all(f"`{c['layer']}`" in report for c in plan["selected"])
    walk = plan["budget"]
    assert walk["search"] == "iterative-target+finetune" and walk["chosen"]["reached"] >= 0.3
    assert "## The walk toward the MAC target, step by step" in report and "## Where the speed comes from" in report
    # which images each figure comes from: search on the first 4 val images, the verdict on the other 4
    held = plan["budget"]["held_out"]
    assert held["split"] == "val" and held["first"] == 0 and held["images"] == 4 and held["of"] == 8
    assert state["stages"]["verdict"]["images"] == {"split": "val", "images": 4, "left_out": 4}
    assert state["stages"]["verdict"]["accuracy"]["images"] == 4
    assert "## Which images each figure comes from" in report and "val images 1–4 of 8" in report
    assert "4 val images after the search's 4" in report and "the first 4 calib images" in report

    code, _, err = run_cli(["auto", "--weights", str(weights), "--data", str(synth_data), "--out", str(out),
                            *FAST], capsys)
    assert code == 0 and err.count("done before, kept") == 6

    code, _, err = run_cli(["auto", "--weights", str(weights), "--data", str(synth_data), "--out", str(out),
                            *FAST[:-2], "--threads", "2"], capsys)
    assert code == 2 and "pruning job of another run (its settings.threads differs)" in one_line_error(err)


@pytest.mark.parametrize("change, message", [
    ({"--weights": "missing.pt"}, "checkpoint not found"),
    ({"--data": "no-such-dir"}, "dataset not found"),
    ({"--max-map-drop": "2"}, "max-map-drop"),
    ({"--method": "nope"}, "nope"),
])
def test_auto_refuses_bad_input_in_one_line(weights, synth_data, tmp_path, capsys, change, message):
    args = {"--weights": str(weights), "--data": str(synth_data), "--out": str(tmp_path / "job")}
    args.update(change)
    code, _, err = run_cli(["auto", *FAST[:-4], *[x for kv in args.items() for x in kv]], capsys)
    assert code == 2 and message in one_line_error(err)
    assert not (tmp_path / "job" / "report.md").exists()
