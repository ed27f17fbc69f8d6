"""CLI behaviour: bad input exits 2 with one line on stderr and leaves no output file; a small run works."""

import json
import shutil

import pytest

from cli_helpers import one_line_error, run_cli
from xprune.cli import main


@pytest.fixture
def scores_file(tmp_path, capsys, synth_data):
    path = tmp_path / "scores.json"
    code, _, _ = run_cli(["score", "--model", "yolov8n", "--weights", "none", "--input-size", "64", "--data",
                       str(synth_data), "--method", "l1", "--out", str(path)], capsys)
    assert code == 0 and path.is_file()
    return path


@pytest.mark.slow
def test_score_prune_evaluate_roundtrip(tmp_path, capsys, synth_data, scores_file):
    out = tmp_path / "pruned.pt"
    code, stdout, _ = run_cli(["prune", "--model", "yolov8n", "--weights", "none", "--input-size", "64", "--data",
                            str(synth_data), "--scores", str(scores_file), "--rate", "0.05", "--out", str(out)], capsys)
    assert code == 0, stdout
    plan = json.loads(out.with_suffix(".plan.json").read_text())
    assert len(plan["selected"]) == round(0.05 * plan["candidates"])
    metrics = tmp_path / "metrics.json"
    code, stdout, _ = run_cli(["evaluate", "--model", "yolov8n", "--weights", str(out), "--data", str(synth_data),
                            "--latency-runs", "3", "--out", str(metrics)], capsys)
    assert code == 0
    (row,) = json.loads(metrics.read_text())
    assert {"map", "map50", "params", "macs", "latency_ms_median"} <= row.keys()
    assert len(row["latency"]["samples_ms"]) >= 3


def test_unknown_model(tmp_path, capsys, synth_data):
    out = tmp_path / "s.json"
    code, _, err = run_cli(["score", "--model", "yolo-nope", "--weights", "none", "--data", str(synth_data),
                         "--method", "l1", "--out", str(out)], capsys)
    assert code == 2 and "unknown model 'yolo-nope'" in one_line_error(err)
    assert not out.exists()


@pytest.mark.parametrize("content", [None, b"", b"not a checkpoint at all", b"PK\x03\x04broken zip"])
def test_missing_or_corrupt_checkpoint(tmp_path, capsys, synth_data, scores_file, content):
    ckpt = tmp_path / "model.pt"
    if content is not None:
        ckpt.write_bytes(content)
    out = tmp_path / "pruned.pt"
    code, _, err = run_cli(["prune", "--model", "yolov8n", "--weights", str(ckpt), "--scores", str(scores_file),
                         "--out", str(out)], capsys)
    line = one_line_error(err)
    assert code == 2 and ("not found" in line if content is None else "corrupt" in line)
    assert not out.exists() and not list(tmp_path.glob(".pruned.pt*"))


@pytest.mark.parametrize("rate", ["0", "1", "-0.5", "1.2"])
def test_rate_outside_open_interval(tmp_path, capsys, scores_file, rate):
    out = tmp_path / "pruned.pt"
    code, _, err = run_cli(["prune", "--model", "yolov8n", "--weights", "none", "--scores", str(scores_file),
                         "--rate", rate, "--out", str(out)], capsys)
    assert code == 2 and "--rate must be in (0, 1)" in one_line_error(err)
    assert not out.exists()


def test_non_numeric_rate_isone_line_error(tmp_path, capsys, scores_file):
    with pytest.raises(SystemExit) as exc:
        main(["prune", "--model", "yolov8n", "--scores", str(scores_file), "--rate", "lots", "--out", "x.pt"])
    assert exc.value.code == 2
    one_line_error(capsys.readouterr().err)


def _dataset_copy(src, dst, annotations: str | None):
    shutil.copytree(src, dst)
    for split in ("train", "val", "calib"):
        ann = dst / "annotations" / f"instances_{split}.json"
        if annotations is not None:
            ann.write_text(annotations)
    return dst


@pytest.mark.parametrize("annotations, message", [
    ('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}', "has no images"),
    ("{ this is not json", "not valid JSON"),
    ('{"images": 5}', "not a COCO instances file"),
    ('{"images": [{"id": 1}], "annotations": [{"bbox": [0, 0, 1, 1]}], "categories": []}', "malformed"),
])
def test_empty_or_malformed_dataset(tmp_path, capsys, synth_data, annotations, message):
    data = _dataset_copy(synth_data, tmp_path / "data", annotations)
    out = tmp_path / "scores.json"
    code, _, err = run_cli(["score", "--model", "yolov8n", "--weights", "none", "--input-size", "64", "--data", str(data),
                         "--method", "attr", "--out", str(out)], capsys)
    assert code == 2 and message in one_line_error(err)
    assert not out.exists()


def test_missing_dataset_folder(tmp_path, capsys):
    code, _, err = run_cli(["evaluate", "--model", "yolov8n", "--weights", "none", "--data", str(tmp_path / "nowhere")],
                        capsys)
    assert code == 2 and "not found" in one_line_error(err)


def test_unwritable_output(tmp_path, capsys, synth_data):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(["score", "--model", "yolov8n", "--weights", "none", "--input-size", "64", "--data",
                         str(synth_data), "--method", "l1", "--out", str(blocker / "scores.json")], capsys)
    assert code == 2 and "cannot write" in one_line_error(err)


@pytest.mark.slow  # the full suite runs it; the fast loop stays under two minutes
def test_prune_with_an_accuracy_budget(tmp_path, capsys, synth_data, scores_file):
    out = tmp_path / "budget.pt"
    base = ["prune", "--model", "yolov8n", "--weights", "none", "--input-size", "64", "--data", str(synth_data),
            "--scores", str(scores_file), "--out", str(out)]
    code, _, err = run_cli(base + ["--max-map-drop", "0.5", "--held-out-images", "4", "--max-rate", "0.1"], capsys)
    assert code == 0, err
    search = json.loads(out.with_suffix(".search.json").read_text())
    assert search["evaluations"] and all(e["drop"] <= 0.5 for e in search["evaluations"] if e["within"])
    plan = json.loads(out.with_suffix(".plan.json").read_text())
    assert plan["budget"]["max_map_drop"] == 0.5 and len(plan["selected"]) == search["chosen"]["k"]
    for extra, message in [(["--max-map-drop", "1.5"], "max-map-drop"), (["--max-map-drop", "0.1", "--rate", "0.1"],
                                                                         "exclusive")]:
        out.unlink(missing_ok=True)
        code, _, err = run_cli(base + extra, capsys)
        assert code == 2 and message in one_line_error(err)
        assert not out.exists()
