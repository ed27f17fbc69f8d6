"""A tiny frontier whose recovery runs through Ultralytics' trainer (random-init YOLOv8n at 64 px): every point is
evaluated at its epochs from the trainer's EMA, its layers stay exactly zero, a run stopped after an epoch resumes
from Ultralytics' last.pt, and the summary reads the files as it reads the own loop's."""

import json

import pytest
import torch

from xprune.frontier import run
from xprune.frontier.point import point_path
from xprune.frontier.settings import FrontierSettings
from xprune.frontier.yolo_trainer import run_folder

SETTINGS = FrontierSettings(models=("yolov8n",), criteria=("l1",), targets=(0.1,), size=64, weights="none",
                            val_images=4, calib_images=4, epochs=2, evaluate_at=(0, 1, 2), batch_size=4,
                            stop_after=0, distill=False, trainer="ultralytics", runs=3, warmup_runs=1, resamples=50)


class Interrupt(KeyboardInterrupt):
    pass


@pytest.mark.slow
def test_points_recover_through_ultralytics_with_zeros_held_and_resume(synth_data, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"

    def stop_after_first_epoch(line):
        if "l1-10: epoch 1/2" in line:
            raise Interrupt

    with pytest.raises(Interrupt):
        run.train(SETTINGS, synth_data, out, work, False, stop_after_first_epoch)
    doc = json.loads(point_path(out, "yolov8n", "l1-10").read_text())
    assert doc["status"] == "running" and [e["epoch"] for e in doc["evaluations"]] == [0, 1]
    lines = []
    run.train(SETTINGS, synth_data, out, work, True, lines.append)
    assert any("l1-10: resuming from" in line for line in lines)

    for pid in ("control", "l1-10"):
        doc = json.loads(point_path(out, "yolov8n", pid).read_text())
        assert doc["status"] == "done" and [e["epoch"] for e in doc["evaluations"]] == [0, 1, 2]
        assert [h["epoch"] for h in doc["finetune"]["history"]] == [1, 2]
        assert all(h["cpu_seconds"] > 0 for h in doc["finetune"]["history"])
        assert doc["finetune"]["settings"]["trainer"].startswith("ultralytics")
        assert doc["identity"]["recipe"]["trainer"] == "ultralytics"
        ema = torch.load(run_folder(work, "yolov8n", pid) / "ema.pt", weights_only=True)
        assert ema["finished"] and ema["epoch"] == 2
        for layer in doc["layers"]:
            assert not ema["state_dict"][f"{layer}.weight"].any(), layer
    pruned = json.loads(point_path(out, "yolov8n", "l1-10").read_text())
    assert pruned["layers"] and pruned["macs"]["removed_fraction"] > 0

    run.time_models(SETTINGS, synth_data, out, work, lambda line: None)
    rows = json.loads(run.summarize(SETTINGS, synth_data, out, "test").read_text())["models"][0]["rows"]
    assert {(r["point"], r["epoch"]) for r in rows} == {(p, e) for p in ("control", "l1-10") for e in (0, 1, 2)}
    assert all("delta_map" in r for r in rows)
