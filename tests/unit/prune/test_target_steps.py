"""Iterative pruning toward a MAC target: each step removes a few more percent of the start's folded MACs on top of
the kept steps (nested plans), a step over budget is fine-tuned, undone when still over and retried at half the
size, the walk stops at the target or where the budget does, and the path is recorded; one small real run through
the CLI."""

import copy
import json

import pytest
import torch

from cli_helpers import one_line_error, run_cli
from unit.prune.cli_pruning import prune_with_budget
from xprune.errors import XpruneError
from xprune.export.fold.analysis import FoldAnalysis
from xprune.models import build_detector, load_checkpoint
from xprune.prune.target_steps import check_step_macs, iterative_target_search

SIZE = 64  # the input size of the `yolo` fixture (conftest.py)


def zero_layers(det) -> list[str]:
    return [n for n, c in det.conv_layers().items() if not c.weight.detach().any()]


def folded_fraction(det, start_macs: int) -> float:
    return 1 - FoldAnalysis.of(det).macs_after() / start_macs


class Fake:
    """mAP falls by `cost` per zeroed layer; a fine-tuned model (marked in a BatchNorm buffer with its layer count)
    falls by half that."""

    def __init__(self, cost: float):
        self.cost, self.calls = cost, []

    def finetune(self, det, layers, step):
        assert sorted(zero_layers(det)) == sorted(layers)
        self.calls.append(len(layers))
        with torch.no_grad():
            det.model.model[1].bn.running_mean[0] = len(layers)
        return {"epochs": 1}

    def evaluate(self, det) -> float:
        k = len(zero_layers(det))
        tuned = k and det.model.model[1].bn.running_mean[0] == k
        return 0.5 - (self.cost / 2 if tuned else self.cost) * k


@pytest.mark.slow
def test_the_walk_reaches_the_target_in_nested_steps(yolo, l1):
    det = copy.deepcopy(yolo)
    start = FoldAnalysis.of(det).macs_after()
    fake = Fake(cost=0.0)  # nothing lost: every step is kept as zeroed, none trained
    search = iterative_target_search(det, l1, fake.evaluate, fake.finetune, target=0.3, max_map_drop=0.01,
                                     step_macs=0.1)
    assert search.stopped_by == "target" and fake.calls == []
    assert [p["goal"] for p in search.path] == pytest.approx([0.1, 0.2, 0.3][:len(search.path)])
    reached = [p["reached"] for p in search.path]
    assert reached == sorted(reached) and reached[-1] >= 0.3 and all(p["kept"] for p in search.path)
    layers = [n for p in search.path for n in p["layers"]]
    assert search.plan.layers == layers and len(set(layers)) == len(layers)  # each step adds to the last
    assert sorted(zero_layers(det)) == sorted(layers)
    assert folded_fraction(det, start) == pytest.approx(search.chosen["reached"]) and search.chosen["reached"] >= 0.3
    assert search.plan.fold["macs_after"] == FoldAnalysis.of(det).macs_after()
    assert len(search.plan.fold["steps"]) == len(search.path)


@pytest.mark.slow
def test_a_step_over_budget_is_trained_then_undone_and_halved(yolo, l1):
    det = copy.deepcopy(yolo)
    before = {k: v.clone() for k, v in det.model.state_dict().items()}
    fake = Fake(cost=0.006)
    search = iterative_target_search(det, l1, fake.evaluate, fake.finetune, target=0.6, max_map_drop=0.012,
                                     step_macs=0.2, min_step=0.05)
    assert fake.calls and search.stopped_by in ("budget", "target")  # some step went over and was trained
    failed = [p for p in search.path if not p["kept"]]
    assert failed and all(p["map_finetuned"] is not None and p["drop"] > 0.012 for p in failed)
    assert len({frozenset(p["layers"]) for p in failed}) == len(failed)  # a set over budget is not trained twice
    kept = [p for p in search.path if p["kept"]]
    assert all(p["drop"] <= 0.012 + 1e-9 for p in kept)
    # after a failure the next goal is half a step above the last kept fraction
    for prev, nxt in zip(search.path, search.path[1:]):
        if not prev["kept"]:
            base = max([p["reached"] for p in search.path[:search.path.index(prev)] if p["kept"]], default=0.0)
            assert nxt["goal"] - base < prev["goal"] - base
    layers = [n for p in kept for n in p["layers"]]
    assert sorted(zero_layers(det)) == sorted(layers)  # the failed steps' layers came back
    for name in set(before) - {f"{n}.weight" for n in layers} - {"model.1.bn.running_mean"}:
        assert torch.equal(det.model.state_dict()[name], before[name]), name


def test_nothing_kept_leaves_the_detector_as_it_came(yolo, l1):
    det = copy.deepcopy(yolo)
    before = {k: v.clone() for k, v in det.model.state_dict().items()}
    fake = Fake(cost=0.5)
    search = iterative_target_search(det, l1, fake.evaluate, None, target=0.2, max_map_drop=0.01, step_macs=0.04,
                                     min_step=0.02)
    assert search.plan is None and search.stopped_by == "budget" and search.finetune is None
    assert all(torch.equal(v, before[k]) for k, v in det.model.state_dict().items())


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 2.0])
def test_bad_step_macs(bad):
    with pytest.raises(XpruneError, match=r"--step-macs must be in \(0, 1\)"):
        check_step_macs(bad)


@pytest.mark.parametrize("extra, message", [
    (["--step-macs", "1.5"], "--step-macs must be in (0, 1), got 1.5"),
    (["--finetune-epochs", "2"], "--finetune-epochs goes with --max-map-drop"),
])
def test_cli_refuses_bad_walk_settings_before_loading(tmp_path, capsys, extra, message):
    out = tmp_path / "pruned.pt"
    code, _, err = run_cli(["prune", "--model", "yolov8n", "--weights", "none", "--scores", str(tmp_path / "s.json"),
                            "--target-macs", "0.2", "--out", str(out), *extra], capsys)
    assert code == 2 and message in one_line_error(err) and not out.exists()


@pytest.mark.slow
def test_cli_walks_toward_the_target_and_writes_the_path(tmp_path, capsys, synth_data):
    out = tmp_path / "walk.pt"
    code, _, err = prune_with_budget(tmp_path, capsys, synth_data, out, "--target-macs", "0.2", "--step-macs", "0.1")
    assert code == 0, err
    plan = json.loads(out.with_suffix(".plan.json").read_text())
    walk = plan["budget"]
    assert walk["search"] == "iterative-target+finetune" and walk["stopped_by"] == "target"
    assert walk["held_out"]["split"] == "val" and walk["chosen"]["reached"] >= 0.2
    assert all({"goal", "reached", "layers", "units", "map_zeroed", "drop", "kept"} <= p.keys() for p in walk["path"])
    det = load_checkpoint(out, "yolov8n")
    assert all(not det.conv_layers()[e["layer"]].weight.any() for e in plan["selected"])
    assert not out.with_suffix(".steps").exists()
    start = FoldAnalysis.of(build_detector("yolov8n", "none", num_classes=det.num_classes, input_size=SIZE))
    assert 1 - FoldAnalysis.of(det).macs_after() / start.macs_after() >= 0.2
