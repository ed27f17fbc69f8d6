"""A tiny frontier end to end (random-init YOLOv8n at 64 px, a few images; with Torch-Pruning, its channel-pruning
peer too): a run interrupted after its first epoch and resumed gives the same evaluations as one that was not; the
timing and the summary follow from the files."""

import importlib.util
import json

import pytest

from xprune.frontier import run
from xprune.frontier.point import point_path
from xprune.frontier.settings import FrontierSettings

PEER = ("tp-magnitude",) if importlib.util.find_spec("torch_pruning") else ()
LAST = f"{(PEER or ('l1',))[-1]}-10"  # the point interrupted: the peer's, rebuilt on resume, where it runs
SETTINGS = FrontierSettings(models=("yolov8n",), criteria=("l1", *PEER), targets=(0.1,), size=64, weights="none",
                            val_images=4, calib_images=4, train_images=4, epochs=2, evaluate_at=(0, 1, 2),
                            batch_size=2, stop_after=0, runs=3, warmup_runs=1, resamples=50)


class Interrupt(KeyboardInterrupt):
    pass


def evaluations(out, pid):
    doc = json.loads(point_path(out, "yolov8n", pid).read_text())
    return doc["status"], [(e["epoch"], e["map"], e["map50"], e["matches"]) for e in doc["evaluations"]]


@pytest.mark.slow
def test_an_interrupted_frontier_resumes_to_the_same_results(synth_data, tmp_path):
    whole = tmp_path / "whole"
    run.train(SETTINGS, synth_data, whole, tmp_path / "work-whole", False, lambda line: None)

    def stop_after_first_epoch(line):
        if f"{LAST}: epoch 1/2 loss" in line:
            raise Interrupt

    part = tmp_path / "part"
    with pytest.raises(Interrupt):
        run.train(SETTINGS, synth_data, part, tmp_path / "work-part", False, stop_after_first_epoch)
    assert evaluations(part, LAST)[0] == "running"
    lines = []
    run.train(SETTINGS, synth_data, part, tmp_path / "work-part", True, lines.append)
    assert any("resuming after epoch 1/2" in line for line in lines)
    for pid in ("control", "l1-10", *(f"{c}-10" for c in PEER)):
        assert evaluations(part, pid) == evaluations(whole, pid)
        assert evaluations(part, pid)[0] == "done"

    run.time_models(SETTINGS, synth_data, part, tmp_path / "work-part", lambda line: None)
    path = run.summarize(SETTINGS, synth_data, part, "test")
    doc = json.loads(path.read_text())
    rows = doc["models"][0]["rows"]
    assert doc["measured"] == doc["planned"] == 2 + len(PEER) and {r["epoch"] for r in rows} == {0, 1, 2}
    assert all(r["latency"]["n"] >= 3 for r in rows if r["point"] != "control")
    assert path.with_suffix(".md").read_text().startswith("# Frontier v2")
