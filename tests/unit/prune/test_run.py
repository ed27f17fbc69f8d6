"""`prune_checkpoint`, the pruning `xprune prune` and `xprune auto` both run: settings refused before anything is
loaded, the checkpoint and its plan written, and the command a parse, a call and a print."""

import json
import re
from types import SimpleNamespace

import pytest
import torch

from cli_helpers import run_cli
from xprune.errors import XpruneError
from xprune.importance.scores import score_layers, write_scores
from xprune.models import build_detector, load_checkpoint, save_checkpoint
from xprune.prune import run as prune_run
from xprune.prune.run import PruneRequest, prune_checkpoint

SIZE = 64


@pytest.mark.parametrize("change, message", [
    ({"rate": 0.1, "max_map_drop": 0.01}, "exclusive"),
    ({"finetune_epochs": 2}, "--finetune-epochs goes with --max-map-drop"),
    ({"rank": "cheapest"}, "unknown ranking 'cheapest'"),
    ({"policy": "some"}, "unknown candidate policy 'some'"),
    ({"step_rate": 2.0}, "--step-rate must be in (0, 1)"),
    ({"rate": 1.0}, "--rate must be in (0, 1)"),
    ({"max_map_drop": 1.5}, "max-map-drop"),
])
def test_bad_settings_are_refused_before_anything_is_read(tmp_path, change, message):
    request = PruneRequest(weights="none", scores=str(tmp_path / "missing.json"), out=str(tmp_path / "p.pt"),
                           **change)
    with pytest.raises(XpruneError, match=re.escape(message)):
        prune_checkpoint(request)
    assert not list(tmp_path.iterdir())


def test_outputs_are_named_after_out_unless_given(tmp_path):
    request = PruneRequest(weights="none", scores="s.json", out=str(tmp_path / "p.pt"))
    assert (request.plan_path, request.search_path, request.steps_path) == \
        (tmp_path / "p.plan.json", tmp_path / "p.search.json", tmp_path / "p.steps")
    given = PruneRequest(weights="none", scores="s.json", out="p.pt", plan_file=str(tmp_path / "plan.json"),
                         search_file=str(tmp_path / "search.json"))
    assert (given.plan_path, given.search_path) == (tmp_path / "plan.json", tmp_path / "search.json")


@pytest.mark.slow  # a model, its export for the fold and the safety probes: half a minute on a busy CPU
def test_a_fixed_rate_writes_the_pruned_checkpoint_and_its_plan(tmp_path):
    det = build_detector("yolov8n", "none", num_classes=6, input_size=SIZE)
    weights, scores = tmp_path / "mine.pt", tmp_path / "scores.json"
    save_checkpoint(det, weights)
    write_scores(scores, score_layers(det, "l1"))
    lines = []
    request = PruneRequest(weights=str(weights), scores=str(scores), out=str(tmp_path / "pruned.pt"), rate=0.1,
                           plan_file=str(tmp_path / "plan.json"))
    plan = prune_checkpoint(request, log=lines.append)
    assert plan.weights == str(weights) and len(plan.selected) == round(0.1 * plan.candidates)
    assert json.loads((tmp_path / "plan.json").read_text()) == plan.to_json()
    pruned = load_checkpoint(tmp_path / "pruned.pt", "yolov8n")
    assert pruned.meta["pruning"] == plan.to_json()
    convs = pruned.conv_layers()
    assert all(not convs[e.layer].weight.any() for e in plan.selected)
    assert sum(int(not torch.any(c.weight)) for c in convs.values()) == len(plan.selected)
    assert plan.fold is not None and any("exporting once" in line for line in lines)
    assert not list(tmp_path.glob(".*")) and not request.search_path.exists()  # no temporaries, no search


def test_the_command_parses_calls_and_prints(tmp_path, capsys, monkeypatch):
    seen = []

    def fake(request, log=None, progress=False):
        seen.append(request)
        layer = SimpleNamespace(layer="model.1.conv", score=0.5, fold_macs=None, reason="lowest score")
        return SimpleNamespace(selected=[layer], skipped=[], candidates=4, fold=None)

    monkeypatch.setattr(prune_run, "prune_checkpoint", fake)
    code, stdout, err = run_cli(["prune", "--model", "yolov8n", "--weights", "w.pt", "--scores", "s.json", "--out",
                                 str(tmp_path / "p.pt"), "--candidates", "all", "--rank", "per-mac", "--max-map-drop",
                                 "0.02", "--finetune-epochs", "3", "--plan", "plan.json"], capsys)
    assert code == 0, err
    (request,) = seen
    assert (request.weights, request.scores, request.policy, request.rank, request.max_map_drop,
            request.finetune_epochs, request.plan_file, request.rate) == \
        ("w.pt", "s.json", "all", "per-mac", 0.02, 3, "plan.json", None)
    assert "zeroed model.1.conv" in stdout and "1 of 4 candidate layers zeroed" in stdout and "plan plan.json" in stdout
