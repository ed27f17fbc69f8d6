"""Fine-tuning YOLO through Ultralytics' own trainer: the zeroed layers stay exactly 0.0 in the model, its optimizer
state and its EMA (hence in last.pt and best.pt), an interrupted run resumes from last.pt, the exported graph folds
the same layers afterwards, a COCO-format folder reaches the trainer as Ultralytics labels, and bad input is one
line."""

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from xprune.data.coco import CocoDetectionSet
from xprune.errors import XpruneError
from xprune.models import build_detector, load_checkpoint, save_checkpoint
from xprune.train.yolo import ultralytics_data_yaml
from xprune.train.yolo_finetune import HoldAtZero, finetune_with_ultralytics, trainer_args

SIZE = 64
BYPASSED = ["model.2.m.0.cv1.conv", "model.4.m.1.cv2.conv", "model.22.cv2.0.0.conv"]


def exactly_zero(t: torch.Tensor) -> bool:
    """+0.0 in every element, bit for bit (fp32 or fp16)."""
    t = t.detach().contiguous()
    return bool((t.view(torch.int16 if t.dtype == torch.float16 else torch.int32) == 0).all())


def test_hooks_and_rezeroing_hold_model_momentum_and_ema_at_zero_through_sgd_with_weight_decay(tmp_path):
    from ultralytics.utils.torch_utils import ModelEMA

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.SiLU(), nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        model[0].weight.zero_()
    trainer = SimpleNamespace(model=model, ema=ModelEMA(model), start_epoch=0, epoch=0, epochs=3, metrics={},
                              args=SimpleNamespace(val=True))
    lines = []
    hold = HoldAtZero(["0"], tmp_path / "ema.pt", log=lines.append)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.5)
    before = copy.deepcopy(model[3].weight)
    hold.on_train_start(trainer)
    for _ in range(4):  # hooks alone (no re-zeroing): zero gradients, zero momentum, a zero EMA
        model(torch.rand(2, 3, 8, 8)).square().mean().backward()
        assert exactly_zero(model[0].weight.grad)
        opt.step()
        opt.zero_grad()
        trainer.ema.update(model)
    assert exactly_zero(model[0].weight) and exactly_zero(opt.state[model[0].weight]["momentum_buffer"])
    assert exactly_zero(trainer.ema.ema[0].weight)
    assert not torch.equal(before, model[3].weight) and not exactly_zero(model[1].bias)  # the rest and the BN train
    with torch.no_grad():  # whatever else writes there, the end of the batch puts it back
        model[0].weight.add_(1.0)
        trainer.ema.ema[0].weight.add_(1.0)
    hold.on_train_batch_end(trainer)
    assert exactly_zero(model[0].weight) and exactly_zero(trainer.ema.ema[0].weight)

    hold.on_model_save(trainer)
    saved = torch.load(tmp_path / "ema.pt", weights_only=True)
    assert (saved["epoch"], saved["epochs"], saved["finished"]) == (1, 3, False)
    assert exactly_zero(saved["state_dict"]["0.weight"]) and lines[-1].startswith("epoch 1/3")
    with torch.no_grad():
        trainer.ema.ema[0].weight.add_(1.0)
    with pytest.raises(XpruneError, match="no longer zero in the EMA"):  # never saved with the layer back
        hold.on_train_end(trainer)
    with pytest.raises(XpruneError, match="not in the model"):
        HoldAtZero(["9"], tmp_path / "x.pt").on_train_start(trainer)


def test_a_coco_folder_becomes_ultralytics_labels_with_the_same_boxes(tmp_path, synth_data):
    yaml_path = ultralytics_data_yaml(synth_data, tmp_path / "data")
    for split in ("train", "val"):
        ours = CocoDetectionSet.from_folder(synth_data, split, 128)
        theirs = CocoDetectionSet.from_folder(yaml_path, split, 128)
        assert theirs.class_names == ours.class_names and len(theirs) == len(ours)
        for i in range(len(ours)):
            a, b = ours.sample(i), theirs.sample(i)
            assert torch.equal(a["labels"], b["labels"])
            assert torch.allclose(a["boxes"], b["boxes"], atol=1e-2)
    written = yaml_path.stat().st_mtime_ns
    assert ultralytics_data_yaml(synth_data, tmp_path / "data") == yaml_path  # the same inputs: reused
    assert yaml_path.stat().st_mtime_ns == written
    assert ultralytics_data_yaml(yaml_path, tmp_path / "other") == yaml_path  # a data.yaml is used as it is
    assert not (tmp_path / "other").exists()
    with pytest.raises(XpruneError, match="no class for"):
        ultralytics_data_yaml(synth_data, tmp_path / "few", category_ids=[1])


def test_trainer_args_carry_a_recipe_but_keep_the_run_and_fine_tuning_rate_their_own():
    reference_run = {"model": "yolov8n.yaml", "data": "x/data.yaml", "epochs": 300, "lr0": 0.01, "optimizer": "auto",
                     "warmup_bias_lr": 0.1, "mosaic": 0.5, "imgsz": 640, "project": "runs", "name": "ref"}
    args = trainer_args(reference_run, 5, 3e-4, {"imgsz": SIZE, "batch": 16}, {"imgsz": None, "batch": 8})
    assert (args["epochs"], args["lr0"], args["optimizer"], args["warmup_bias_lr"]) == (5, 3e-4, "AdamW", 0.0)
    assert (args["mosaic"], args["imgsz"], args["batch"]) == (0.5, 640, 8)
    assert not {"model", "data", "project", "name"} & set(args)
    assert trainer_args({}, 1, 1e-4, {"imgsz": SIZE})["cos_lr"] is True  # fine-tuning defaults without a recipe
    with pytest.raises(XpruneError, match="does not know: not_an_arg"):
        trainer_args({"not_an_arg": 1}, 1, 1e-4, {})


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, synth_data):
    """A YOLOv8n (random init, 64 px) with three bypassable layers zeroed, saved as `xprune prune` saves it."""
    from xprune.importance.scores import score_layers
    from xprune.prune.plan import apply_plan, plan_pruning

    classes = CocoDetectionSet.from_folder(synth_data, "train", SIZE).num_classes
    det = build_detector("yolov8n", "none", num_classes=classes, input_size=SIZE)
    scores = score_layers(det, "l1")
    for e in scores["layers"]:
        if e["layer"] in BYPASSED:
            e["score"] = -1.0
    plan = plan_pruning(det, scores, 0.05, "all")
    assert sorted(plan.layers) == sorted(BYPASSED)
    apply_plan(det, plan)
    path = tmp_path_factory.mktemp("pruned") / "pruned.pt"
    save_checkpoint(det, path, meta={"pruning": plan.to_json()})
    return path, plan


def test_bad_input_is_one_line(tmp_path, synth_data, pruned):
    path, plan = pruned
    other = tmp_path / "other.pt"
    save_checkpoint(build_detector("yolov8n", "none", num_classes=2, input_size=SIZE), other)
    for weights, layers, epochs, message in [
            (path, ["model.0.conv"], 1, "is not zero"),
            (path, ["model.99.conv"], 1, "not in the model"),
            (other, [], 1, "the model has 2 classes"),
            (tmp_path / "missing.pt", plan.layers, 1, "checkpoint not found"),
            (path, plan.layers, 0, "positive integer")]:
        with pytest.raises(XpruneError, match=message) as err:
            finetune_with_ultralytics(weights, layers, synth_data, epochs, tmp_path / "ft.pt", log=lambda m: None)
        assert "\n" not in str(err.value)
    with pytest.raises(XpruneError, match="does not know"):
        finetune_with_ultralytics(path, plan.layers, synth_data, 1, tmp_path / "ft.pt", recipe={"lr": 1},
                                  log=lambda m: None)
    assert not (tmp_path / "ft.pt").exists()


class Interrupted(Exception):
    pass


@pytest.mark.slow
def test_ultralytics_trainer_holds_zeros_resumes_and_the_export_folds_the_same(tmp_path, synth_data, pruned):
    from xprune.export.fold.analysis import FoldAnalysis
    from xprune.export.onnx_export import export_onnx

    path, plan = pruned
    out, lines = tmp_path / "ft.pt", []
    settings = dict(batch=4, device="cpu", recipe={"mosaic": 0.0, "workers": 0}, log=lines.append)

    def interrupt(line):
        lines.append(line)
        if line.startswith("epoch 1/2"):
            raise Interrupted

    with pytest.raises(Interrupted):  # stopped after epoch 1 of 2, as a killed run would be
        finetune_with_ultralytics(path, plan.layers, synth_data, 2, out, **{**settings, "log": interrupt})
    last = tmp_path / "ft.ultralytics" / "run" / "weights" / "last.pt"
    convs = lambda model: {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}  # noqa: E731
    ema = torch.load(last, map_location="cpu", weights_only=False)["ema"]
    assert all(exactly_zero(convs(ema)[n].weight) for n in plan.layers) and not out.exists()

    lines.clear()
    record = finetune_with_ultralytics(path, plan.layers, synth_data, 2, out, **settings)
    assert any(line.startswith("resuming from") for line in lines) and record["epochs_this_run"] == 1
    assert [row["epoch"] for row in record["history"]] == [1.0, 2.0] and record["zeroed_layers_exactly_zero"]
    for weights in ("last.pt", "best.pt"):  # what Ultralytics saved: the EMA, in fp16
        model = torch.load(last.parent / weights, map_location="cpu", weights_only=False)["model"]
        assert all(exactly_zero(convs(model)[n].weight) for n in plan.layers), weights

    before, after = load_checkpoint(path), load_checkpoint(out)
    assert after.meta["pruning"] == plan.to_json() and after.meta["finetune"]["epochs"] == 2
    assert all(exactly_zero(after.conv_layers()[n].weight) for n in plan.layers)
    trained = [n for n, p in after.model.state_dict().items() if not torch.equal(p, before.model.state_dict()[n])]
    assert len(trained) > 100, "the rest of the model trained"
    folded = [export_onnx(d, tmp_path / f"{i}.onnx") for i, d in enumerate((before, after))]
    assert folded[0]["macs_after"] == folded[1]["macs_after"] < folded[0]["macs_before"]
    assert FoldAnalysis.of(before).macs_after() == FoldAnalysis.of(after).macs_after()

    lines.clear()  # the same inputs again: the finished run is reused, not trained again
    again = finetune_with_ultralytics(path, plan.layers, synth_data, 2, out, **settings)
    assert any(line.startswith("using the finished run") for line in lines) and again["epochs_this_run"] == 0


def test_finetune_names_an_unknown_trainer_in_one_line(tmp_path, capsys):
    from cli_helpers import one_line_error, run_cli

    weights = tmp_path / "pruned.pt"
    weights.write_bytes(b"not read: the trainer is checked first")
    code, _, err = run_cli(["finetune", "--model", "yolov8n", "--weights", str(weights), "--data", str(tmp_path),
                            "--epochs", "1", "--out", str(tmp_path / "ft.pt"), "--trainer", "keras"], capsys)
    assert code == 2 and "unknown trainer 'keras'" in one_line_error(err) and not (tmp_path / "ft.pt").exists()
