"""Selection at a MAC target: a unit is what the fold removes together, zeroed through its least important conv; the
chosen set removes at least the target fraction of the exported MACs with the least total importance, equal to brute
force over every set of conv layers on small generated graphs; the greedy alone reaches the target too (equal to
the optimum on the constructed graphs, never below it); bad and unreachable targets are one line and exit 2."""

import itertools
import json
import math
import re

import numpy as np
import pytest
import torch

from cli_helpers import one_line_error, run_cli
from unit.prune.biased_yolo import yolo_with_biases
from unit.export.test_fold_analysis import Net, random_net
from xprune.errors import XpruneError
from xprune.export.fold.analysis import FoldAnalysis
from xprune.importance.scores import score_layers, write_scores
from xprune.models import build_detector
from xprune.prune import mac_target
from xprune.prune.mac_target import SafetyCheck, candidate_units, choose_units, plan_for_target
from xprune.prune.plan import float64_probe, outputs_depend_on_input, ranked_candidates, zeroed
from xprune.prune.plan_types import Plan
from xprune.prune.run import PruneRequest, prune_checkpoint

SIZE = 64


def ranked(scores: dict[str, float]) -> list[dict]:
    return sorted(({"layer": n, "score": s} for n, s in scores.items()), key=lambda e: (e["score"], e["layer"]))


def select(analysis: FoldAnalysis, scores: dict[str, float], target: float, **kw) -> tuple[list[str], float]:
    """The chosen layers and their total importance, every conv a candidate, the fold's dead outputs the check."""
    safety = SafetyCheck(analysis, "safe")
    units, _ = candidate_units(analysis, ranked(scores), safety)
    chosen = choose_units(analysis, units, target, safety, **kw)
    layers = [units[i].layer for i in chosen.chosen]
    assert chosen.macs_after == analysis.macs_after(layers)
    return layers, math.fsum(scores[n] for n in layers)


def brute_force(analysis: FoldAnalysis, scores: dict[str, float], target: float) -> float | None:
    """The least total importance over every set of conv layers that removes the target and kills no output."""
    best = None
    for k in range(len(scores) + 1):
        for layers in itertools.combinations(sorted(scores), k):
            outcome = analysis.outcome(layers)
            if outcome.dead_outputs or analysis.macs_before - outcome.macs < target * analysis.macs_before:
                continue
            cost = math.fsum(scores[n] for n in layers)
            best = cost if best is None else min(best, cost)
    return best


def reaches(analysis: FoldAnalysis, layers, target: float) -> bool:
    outcome = analysis.outcome(layers)
    return not outcome.dead_outputs and analysis.macs_before - outcome.macs >= target * analysis.macs_before


def small_seeds(count: int, most: int = 10) -> list[int]:
    """Seeds of generated graphs with at most `most` convs: 2^most sets for the brute force."""
    return [s for s in range(200) if 4 <= len(random_net(s)[1]) <= most][:count]


@pytest.mark.parametrize("seed", small_seeds(4))
def test_the_selection_is_the_brute_force_optimum_on_generated_graphs(seed):
    model, weights = random_net(seed)
    analysis = FoldAnalysis(model, weights)
    rng = np.random.default_rng(seed)
    scores = {n: float(rng.uniform(0.05, 1.0)) for n in weights}
    for target in (0.1, 0.3, 0.5, 0.7):
        optimum = brute_force(analysis, scores, target)
        if optimum is None:
            with pytest.raises(XpruneError, match=re.escape(f"--target-macs {target}: ")):
                select(analysis, scores, target)
            continue
        layers, cost = select(analysis, scores, target)
        assert reaches(analysis, layers, target)
        assert cost == pytest.approx(optimum, abs=1e-12), (target, layers)
        greedy_layers, greedy_cost = select(analysis, scores, target, exact_budget=0)
        assert reaches(analysis, greedy_layers, target) and greedy_cost >= optimum - 1e-12


def bottleneck_net():
    """stem -> [conv1 3x3 -> relu -> conv2 3x3] + bypass -> [conv3 1x1 -> relu -> conv4 1x1] + bypass -> conv5."""
    net = Net(0)
    x = net.conv("x", 4, 3)
    x = net.op("Add", [x, net.conv(net.act(net.conv(x, 4, 3), "Relu"), 4, 3)], (1, 4, 8, 8))
    x = net.op("Add", [x, net.conv(net.act(net.conv(x, 4, 1), "Relu"), 4, 1)], (1, 4, 8, 8))
    return FoldAnalysis(net.model([net.conv(x, 3, 1)]), net.weights)


def test_a_bottleneck_is_one_unit_zeroed_through_its_least_important_conv():
    analysis = bottleneck_net()
    scores = {"conv0": 0.01, "conv1": 0.5, "conv2": 0.2, "conv3": 0.1, "conv4": 0.3, "conv5": 0.02}
    units, unusable = candidate_units(analysis, ranked(scores), SafetyCheck(analysis, "safe"))
    assert [(u.layer, set(u.layers), u.macs) for u in units] == \
        [("conv3", {"conv3", "conv4"}, 2 * 8 * 8 * 4 * 4), ("conv2", {"conv1", "conv2"}, 2 * 8 * 8 * 4 * 4 * 9)]
    assert {c.layer for c in unusable} == {"conv0", "conv5"}  # each alone kills the output
    for budget in (0, None):  # the big branch is needed: one conv of it, the cheaper one
        assert select(analysis, scores, 0.5, exact_budget=budget) == (["conv2"], 0.2)
    assert brute_force(analysis, scores, 0.5) == 0.2


def joined_net():
    """Two 1x1 convs into an Add without a bypass, then a 3x3 conv, all bypassed; beside it a 3x3 bottleneck."""
    net = Net(1)
    x = net.conv("x", 4, 3)
    joined = net.op("Add", [net.conv(x, 4, 1), net.conv(x, 4, 1)], (1, 4, 8, 8))
    x = net.op("Add", [x, net.conv(joined, 4, 3)], (1, 4, 8, 8))
    x = net.op("Add", [x, net.conv(net.act(net.conv(x, 4, 3), "Relu"), 4, 3)], (1, 4, 8, 8))
    return FoldAnalysis(net.model([net.conv(x, 3, 1)]), net.weights)


def test_macs_that_go_only_together_are_measured_not_summed():
    """conv1 or conv2 alone removes itself; both remove the 3x3 conv after them too: that pair is the optimum,
    which summing their MACs alone would miss, and the greedy finds it as the completion of its second step."""
    analysis = joined_net()
    one, pair = 8 * 8 * 4 * 4, 2 * 8 * 8 * 4 * 4 + 8 * 8 * 4 * 4 * 9
    assert analysis.removed_macs("conv1") == analysis.removed_macs("conv2") == one
    assert analysis.macs_before - analysis.macs_after(["conv1", "conv2"]) == pair
    scores = {"conv0": 0.01, "conv1": 0.3, "conv2": 0.3, "conv3": 5.0, "conv4": 1.0, "conv5": 1.2, "conv6": 0.02}
    target = (pair - 100) / analysis.macs_before  # the pair reaches it, one of them does not
    assert one < target * analysis.macs_before < 2 * 8 * 8 * 4 * 4 * 9
    for budget in (0, None):
        layers, cost = select(analysis, scores, target, exact_budget=budget)
        assert sorted(layers) == ["conv1", "conv2"] and cost == pytest.approx(0.6)
    assert brute_force(analysis, scores, target) == pytest.approx(0.6)


def test_an_unreachable_target_is_one_error():
    analysis = bottleneck_net()
    scores = {f"conv{i}": 0.1 * (i + 1) for i in range(6)}
    with pytest.raises(XpruneError, match=r"--target-macs 0\.9: all 2 candidate units zeroed together"):
        select(analysis, scores, 0.9)
    with pytest.raises(XpruneError, match=re.escape("--target-macs must be in (0, 1), got 1.0")):
        select(analysis, scores, 1.0)


# --- YOLOv8n ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def yolo():
    return yolo_with_biases(SIZE)


@pytest.fixture(scope="module")
def fold(yolo):
    return FoldAnalysis.of(yolo)


@pytest.fixture(scope="module")
def l1(yolo):
    return score_layers(yolo, "l1")


def test_a_yolo_plan_reaches_its_target_and_records_its_units(yolo, fold, l1):
    plan = plan_for_target(yolo, l1, 0.25, "safe", fold)
    target = plan.fold["target"]
    assert plan.fold["macs_after"] == fold.macs_after(plan.layers)
    assert target["fraction"] == 0.25 and target["reached"] == plan.fold["removed_mac_fraction"] >= 0.25
    assert not set(plan.layers) & set(yolo.predictor_layers)
    probe = float64_probe(yolo)
    with zeroed(probe, plan.layers):
        assert outputs_depend_on_input(probe)
    score = {e["layer"]: e["score"] for e in l1["layers"]}
    assert [u["zeroed"] for u in target["units"]] == plan.layers
    for unit in target["units"]:
        assert unit["zeroed"] in unit["layers"] and unit["score"] == score[unit["zeroed"]]
        assert unit["macs"] == fold.removed_macs(unit["zeroed"])
        alone = fold.outcome([unit["zeroed"]])
        for other in unit["layers"]:  # a conv that removes the same alone is no less important
            if other in score and fold.outcome([other]) == alone:
                assert score[other] >= unit["score"]
    assert Plan.from_json(json.loads(json.dumps(plan.to_json()))).to_json() == plan.to_json()

    safety = SafetyCheck(fold, "safe", yolo)
    units, _ = candidate_units(fold, ranked_candidates(yolo, l1, "safe"), safety)
    assert sum(len(u.layers) >= 2 for u in units) >= 4  # the bottlenecks and the head branches
    greedy = choose_units(fold, units, 0.25, safety, exact_budget=0, by_fold=safety.by_fold)
    cost = math.fsum(u["score"] for u in target["units"])
    assert greedy.reached >= 0.25 and math.fsum(units[i].score for i in greedy.chosen) >= cost - 1e-12


@pytest.mark.parametrize("extra, message", [
    (["--target-macs", "1.5"], "--target-macs must be in (0, 1), got 1.5"),
    (["--target-macs", "0"], "--target-macs must be in (0, 1), got 0.0"),
    (["--target-macs", "-0.2"], "--target-macs must be in (0, 1), got -0.2"),
    (["--target-macs", "0.2", "--rate", "0.1"], "--rate and --target-macs are exclusive"),
])
def test_cli_refuses_a_bad_target_before_loading(tmp_path, capsys, extra, message):
    out = tmp_path / "pruned.pt"
    code, _, err = run_cli(["prune", "--model", "yolov8n", "--weights", "none", "--scores", str(tmp_path / "none.json"),
                            "--out", str(out), *extra], capsys)
    assert code == 2 and message in one_line_error(err) and not out.exists()


@pytest.mark.slow
def test_prune_at_a_target_and_an_unreachable_one(tmp_path, capsys, monkeypatch, yolo, l1):
    monkeypatch.setattr(mac_target, "EXACT_BUDGET", 50)  # an unreachable target searches this many sets in vain
    scores = tmp_path / "scores.json"
    write_scores(scores, l1)
    out = tmp_path / "pruned.pt"
    base = ["prune", "--model", "yolov8n", "--weights", "none", "--input-size", str(SIZE), "--scores", str(scores),
            "--out", str(out)]
    code, _, err = run_cli(base + ["--target-macs", "0.99"], capsys)
    line = one_line_error(err)
    assert code == 2 and "--target-macs 0.99: no safe set" in line and "after 50 sets" in line and not out.exists()
    code, stdout, err = run_cli(base + ["--target-macs", "0.1"], capsys)
    assert code == 0, err
    plan = json.loads(out.with_suffix(".plan.json").read_text())
    assert plan["fold"]["target"]["reached"] >= 0.1 and "target 10.0% of the MACs" in stdout


def test_a_request_for_a_target_is_checked_first(tmp_path):
    with pytest.raises(XpruneError, match=re.escape("--target-macs must be in (0, 1), got 1.0")):
        prune_checkpoint(PruneRequest(weights="none", scores=str(tmp_path / "s.json"), out=str(tmp_path / "p.pt"),
                                      target_macs=1.0))
    assert not list(tmp_path.iterdir())
