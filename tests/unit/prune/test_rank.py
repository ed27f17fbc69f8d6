"""Ranking modes: plain stays the default and now records each layer's fold-removed MACs; per-mac is the greedy by
importance per marginal MAC the fold removes, skips layers that add nothing, keeps the safe check, and is a prefix
walk like plain; the CLI writes both figures per layer."""

import json

import pytest
import torch

from cli_helpers import one_line_error, run_cli
from unit.prune.biased_yolo import yolo_with_biases
from xprune.errors import XpruneError
from xprune.importance.scores import score_layers
from xprune.models import build_detector
from xprune.export.fold.analysis import FoldAnalysis
from xprune.prune.plan import (NO_GAIN_REASON, SKIP_REASON, Plan, Selection, float64_probe, outputs_depend_on_input,
                               plan_pruning, plans_for_rates, ranked_candidates, zeroed)


@pytest.fixture(scope="module")
def yolo():
    return yolo_with_biases(64)


@pytest.fixture(scope="module")
def fold(yolo):
    return FoldAnalysis.of(yolo)


@pytest.fixture(scope="module")
def l1(yolo):
    return score_layers(yolo, "l1")


def greedy(analysis, ranked, k):
    """The knapsack greedy spelled out: every step recomputes every remaining candidate's marginal MACs and takes
    the least score per MAC whose outputs stay alive (the fold's view of the safe check)."""
    taken, order = [], {e["layer"]: i for i, e in enumerate(ranked)}
    remaining = {e["layer"]: e["score"] for e in ranked}
    while len(taken) < k:
        gone = analysis.outcome(taken).removed_nodes
        for n in [n for n in remaining if taken and all(x.name in gone for x in analysis.nodes_of_layer[n])]:
            del remaining[n]  # its branch went with the layers taken
        gains = {n: analysis.removed_macs(n, taken) for n in remaining}
        for best in sorted((n for n in remaining if gains[n] > 0), key=lambda n: (remaining[n] / gains[n], order[n])):
            del remaining[best]
            if not analysis.outcome(taken + [best]).dead_outputs:
                taken.append(best)
                break
        else:
            break
    return taken


@pytest.fixture
def fold_only_check(monkeypatch):
    """The safe check by the fold's dead outputs alone: the float64 probe agrees with it on these layers
    (`test_per_mac_keeps_the_safe_check` runs it), and leaving it out keeps the tests fast."""
    monkeypatch.setattr("xprune.prune.plan._DependenceCheck.alive", lambda self, layers: True)


@pytest.mark.slow
def test_per_mac_is_the_greedy_by_score_per_marginal_mac(yolo, fold, l1, fold_only_check):
    plan = plan_pruning(yolo, l1, 0.15, "safe", rank="per-mac", fold=fold)
    k = len(plan.selected)
    assert plan.rank == "per-mac" and k == round(0.15 * plan.candidates)
    assert plan.layers == greedy(fold, ranked_candidates(yolo, l1, "safe"), k)
    for i, choice in enumerate(plan.selected):
        assert choice.gain_macs == fold.removed_macs(choice.layer, plan.layers[:i]) > 0
        assert choice.fold_macs == fold.removed_macs(choice.layer)
    reasons = {c.reason for c in plan.skipped}
    assert NO_GAIN_REASON in reasons, "YOLOv8n's two-conv branches: the second conv of a taken branch adds nothing"
    assert SKIP_REASON in reasons  # the stem: its branch is the whole model
    assert all(c.gain_macs == 0 for c in plan.skipped if c.reason == NO_GAIN_REASON)
    assert plan.fold["macs_after"] == fold.macs_after(plan.layers) < fold.macs_before


@pytest.mark.slow
def test_plain_is_the_default_and_records_fold_macs(yolo, fold, l1, fold_only_check):
    without = plan_pruning(yolo, l1, 0.2, "all")
    plan = plan_pruning(yolo, l1, 0.2, "all", fold=fold)
    assert plan.rank == without.rank == "plain" and plan.layers == without.layers
    assert without.fold is None and all(c.fold_macs is None for c in without.selected)
    assert all(c.fold_macs == fold.removed_macs(c.layer) and c.gain_macs is None for c in plan.selected)
    doc = plan.to_json()
    assert doc["rank"] == "plain" and doc["fold"]["macs_after"] == fold.macs_after(plan.layers)
    assert all({"score", "fold_macs"} <= e.keys() for e in doc["selected"])
    again = Plan.from_json(json.loads(json.dumps(doc)))
    assert again.to_json() == doc
    per_mac = plan_pruning(yolo, l1, 0.1, "safe", rank="per-mac", fold=fold).to_json()
    assert Plan.from_json(json.loads(json.dumps(per_mac))).to_json() == per_mac


def test_per_mac_plans_are_prefixes_of_one_walk(yolo, fold, l1, fold_only_check):
    plans = plans_for_rates(yolo, l1, [0.05, 0.1, 0.15], "safe", rank="per-mac", fold=fold)
    layers = [plans[r].layers for r in (0.05, 0.1, 0.15)]
    assert layers[1][:len(layers[0])] == layers[0] and layers[2][:len(layers[1])] == layers[1]


@pytest.mark.slow
def test_per_mac_keeps_the_safe_check(yolo, fold, l1):
    plan = plan_pruning(yolo, l1, 0.1, "safe", rank="per-mac", fold=fold)
    unsafe = [c for c in plan.skipped if c.reason == SKIP_REASON]
    assert any(c.layer == "model.0.conv" for c in unsafe)  # the stem removes every MAC, and every output with them
    assert not set(plan.layers) & set(yolo.predictor_layers)
    probe = float64_probe(yolo)
    with zeroed(probe, plan.layers):
        assert outputs_depend_on_input(probe)


def test_rank_errors(yolo, fold, l1):
    with pytest.raises(XpruneError, match="per-mac ranking needs"):
        Selection(yolo, l1, "all", rank="per-mac")
    with pytest.raises(XpruneError, match="unknown ranking 'best'"):
        Selection(yolo, l1, "all", rank="best", fold=fold)
    doc = plan_pruning(yolo, l1, 0.1, "all").to_json()
    with pytest.raises(XpruneError, match="unknown rank"):
        Plan.from_json({**doc, "rank": "best"})


@pytest.mark.slow
def test_cli_prune_per_mac_writes_both_figures(tmp_path, capsys, synth_data):
    scores = tmp_path / "scores.json"
    code, _, err = run_cli(["score", "--model", "yolov8n", "--weights", "none", "--input-size", "64", "--data",
                            str(synth_data), "--method", "l1", "--out", str(scores)], capsys)
    assert code == 0, err
    out = tmp_path / "pruned.pt"
    base = ["prune", "--model", "yolov8n", "--weights", "none", "--input-size", "64", "--data", str(synth_data),
            "--scores", str(scores), "--rate", "0.01", "--candidates", "all", "--out", str(out)]
    code, stdout, err = run_cli(base + ["--rank", "per-mac"], capsys)
    assert code == 0, err
    plan = json.loads(out.with_suffix(".plan.json").read_text())
    # policy 'all' and per MAC: the stem, whose branch is the whole model, is the cheapest per MAC
    assert plan["rank"] == "per-mac" and plan["fold"]["macs_after"] == 0 < plan["fold"]["macs_before"]
    assert [(e["layer"], e["fold_macs"], e["gain_macs"]) for e in plan["selected"]] == \
        [("model.0.conv", plan["fold"]["macs_before"], plan["fold"]["macs_before"])]
    assert "fold removes" in stdout


@pytest.mark.parametrize("extra, message", [(["--rank", "cheapest"], "unknown ranking 'cheapest'"),
                                            (["--step-rate", "2"], "--step-rate must be in (0, 1)"),
                                            (["--finetune-epochs", "2"], "--finetune-epochs goes with --max-map-drop")])
def test_cli_prune_refuses_bad_ranking_options_before_loading(tmp_path, capsys, extra, message):
    out = tmp_path / "pruned.pt"
    code, _, err = run_cli(["prune", "--model", "yolov8n", "--weights", "none", "--scores", str(tmp_path / "none.json"),
                            "--out", str(out), *extra], capsys)
    assert code == 2 and message in one_line_error(err) and not out.exists()
