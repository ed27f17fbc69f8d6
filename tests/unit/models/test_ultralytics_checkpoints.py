"""Checkpoints from users' own training: Ultralytics .pt files say which family and size they hold (read from the
model's yaml, not from --model), other tasks are refused; torchvision state_dicts get their class count from the
predictor. YOLO11 goes through score -> prune -> export -> fold exactly as YOLOv8 does."""

import copy

import numpy as np
import pytest
import torch

from cli_helpers import one_line_error, run_cli
from xprune.data.coco import calibration_set
from xprune.errors import XpruneError
from xprune.export.onnx_export import export_onnx
from xprune.importance.scores import score_layers
from xprune.models import build_detector, load_checkpoint
from xprune.models.zoo import FAMILIES, _classes_in_state
from xprune.prune.plan import apply_plan, plan_pruning
from xprune.runtime.onnxruntime.runner import OnnxRuntimeRunner

SIZE = 64
SYNTH_CLASSES = 6  # the synth fixture's classes


def _ultralytics_ckpt(path, cfg: str, nc: int = SYNTH_CLASSES, yaml_file: str | None = None):
    """An Ultralytics-style checkpoint as its trainer leaves it: the fp16 model under 'model', no EMA."""
    from ultralytics.nn.tasks import ClassificationModel, DetectionModel, SegmentationModel
    cls = SegmentationModel if "-seg" in cfg else ClassificationModel if "-cls" in cfg else DetectionModel
    torch.manual_seed(0)
    model = cls(cfg, nc=nc, verbose=False)
    if yaml_file:
        model.yaml["yaml_file"] = yaml_file
    torch.save({"epoch": -1, "model": copy.deepcopy(model).half(), "ema": None, "optimizer": None,
                "train_args": {"task": model.task if hasattr(model, "task") else "detect"}}, path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ultralytics")
    return {name: _ultralytics_ckpt(folder / f"{name}.pt", f"{name}.yaml")
            for name in ("yolov8n", "yolo11n", "yolov8s")}


def test_yolo11_families_are_registered_and_build_offline():
    assert {f"yolo11{s}" for s in "nsmlx"} <= set(FAMILIES)
    det = build_detector("yolo11n", "none", num_classes=3, input_size=SIZE)
    assert det.family == "yolo11n" and det.num_classes == 3 and det.predictor_layers
    boxes, scores = det.raw(torch.rand(1, 3, SIZE, SIZE))
    assert scores.shape[-1] == 3 and boxes.shape[-1] == 4


@pytest.mark.parametrize("name", ["yolov8n", "yolo11n", "yolov8s"])
def test_family_is_read_from_the_checkpoint(ckpts, name):
    det = load_checkpoint(ckpts[name], None, SIZE)
    assert det.family == name and det.num_classes == SYNTH_CLASSES and det.input_size == SIZE
    assert load_checkpoint(ckpts[name], name, SIZE).family == name  # and agrees with a matching --model


def test_family_comes_from_the_architecture_not_the_file_name(tmp_path):
    path = _ultralytics_ckpt(tmp_path / "m.pt", "yolo11n.yaml", yaml_file="/home/me/my-model.yaml")
    assert load_checkpoint(path, None, SIZE).family == "yolo11n"


@pytest.mark.parametrize("held, asked", [("yolov8s", "yolov8n"), ("yolov8n", "yolo11n"),
                                         ("yolo11n", "ssdlite320-mbv3")])
def test_model_disagreeing_with_checkpoint_is_refused(ckpts, held, asked):
    with pytest.raises(XpruneError, match=f"holds a {held} model, not {asked}$"):
        load_checkpoint(ckpts[held], asked, SIZE)


@pytest.mark.parametrize("cfg, task", [("yolov8n-seg.yaml", "segmentation"), ("yolov8n-cls.yaml", "classification")])
def test_other_tasks_are_refused(tmp_path, cfg, task):
    path = _ultralytics_ckpt(tmp_path / "m.pt", cfg)
    with pytest.raises(XpruneError, match=f"holds an Ultralytics {task} model; xprune prunes detection models only"):
        load_checkpoint(path, None, SIZE)


def test_other_detector_architectures_are_refused(tmp_path):
    path = _ultralytics_ckpt(tmp_path / "m.pt", "yolov8n-p2.yaml")
    with pytest.raises(XpruneError, match="built from yolov8n-p2.yaml that is none of YOLOv8, YOLO11"):
        load_checkpoint(path, "yolov8n", SIZE)


@pytest.mark.slow
def test_cli_model_is_optional_for_a_checkpoint_and_checked_when_given(ckpts, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    code, _, err = run_cli(["export", "--weights", str(ckpts["yolo11n"]), "--input-size", str(SIZE), "--out", str(out)],
                           capsys)
    assert code == 0 and out.is_file(), err
    code, _, err = run_cli(["export", "--model", "yolov8n", "--weights", str(ckpts["yolov8s"]), "--out", str(out)],
                           capsys)
    assert code == 2 and "holds a yolov8s model, not yolov8n" in one_line_error(err)
    code, _, err = run_cli(["export", "--weights", "none", "--out", str(out)], capsys)
    assert code == 2 and "--weights none needs --model NAME" in one_line_error(err)


def _rel_err(a, b) -> float:
    return max(float(np.max(np.abs(x - y))) / max(1.0, float(np.max(np.abs(x)))) for x, y in zip(a, b))


@pytest.mark.slow
def test_yolo11_scores_prunes_and_folds_exactly(ckpts, synth_data, tmp_path):
    det = load_checkpoint(ckpts["yolo11n"], None, SIZE)
    l1 = score_layers(det, "l1")
    attr = score_layers(det, "attr", calibration_set(synth_data, SIZE, 4), batch_size=4)
    names = [r["layer"] for r in l1["layers"]]
    assert names == [r["layer"] for r in attr["layers"]] and len(names) == len(det.conv_layers())
    assert all(np.isfinite(r["score"]) for r in attr["layers"]) and any(r["score"] > 0 for r in attr["layers"])
    plan = plan_pruning(det, attr, 0.1, "safe")
    pruned = copy.deepcopy(det)
    assert apply_plan(pruned, plan)
    zeroed = export_onnx(pruned, tmp_path / "zeroed.onnx", fold=False)
    folded = export_onnx(pruned, tmp_path / "folded.onnx", fold=True)
    assert folded["macs_after"] < zeroed["macs_after"] and not folded["dead_outputs"]
    x = np.random.default_rng(0).random((1, 3, SIZE, SIZE), dtype=np.float32)
    with OnnxRuntimeRunner(tmp_path / "zeroed.onnx", threads=1) as a, \
            OnnxRuntimeRunner(tmp_path / "folded.onnx", threads=1) as b:
        assert _rel_err(a.infer(x), b.infer(x)) <= 1e-5


# --- torchvision state_dicts ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ssdlite():
    return build_detector("ssdlite320-mbv3", "none", num_classes=4, input_size=96)


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model", "module-prefix", "whole-module"])
def test_torchvision_state_dict_loads_with_its_class_count(ssdlite, tmp_path, wrap):
    state = ssdlite.model.state_dict()
    saved = {"bare": state, "state_dict": {"state_dict": state, "epoch": 3}, "model": {"model": state},
             "module-prefix": {f"module.{k}": v for k, v in state.items()}, "whole-module": ssdlite.model}[wrap]
    torch.save(saved, tmp_path / "m.pt")
    det = load_checkpoint(tmp_path / "m.pt", "ssdlite320-mbv3", 96)
    assert det.num_classes == 4 and det.family == "ssdlite320-mbv3"
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(ssdlite.eval().raw(x)[1], det.raw(x)[1])


def test_state_dict_needs_model_and_the_right_family(ssdlite, tmp_path):
    torch.save(ssdlite.model.state_dict(), tmp_path / "m.pt")
    with pytest.raises(XpruneError, match="does not say which model it holds; give --model"):
        load_checkpoint(tmp_path / "m.pt", None)
    with pytest.raises(XpruneError, match="does not fit ssd-mobilenetv2"):
        load_checkpoint(tmp_path / "m.pt", "ssd-mobilenetv2", 96)
    with pytest.raises(XpruneError, match="is not an xprune checkpoint for yolov8n"):
        load_checkpoint(tmp_path / "m.pt", "yolov8n", 96)


def test_ssd_on_a_backbone_state_dict(tmp_path):
    det = build_detector("ssd-mobilenetv2", "none", num_classes=2, input_size=96)
    torch.save({"model": det.model.state_dict()}, tmp_path / "m.pt")
    assert load_checkpoint(tmp_path / "m.pt", "ssd-mobilenetv2", 96).num_classes == 2


@pytest.mark.parametrize("name, state, classes", [
    ("retinanet-r50-fpn", {"head.classification_head.cls_logits.weight": torch.zeros(9 * 8, 256, 3, 3),
                           "head.regression_head.bbox_reg.weight": torch.zeros(9 * 4, 256, 3, 3)}, 7),
    ("fasterrcnn-r50-fpn", {"roi_heads.box_predictor.cls_score.weight": torch.zeros(11, 1024)}, 10),
])
def test_class_count_of_two_stage_and_retinanet_predictors(name, state, classes, tmp_path):
    assert _classes_in_state(state, name, tmp_path / "m.pt") == classes
