"""`xprune auto`'s folder on the shared resume stamp: a rerun keeps the stages done from the same inputs, redoes a
stage whose files or input files changed, and refuses another job's folder in one line; its prune stage is the
request `xprune prune` runs."""

import json
from pathlib import Path

import pytest

from xprune.auto.run import STAMP, STATE, AutoSettings, Job, prune_request
from xprune.errors import XpruneError


def settings(tmp_path, **change) -> AutoSettings:
    weights = tmp_path / "mine.pt"
    if not weights.exists():
        weights.write_bytes(b"the user's checkpoint")
    return AutoSettings(**{"weights": str(weights), "data": str(tmp_path / "data"), "out": str(tmp_path / "job"),
                           **change})


class Stages:
    """Two stages: `a` writes a.txt, `b` reads it and writes b.txt; records which ran."""

    def __init__(self):
        self.ran: list[str] = []
        self.lines: list[str] = []

    def run(self, s: AutoSettings) -> Job:
        job = Job(s, self.lines.append)

        def a():
            self.ran.append("a")
            (job.out / "a.txt").write_text("A")
            return {"letter": "a"}

        def b():
            self.ran.append("b")
            (job.out / "b.txt").write_text((job.out / "a.txt").read_text() + "B")

        job.stage("a", ["a.txt"], a)
        job.stage("b", ["b.txt"], b, inputs=["a.txt"])
        return job


def test_a_rerun_keeps_what_is_done_from_the_same_inputs(tmp_path):
    s, stages = settings(tmp_path), Stages()
    job = stages.run(s)
    assert stages.ran == ["a", "b"]
    state = json.loads((job.out / STATE).read_text())
    assert state["settings"] == json.loads(json.dumps(s.identity())) and state["stages"]["a"]["letter"] == "a"
    assert set(state["stages"]["b"]["inputs"]["files"]) == {"a.txt"}
    assert json.loads((job.out / STAMP).read_text())["settings"]["weights"] == s.weights

    stages.run(s)
    assert stages.ran == ["a", "b"] and sum("done before, kept" in line for line in stages.lines) == 2

    (job.out / "a.txt").unlink()  # remade with the same bytes: the next stage is still its own
    stages.run(s)
    assert stages.ran == ["a", "b", "a"]

    (job.out / "a.txt").write_text("edited")  # an input remade otherwise: what reads it runs again
    stages.run(s)
    assert stages.ran == ["a", "b", "a", "b"] and (job.out / "b.txt").read_text() == "editedB"


def test_another_jobs_folder_is_refused_in_one_line(tmp_path):
    s = settings(tmp_path)
    Stages().run(s)
    with pytest.raises(XpruneError, match=r"pruning job of another run \(its settings.threads differs\)"):
        Stages().run(settings(tmp_path, threads=2))
    Path(s.weights).write_bytes(b"retrained in place")
    with pytest.raises(XpruneError, match=r"another run \(its files.weights differs\)"):
        Stages().run(s)


def test_a_folder_without_the_jobs_record_is_refused(tmp_path):
    s = settings(tmp_path)
    Path(s.out).mkdir()
    (Path(s.out) / STATE).write_text("{}")
    with pytest.raises(XpruneError, match="no record of its inputs"):
        Job(s, print)
    Stages().run(settings(tmp_path, out=str(tmp_path / "other")))
    (tmp_path / "other" / STATE).write_text('{"format": "something else"}')
    with pytest.raises(XpruneError, match="not written by xprune auto"):
        Job(settings(tmp_path, out=str(tmp_path / "other")), print)


def test_the_prune_stage_is_the_request_xprune_prune_runs(tmp_path):
    walk = prune_request(settings(tmp_path), "yolov8n")  # by default: toward the MAC target, distilled
    assert (walk.target_macs, walk.step_macs, walk.max_map_drop, walk.finetune_epochs, walk.distill) == \
        (0.5, 0.05, 0.01, 2, True) and walk.finetune_images is None and walk.max_rate is None
    walk.check()
    assert not prune_request(settings(tmp_path, distill=False)).distill
    s = settings(tmp_path, search="rate", rank="per-mac", finetune_epochs=2, finetune_images=8)
    request = prune_request(s, "yolov8n")
    assert request.target_macs is None and request.max_rate == s.max_rate
    out = Path(s.out)
    assert (request.model, request.weights, request.data, request.policy, request.rank) == \
        ("yolov8n", s.weights, s.data, "safe", "per-mac")
    assert (request.max_map_drop, request.rate, request.finetune_epochs, request.finetune_images) == \
        (s.max_map_drop, None, 2, 8)
    assert (Path(request.scores), Path(request.out), request.plan_path, request.search_path, request.steps_path) == \
        (out / "scores.json", out / "pruned.pt", out / "pruned.plan.json", out / "pruned.search.json",
         out / "pruned.steps")
    assert prune_request(settings(tmp_path, finetune_epochs=0)).finetune_epochs is None  # no training
    with pytest.raises(XpruneError, match="unknown search 'best'"):
        prune_request(settings(tmp_path, search="best"))
    assert prune_request(settings(tmp_path, model="yolov8s"), "yolov8n").model == "yolov8s"
    request.check()
    with pytest.raises(XpruneError, match="unknown ranking 'best'"):
        prune_request(settings(tmp_path, rank="best")).check()
