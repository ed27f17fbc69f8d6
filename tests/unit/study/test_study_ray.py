"""The study's models measured as Ray Tune trials and timed afterwards in the driver: study.json says the same as a
run without Ray (mAP, intervals, plans, exports), with its latency measured again."""

from __future__ import annotations

import importlib.util
import json

import pytest

from xprune.bench.latency import LatencyProtocol
from xprune.study.settings import StudySettings
from xprune.study.sweep import run_study

TINY = LatencyProtocol(warmup_runs=1, warmup_s=0.0, runs=3, min_s=0.0)
TIMING = {"controls", "bench_files", "timing_order", "seconds", "measured_at"}  # a model's fields that are timing
ROW_TIMING = {"median_ms", "p90_ms", "fps", "n", "dfps_pct", "paired_ratio", "paired_ratio_p10", "paired_ratio_p90",
              "order_seed", "timing_order"}


def _settings(out, data):
    # the reference YOLOv8n on a few val images (accuracy rows, so mAPs and their intervals are compared too)
    return StudySettings(out=out, models=["yolov8n"], criteria=("l1",), rates=(0.05,), data=data, calib_images=4,
                         val_images=6, batch_size=4, latency=TINY, progress=False, command="pytest", threads=2,
                         backends=("torch", "onnxruntime"), peer=False, bootstrap_resamples=100)


def _measured(path):
    doc = json.loads(path.read_text())
    models = [{k: v for k, v in m.items() if k not in TIMING} for m in doc["models"]]
    for m in models:  # how long each criterion took to score: wall time, not a result
        for c in m["layer_scores"]["criteria"].values():
            c.pop("seconds")
    rows = [{k: v for k, v in r.items() if k not in ROW_TIMING and k != "runtime"} for r in doc["rows"]]
    return doc, models, rows


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="the ray extra is not installed")
@pytest.mark.slow
def test_a_study_measured_on_ray_matches_one_measured_here(tmp_path, synth_data):
    import ray

    from xprune.ray_trials import RayOptions

    plain = run_study(_settings(tmp_path / "plain", synth_data), log=lambda line: None)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        lines: list[str] = []
        on_ray = run_study(_settings(tmp_path / "ray", synth_data), log=lines.append,
                           ray=RayOptions(cpus_per_trial=2, max_failures=0, storage=tmp_path / "tune", name="study"))
    finally:
        ray.shutdown()
    doc, models, rows = _measured(on_ray)
    _, plain_models, plain_rows = _measured(plain)
    assert doc["ray"]["cpus_per_trial"] == 2 and any("measured on Ray; timing it here" in line for line in lines)
    assert models == plain_models and rows == plain_rows
    assert doc["models"][0]["accuracy"] and rows[0]["map"] is not None
    # timed here, afterwards: every backend's samples are there
    assert set(doc["models"][0]["bench_files"]) == {"torch", "onnxruntime"}
    assert (tmp_path / "ray" / "scores" / "yolov8n-l1.json").is_file()


def test_study_on_ray_without_ray_is_one_line_and_writes_nothing(monkeypatch, tmp_path, capsys):
    import sys

    from cli_helpers import one_line_error, run_cli

    monkeypatch.setitem(sys.modules, "ray", None)
    code, _, err = run_cli(["study", "--quick", "--out", str(tmp_path / "out"), "--ray"], capsys)
    assert code == 2 and 'pip install "xprune[ray]"' in one_line_error(err)
    assert not (tmp_path / "out").exists()


def test_bad_ray_options_are_one_line(tmp_path, capsys):
    from cli_helpers import one_line_error, run_cli

    code, _, err = run_cli(["study", "--quick", "--out", str(tmp_path / "out"), "--ray", "--cpus-per-trial", "0"],
                           capsys)
    assert code == 2 and "--cpus-per-trial must be >= 1" in one_line_error(err)
    assert not (tmp_path / "out").exists()
