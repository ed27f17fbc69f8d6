"""ONNX export with folding: exact against the unfolded graph for every zoo family, and the CLI around it."""

import copy
import json

import numpy as np
import onnx
import pytest
import torch

from cli_helpers import one_line_error, run_cli
from xprune.cli import main
from xprune.export.onnx_export import export_onnx, get_metadata
from xprune.importance.scores import score_layers
from xprune.models import build_detector, save_checkpoint
from xprune.models.zoo import FAMILIES
from xprune.prune.plan import apply_plan, plan_pruning
from xprune.runtime.onnxruntime.runner import OnnxRuntimeRunner

FAMILY_SIZES = {"yolov8n": 64, "ssdlite320-mbv3": 96, "ssd-mobilenetv2": 96, "ssd-shufflenetv2": 96,
                "ssd-resnet50": 96, "retinanet-r50-fpn": 96, "fasterrcnn-r50-fpn": 96, "yolo11n": 64}
FAST = ("yolov8n",)  # the fast loop folds one family; the full suite every family


def _pruned(name: str, size: int, rate: float = 0.1):
    torch.manual_seed(0)
    det = build_detector(name, "none", num_classes=6, input_size=size)
    plan = plan_pruning(det, score_layers(det, "l1"), rate, "safe")
    pruned = copy.deepcopy(det)
    apply_plan(pruned, plan)
    pruned.meta = {"pruning": plan.to_json()}
    return pruned, plan


def _rel_err(a, b) -> float:
    return max(float(np.max(np.abs(x - y))) / max(1.0, float(np.max(np.abs(x)))) for x, y in zip(a, b))


def test_every_zoo_family_is_covered():
    # every registered PyTorch family (one YOLOv8 size stands for all); the JAX ones: tests/unit/models/test_tinyssd_jax.py
    torch_families = {n for n, f in FAMILIES.items() if f.framework == "torch"}
    one_per_version = {n for n in torch_families if not n.startswith(("yolov8", "yolo11")) or n in ("yolov8n", "yolo11n")}
    assert one_per_version == set(FAMILY_SIZES)


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(FAMILY_SIZES)])
def test_folded_export_is_exact_and_smaller(name, tmp_path):
    pruned, plan = _pruned(name, FAMILY_SIZES[name])
    zeroed = export_onnx(pruned, tmp_path / "zeroed.onnx", fold=False)
    folded = export_onnx(pruned, tmp_path / "folded.onnx", fold=True)
    assert zeroed["variant"] == "zeroed" and folded["variant"] == "folded"
    assert folded["macs_after"] < zeroed["macs_after"], "zeroed layers should leave the folded graph"
    assert folded["nodes_after"] <= zeroed["nodes_after"]
    assert not folded["dead_outputs"]
    x = np.random.default_rng(0).random((1, 3, pruned.input_size, pruned.input_size), dtype=np.float32)
    with OnnxRuntimeRunner(tmp_path / "zeroed.onnx", threads=1) as a, OnnxRuntimeRunner(tmp_path / "folded.onnx", threads=1) as b:
        assert _rel_err(a.infer(x), b.infer(x)) <= 1e-5


def test_onnx_matches_pytorch_and_carries_metadata(tmp_path):
    pruned, plan = _pruned("yolov8n", 64)
    report = export_onnx(pruned, tmp_path / "m.onnx")
    meta = get_metadata(onnx.load(str(tmp_path / "m.onnx")))
    assert meta["family"] == "yolov8n" and meta["variant"] == "folded" and meta["method"] == "l1"
    assert meta["macs_after"] == report["macs_after"]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = tuple(t.numpy() for t in pruned.raw(x))
    with OnnxRuntimeRunner(tmp_path / "m.onnx", threads=1) as r:
        assert _rel_err(expected, r.infer(x.numpy())) <= 1e-4


# --- CLI -----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pruned_ckpt(tmp_path_factory):
    pruned, _ = _pruned("yolov8n", 64)
    path = tmp_path_factory.mktemp("ckpt") / "pruned.pt"
    save_checkpoint(pruned, path, meta=pruned.meta)
    return path


@pytest.fixture(scope="module")
def folded_onnx(pruned_ckpt):
    out = pruned_ckpt.with_name("folded.onnx")
    assert main(["export", "--model", "yolov8n", "--weights", str(pruned_ckpt), "--out", str(out)]) == 0
    return out


def test_export_cli_reports_and_records(folded_onnx, pruned_ckpt, tmp_path, capsys):
    report = json.loads(folded_onnx.with_suffix(".onnx.json").read_text())
    assert report["macs_after"] < report["macs_before"]
    code, out, _ = run_cli(["export", "--model", "yolov8n", "--weights", str(pruned_ckpt), "--no-fold",
                         "--out", str(tmp_path / "z.onnx")], capsys)
    assert code == 0 and "nodes" in out and "MACs" in out
    assert json.loads((tmp_path / "z.onnx.json").read_text())["macs_after"] == report["macs_before"]


def test_fold_cli_on_a_plain_onnx_file(pruned_ckpt, tmp_path, capsys):
    zeroed = tmp_path / "z.onnx"
    assert main(["export", "--model", "yolov8n", "--weights", str(pruned_ckpt), "--no-fold", "--out", str(zeroed)]) == 0
    code, out, _ = run_cli(["fold", str(zeroed), str(tmp_path / "f.onnx")], capsys)
    assert code == 0 and (tmp_path / "f.onnx").is_file() and "MACs" in out


def _dynamic_copy(src, dst):
    model = onnx.load(str(src))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.save(model, str(dst))


def test_fold_cli_dynamic_shape_needs_input_shape(pruned_ckpt, tmp_path, capsys):
    zeroed, dynamic = tmp_path / "z.onnx", tmp_path / "dyn.onnx"
    assert main(["export", "--model", "yolov8n", "--weights", str(pruned_ckpt), "--no-fold", "--out", str(zeroed)]) == 0
    _dynamic_copy(zeroed, dynamic)
    capsys.readouterr()
    code, _, err = run_cli(["fold", str(dynamic), str(tmp_path / "out.onnx")], capsys)
    assert code == 2 and "--input-shape" in one_line_error(err)
    assert not (tmp_path / "out.onnx").exists()
    code, _, _ = run_cli(["fold", str(dynamic), str(tmp_path / "out.onnx"), "--input-shape", "images:1x3x64x64"], capsys)
    assert code == 0 and (tmp_path / "out.onnx").is_file()


@pytest.mark.parametrize("content", [None, b"", b"plain text, not a model", b"\x08\x07\x12\x03abc\xff\xff"])
def test_fold_cli_rejects_bad_files(tmp_path, capsys, content):
    src = tmp_path / "in.onnx"
    if content is not None:
        src.write_bytes(content)
    code, _, err = run_cli(["fold", str(src), str(tmp_path / "out.onnx")], capsys)
    assert code == 2 and one_line_error(err).startswith("xprune: error:")
    assert list(tmp_path.iterdir()) == ([src] if content is not None else [])


def test_fold_and_export_cli_unwritable_output(folded_onnx, pruned_ckpt, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = run_cli(["fold", str(folded_onnx), str(blocker / "out.onnx")], capsys)
    assert code == 2 and "cannot write" in one_line_error(err)
    code, _, err = run_cli(["export", "--model", "yolov8n", "--weights", str(pruned_ckpt),
                         "--out", str(blocker / "out.onnx")], capsys)
    assert code == 2 and "cannot write" in one_line_error(err)


def test_export_trt_without_tensorrt_fails_cleanly(pruned_ckpt, tmp_path, capsys):
    out = tmp_path / "m.engine"
    code, _, err = run_cli(["export", "--model", "yolov8n", "--weights", str(pruned_ckpt), "--engine", "trt",
                         "--out", str(out)], capsys)
    assert code == 2
    assert one_line_error(err) == ("xprune: error: TensorRT is not installed; install xprune[trt] on a machine with an "
                              "NVIDIA GPU")
    assert list(tmp_path.iterdir()) == []
