"""Recovery fine-tuning: pruned layers stay exactly 0.0 (weights, gradients, AdamW moments) through the distilled
loop, the exported graph folds the same layers afterwards, an interrupted run resumes (JAX included), the learning
rate and schedule fit fine-tuning, and bad input is one line with exit 2."""

import copy
import json
import shutil

import pytest
import torch
from torch import nn

from cli_helpers import one_line_error, run_cli
from xprune.data.coco import CocoDetectionSet
from xprune.errors import XpruneError
from xprune.models import build_detector, load_checkpoint, save_checkpoint
from xprune.models.detector import Detector
from xprune.export.fold.analysis import FoldAnalysis
from xprune.prune.finetune import (FinetuneSettings, ZeroMask, finetune_checkpoint, finetune_layers, nonzero_layers,
                                   state_path_for)

SIZE = 64
BYPASSED = ["model.2.m.0.cv1.conv", "model.4.m.1.cv2.conv", "model.22.cv2.0.0.conv"]


def exactly_zero(t: torch.Tensor) -> bool:
    """+0.0 in every element, bit for bit."""
    return bool((t.detach().float().contiguous().view(torch.int32) == 0).all())


def test_the_mask_alone_holds_a_zero_weight_through_adamw_with_weight_decay():
    """Without re-zeroing: zero gradients keep AdamW's moments at zero, and its step leaves a zero weight at zero."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    det = Detector("toy", model, 1, 8)
    mask = ZeroMask(det, ["0"])
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    with mask:
        for _ in range(5):
            opt.zero_grad()
            model(torch.rand(2, 3, 8, 8)).square().mean().backward()
            assert exactly_zero(model[0].weight.grad) and model[2].weight.grad.abs().sum() > 0
            opt.step()
    assert exactly_zero(model[0].weight)
    state = opt.state[model[0].weight]
    assert exactly_zero(state["exp_avg"]) and exactly_zero(state["exp_avg_sq"])
    assert not exactly_zero(model[0].bias)  # the bias trains: a zeroed conv outputs it
    with pytest.raises(XpruneError, match="does not have"):
        ZeroMask(det, ["9"])


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, synth_data):
    """A YOLOv8n (random init, 64 px) with its plan's layers zeroed, saved as `xprune prune` saves it, its plan
    naming the unpruned checkpoint it was made from."""
    from xprune.importance.scores import score_layers
    from xprune.prune.plan import apply_plan, plan_pruning

    det = build_detector("yolov8n", "none", num_classes=CocoDetectionSet.from_folder(
        synth_data, "train", SIZE).num_classes, input_size=SIZE)
    scores = score_layers(det, "l1")
    for e in scores["layers"]:  # three bypassable layers: the rest of the model still learns
        if e["layer"] in BYPASSED:
            e["score"] = -1.0
    plan = plan_pruning(det, scores, 0.05, "all")
    assert sorted(plan.layers) == sorted(BYPASSED)
    folder = tmp_path_factory.mktemp("pruned")
    save_checkpoint(det, folder / "unpruned.pt")
    plan.weights = str(folder / "unpruned.pt")
    apply_plan(det, plan)
    path = folder / "pruned.pt"
    save_checkpoint(det, path, meta={"pruning": plan.to_json()})
    return path, plan.layers


@pytest.mark.slow
def test_the_distilled_loop_keeps_weights_grads_and_moments_exactly_zero_and_folds_the_same(synth_data, pruned,
                                                                                           tmp_path):
    path, layers = pruned
    det = load_checkpoint(path, "yolov8n")
    teacher = load_checkpoint(path.with_name("unpruned.pt"), "yolov8n")
    train = CocoDetectionSet.from_folder(synth_data, "train", SIZE, limit=2)
    before = {n: p.detach().clone() for n, p in det.model.named_parameters()}
    folded_before = FoldAnalysis.of(copy.deepcopy(det))
    state = tmp_path / "s.pt"
    lines = []
    history = finetune_layers(det, train, layers, FinetuneSettings(epochs=1, batch_size=2, lr=1e-2), state,
                              log=lines.append, teacher=teacher)
    assert history[0]["distill_loss"] > 0 and "task_loss" in history[0]  # zeroed layers: the student differs
    assert any(line.startswith("estimated ") for line in lines) and "distilling" in lines[0]
    convs = det.conv_layers()
    for n in layers:
        assert exactly_zero(convs[n].weight), n
        assert convs[n].weight.grad is None or exactly_zero(convs[n].weight.grad), n
    names = [n for n, p in det.model.named_parameters() if p.requires_grad]
    moments = torch.load(state, weights_only=False)["optimizer"]["state"]
    for i, name in enumerate(names):
        if name.removesuffix(".weight") in layers and name.endswith(".weight"):
            assert exactly_zero(moments[i]["exp_avg"]) and exactly_zero(moments[i]["exp_avg_sq"]), name
    moved = [n for n, p in det.model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert moved, "the other weights train"
    assert all(convs[n].weight.requires_grad for n in layers)  # hooks gone, nothing frozen
    assert nonzero_layers(teacher, layers) == layers  # the teacher is the unpruned model, untouched
    folded_after = FoldAnalysis.of(det)
    assert folded_before.macs_after() == folded_after.macs_after() < folded_after.macs_before
    assert folded_before.outcome().removed_nodes == folded_after.outcome().removed_nodes


def test_bad_input_is_one_line(tmp_path, capsys, synth_data, pruned):
    path, _ = pruned
    plain = tmp_path / "plain.pt"
    save_checkpoint(load_checkpoint(path, "yolov8n"), plain)  # no plan in its meta
    no_train = tmp_path / "data"
    shutil.copytree(synth_data, no_train)
    (no_train / "annotations" / "instances_train.json").unlink()
    base = ["finetune", "--model", "yolov8n", "--epochs", "1", "--out", str(tmp_path / "ft.pt"), "--quiet"]
    anonymous = tmp_path / "anonymous.pt"  # a plan that does not name the weights it was made from
    det = load_checkpoint(path, "yolov8n")
    save_checkpoint(det, anonymous, meta={"pruning": {k: v for k, v in det.meta["pruning"].items() if k != "weights"}})
    for weights, data, extra, message in [
            (plain, synth_data, [], "carries no pruning plan"),
            (path, no_train, [], "has no train split"),
            (tmp_path / "missing.pt", synth_data, [], "checkpoint not found"),
            (anonymous, synth_data, [], "does not name the weights it was made from; pass --teacher"),
            (path, synth_data, ["--teacher", str(tmp_path / "gone.pt")], "are not here (distillation needs them)"),
            (path, synth_data, ["--distill-weight", "0"], "distillation weight must be positive"),
            (path, synth_data, ["--warmup", "1.5"], "warm-up is a fraction"),
            (path, synth_data, ["--lr", "-1"], "positive batch size and learning rate")]:
        code, _, err = run_cli(base + ["--weights", str(weights), "--data", str(data), *extra], capsys)
        assert code == 2 and message in one_line_error(err), err
        assert not (tmp_path / "ft.pt").exists()
    with pytest.raises(SystemExit) as exc:
        run_cli(base + ["--weights", str(path), "--data", str(synth_data), "--schedule", "linear"], capsys)
    assert exc.value.code == 2 and "invalid choice: 'linear'" in capsys.readouterr().err
    with pytest.raises(XpruneError, match="unknown schedule 'linear'"):
        FinetuneSettings(epochs=1, schedule="linear")
    for epochs in ("0", "-3"):
        with pytest.raises(SystemExit) as exc:
            run_cli(["finetune", "--model", "yolov8n", "--weights", str(path), "--data", str(synth_data), "--epochs",
                     epochs, "--out", str(tmp_path / "ft.pt")], capsys)
        assert exc.value.code == 2 and "must be positive" in one_line_error(capsys.readouterr().err)
    with pytest.raises(XpruneError, match="positive integer"):
        FinetuneSettings(epochs=0)


class Interrupted(Exception):
    pass


@pytest.mark.slow
def test_finetune_checkpoint_resumes_keeps_zeros_and_folds_the_same(tmp_path, capsys, synth_data, pruned):
    path, layers = pruned
    out = tmp_path / "ft.pt"
    args = dict(settings=FinetuneSettings(epochs=2, batch_size=4), train_images=4, val_images=4)

    def stop_after_first_epoch(line):
        if line.startswith("epoch 1/"):
            raise Interrupted

    with pytest.raises(Interrupted):
        finetune_checkpoint("yolov8n", path, synth_data, 2, out, log=stop_after_first_epoch, **args)
    assert state_path_for(out).is_file() and not out.exists()
    other = dict(args, settings=FinetuneSettings(epochs=2, batch_size=2))
    with pytest.raises(XpruneError, match=r"training state of another run \(its settings.batch_size differs\)"):
        finetune_checkpoint("yolov8n", path, synth_data, 2, out, log=lambda m: None, **other)

    code, stdout, err = run_cli(["finetune", "--model", "yolov8n", "--weights", str(path), "--data", str(synth_data),
                                 "--epochs", "2", "--batch-size", "4", "--train-images", "4", "--val-images", "4",
                                 "--out", str(out), "--quiet"], capsys)
    lines = err.splitlines()
    assert code == 0, err
    assert any(line.startswith("resuming after epoch 1/2") for line in lines)
    assert "still zero" in stdout
    report = json.loads(out.with_suffix(".finetune.json").read_text())
    assert report["distillation"]["on"] and report["distillation"]["teacher"] == str(path.with_name("unpruned.pt"))
    assert report["distillation"]["weight"] == 1.0 and "KL" in report["distillation"]["formula"]
    assert all({"task_loss", "distill_loss"} <= h.keys() for h in report["history"])
    assert report["settings"]["lr"] > 0 and report["settings"]["schedule"] == "one-cycle"
    assert report["plan"]["selected"] and [e["layer"] for e in report["plan"]["selected"]] == layers
    assert {"val_map_before", "val_map_after", "seconds_per_epoch"} <= report.keys()
    assert [h["epoch"] for h in report["history"]] == [1, 2]
    assert not state_path_for(out).exists() and not state_path_for(out).with_suffix(".json").exists()  # finished

    tuned = load_checkpoint(out, "yolov8n")
    assert tuned.meta["pruning"]["selected"] == report["plan"]["selected"]
    assert tuned.meta["finetune"]["val_map_after"] == report["val_map_after"]
    convs = tuned.conv_layers()
    assert all(exactly_zero(convs[n].weight) for n in layers)
    # the export folds the same layers as before fine-tuning: the same zero-weight convs, the same MACs left
    before, after = FoldAnalysis.of(load_checkpoint(path, "yolov8n")), FoldAnalysis.of(tuned)
    assert before.macs_after() == after.macs_after() < after.macs_before
    assert before.outcome().removed_nodes == after.outcome().removed_nodes


def test_the_learning_rate_is_a_fraction_of_the_reference_recipes_and_the_cosine_schedule_warms_up():
    from xprune.train.schedule import (COSINE_FLOOR, FINETUNE_LR_FRACTION, finetune_lr, lr_schedule,
                                       warmup_cosine_factor)

    yolo = build_detector("yolov8n", "none", num_classes=6, input_size=SIZE)
    assert finetune_lr(yolo) == pytest.approx(FINETUNE_LR_FRACTION * 0.001)  # Ultralytics' lr0 fit: 0.01 / (4 + 6)
    ssd = build_detector("ssdlite320-mbv3", "none", num_classes=6, input_size=SIZE)
    assert finetune_lr(ssd) == pytest.approx(FINETUNE_LR_FRACTION * 2e-3)
    assert FinetuneSettings(epochs=1).for_detector(ssd).lr == finetune_lr(ssd)
    assert FinetuneSettings(epochs=1, lr=3e-4).for_detector(ssd).lr == 3e-4
    with pytest.raises(XpruneError, match="not set"):
        FinetuneSettings(epochs=1).train_settings()
    factors = [warmup_cosine_factor(step, 100, 10) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0 and factors[10] == 1.0
    assert all(a >= b for a, b in zip(factors[10:], factors[11:])) and factors[-1] > COSINE_FLOOR
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = lr_schedule(opt, "cosine", 0.5, 100, 0.1)
    seen = []
    for _ in range(100):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.5 * f for f in factors])


@pytest.mark.slow  # three jitted runs: over a minute on two cores
def test_a_jax_model_fine_tunes_distilled_with_zeroed_kernels_held_at_zero_and_resumes(synth_data, tmp_path):
    pytest.importorskip("jax")
    pytest.importorskip("optax")
    import numpy as np

    train = CocoDetectionSet.from_folder(synth_data, "train", SIZE, limit=4)
    teacher = build_detector("tinyssd-jax", "none", num_classes=train.num_classes, input_size=SIZE)
    layers = list(teacher.conv_layers())[1:3]
    settings = FinetuneSettings(epochs=2, batch_size=2, lr=1e-2)

    def pruned():
        det = copy.deepcopy(teacher)
        det.zero_layers(layers)
        return det

    def arrays(det):
        from flax import nnx
        return {k: np.array(v) for k, v in
                nnx.traversals.flatten_mapping(nnx.to_pure_dict(nnx.state(det.model))).items()}

    straight = pruned()
    lines = []
    history = finetune_layers(straight, train, layers, settings, tmp_path / "a.state", log=lines.append,
                              teacher=teacher)
    assert not nonzero_layers(straight, layers) and nonzero_layers(teacher, layers) == layers
    assert [h["epoch"] for h in history] == [1, 2] and history[0]["distill_loss"] > 0
    assert any(line.startswith("estimated ") for line in lines)
    convs = straight.conv_layers()
    for n in layers:
        kernel = np.asarray(convs[n].kernel.get_value())
        assert not kernel.any() and not np.signbit(kernel).any(), n  # +0.0 everywhere
    before, after = arrays(pruned()), arrays(straight)
    assert any(not np.array_equal(before[k], after[k]) for k in before), "the other weights train"

    def stop_after_first_epoch(line):
        if line.startswith("epoch 1/"):
            raise Interrupted

    with pytest.raises(Interrupted):
        finetune_layers(pruned(), train, layers, settings, tmp_path / "b.state", log=stop_after_first_epoch,
                        teacher=teacher)
    resumed, lines = pruned(), []
    finetune_layers(resumed, train, layers, settings, tmp_path / "b.state", log=lines.append, teacher=teacher)
    assert any(line.startswith("resuming after epoch 1/2") for line in lines)
    assert all(np.array_equal(v, arrays(resumed)[k]) for k, v in after.items())
