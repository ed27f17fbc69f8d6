"""Iterative pruning under a budget: steps of layers alternate with fine-tuning, a step over budget is undone (the
weights of the last kept plan come back) and retried at half the size, the largest kept plan wins and the path is
recorded; one small real run through the CLI."""

import json

import pytest
import torch

from unit.prune.cli_pruning import prune_with_budget
from xprune.errors import XpruneError
from xprune.models import build_detector, load_checkpoint
from xprune.prune import budget
from xprune.prune.budget_search import check_step_rate, iterative_search
from xprune.prune.finetune import FinetuneSettings
from xprune.resume import Stamp

SIZE = 64  # the input size of the `yolo` fixture (conftest.py)


def zeroed_count(det) -> int:
    return sum(int(not c.weight.detach().any()) for c in det.conv_layers().values())


def tag(det) -> torch.Tensor:
    return det.model.model[1].bn.running_mean  # where the fake fine-tuning leaves its mark


class Fake:
    """mAP 0.5 - 0.02 k with k layers zeroed, 0.5 - 0.01 k once fine-tuned at those k layers."""

    def __init__(self):
        self.calls: list[int] = []

    def finetune(self, det, layers, step):
        assert zeroed_count(det) == len(layers)
        self.calls.append(len(layers))
        with torch.no_grad():
            tag(det)[0] = len(layers)
        return {"epochs": 1}

    def evaluate(self, det) -> float:
        k = zeroed_count(det)
        return 0.5 - (0.01 if k and tag(det)[0] == k else 0.02) * k


def test_steps_shrink_after_an_overshoot_and_the_largest_kept_plan_wins(yolo, l1):
    det = build_detector("yolov8n", "none", num_classes=6, input_size=SIZE)
    original = {k: v.clone() for k, v in det.model.state_dict().items()}
    fake = Fake()
    search = iterative_search(det, l1, fake.evaluate, fake.finetune, max_map_drop=0.1, step_rate=0.125, policy="all")
    n = search.candidates
    assert n == 64 and search.step == 8
    path = [(p["k"], p["kept"]) for p in search.path]
    assert path == [(8, True), (16, False), (12, False), (10, True), (12, False), (11, False)]
    assert fake.calls == [8, 16, 12, 10, 12, 11]
    assert search.chosen["k"] == 10 and search.rate == 10 / n
    assert len(search.plan.layers) == 10 and search.plan.layers[:8] == search.path[0]["layers"]
    assert search.path[3]["layers"] == search.plan.layers[8:]
    first = search.path[0]
    assert first["map_zeroed"] == pytest.approx(0.5 - 0.16) and first["map_finetuned"] == pytest.approx(0.42)
    assert first["drop"] == pytest.approx(0.08) and first["within"]
    # the detector holds the kept plan, fine-tuned: 10 layers zeroed, the rejected steps undone
    assert zeroed_count(det) == 10 and tag(det)[0] == 10
    convs = det.conv_layers()
    assert all(not convs[name].weight.any() for name in search.plan.layers)
    restored = [name for name in convs if name not in search.plan.layers]
    assert all(torch.equal(convs[name].weight, original[f"{name}.weight"]) for name in restored)
    doc = json.loads(json.dumps(search.to_json()))
    assert doc["search"] == "iterative+finetune" and doc["plan"]["selected"]


def test_nothing_within_budget_leaves_the_detector_as_it_came(yolo, l1):
    det = build_detector("yolov8n", "none", num_classes=6, input_size=SIZE)
    original = {k: v.clone() for k, v in det.model.state_dict().items()}
    fake = Fake()
    search = iterative_search(det, l1, fake.evaluate, fake.finetune, max_map_drop=0.005, step_rate=0.05,
                              policy="all", max_rate=0.1)
    assert search.plan is None and search.rate is None and search.chosen["k"] == 0
    assert [p["k"] for p in search.path] == [3, 1]  # 3 over budget, then 1 over budget: stop
    assert all(torch.equal(v, original[k]) for k, v in det.model.state_dict().items())


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, True])
def test_bad_step_rate(bad):
    with pytest.raises(XpruneError, match="step-rate"):
        check_step_rate(bad)


class Interrupted(Exception):
    pass


def test_steps_of_another_search_are_refused_and_a_finished_search_leaves_nothing(yolo, l1, synth_data, tmp_path,
                                                                                  monkeypatch):
    work = tmp_path / "steps"
    args = dict(settings=FinetuneSettings(epochs=1, batch_size=2), work_dir=work, policy="all", held_out_images=2,
                train_images=2, max_rate=0.1)

    def interrupted(*a, **k):
        raise Interrupted

    monkeypatch.setattr(budget, "iterative_search", interrupted)
    with pytest.raises(Interrupted):
        budget.iterative_budget_plan(yolo, l1, synth_data, 0.1, step_rate=0.05, **args)
    recorded = Stamp(work / "search.json", {}, "").recorded()
    assert recorded["settings"]["step_rate"] == 0.05 and {"model", "scores"} <= recorded.keys()
    (work / "step-3-0123456789ab.state.pt").write_bytes(b"a step's training state")
    with pytest.raises(XpruneError, match=r"another run \(its settings.step_rate differs\)"):
        budget.iterative_budget_plan(yolo, l1, synth_data, 0.1, step_rate=0.1, **args)
    with pytest.raises(Interrupted):  # the same inputs get past the stamp to replay their steps
        budget.iterative_budget_plan(yolo, l1, synth_data, 0.1, step_rate=0.05, **args)

    (work / "step-3-0123456789ab.state.json").write_text("{}")
    monkeypatch.setattr(budget, "iterative_search", lambda *a, **k: type("Nothing", (), {"plan": None})())
    with pytest.raises(XpruneError, match="no step keeps the mAP drop within 0.1 after fine-tuning"):
        budget.iterative_budget_plan(yolo, l1, synth_data, 0.1, step_rate=0.05, **args)
    assert not work.exists()  # finished: the steps, their stamps and the search's stamp are gone


@pytest.mark.slow
def test_cli_iterative_pruning_writes_the_path(tmp_path, capsys, synth_data):
    out = tmp_path / "it.pt"
    code, _, err = prune_with_budget(tmp_path, capsys, synth_data, out, "--candidates", "all", "--step-rate", "0.05",
                                     "--max-rate", "0.1")
    assert code == 0, err
    plan = json.loads(out.with_suffix(".plan.json").read_text())
    budget = plan["budget"]
    assert budget["search"] == "iterative+finetune" and budget["finetune"]["epochs"] == 1
    assert [p["k"] for p in budget["path"]] == [3, 6] and all(p["kept"] for p in budget["path"])
    assert all({"layers", "map_zeroed", "map_finetuned", "drop", "fold"} <= p.keys() for p in budget["path"])
    assert budget["path"][1]["fold"]["macs_after"] <= budget["path"][0]["fold"]["macs_after"]
    assert len(plan["selected"]) == 6 and json.loads(out.with_suffix(".search.json").read_text())["path"]
    det = load_checkpoint(out, "yolov8n")
    assert all(not det.conv_layers()[e["layer"]].weight.any() for e in plan["selected"])
    assert not out.with_suffix(".steps").exists()  # finished: the per-step states are gone
