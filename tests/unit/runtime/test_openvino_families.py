"""OpenVINO in fp32 computes what ONNX Runtime computes, on every architecture `xprune models` lists (each family; of
YOLOv8 and YOLO11 the nano size, whose s/m/l/x sizes are the same graph at other widths), folded and not:
random weights at a small input size, 10 % of the safe layers zeroed by L1, the export run through OpenVINO both as
the ONNX file itself and as an IR built from it, against ONNX Runtime within the fp32 tolerances. Slow (about 40 s
for YOLOv8n alone on two cores, minutes for the ResNet-50 families); `tests/unit/runtime/test_openvino.py` checks
one fp32 export in the fast loop. Skipped without OpenVINO (and the JAX family without JAX)."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from xprune.bench.run import open_target
from xprune.export.onnx_export import export_onnx
from xprune.importance.scores import score_layers
from xprune.models import build_detector
from xprune.models.zoo import FAMILIES
from xprune.prune.plan import apply_plan, plan_pruning
from xprune.runtime.compare import compare_runners
from xprune.runtime.registry import EngineOptions, backend_named, onnx_backend

ARCHITECTURES = sorted(n for n in FAMILIES if not re.fullmatch(r"yolo(v8|11)[smlx]", n))


def input_size(name: str) -> int:
    """Small, and large enough for every family's feature pyramid."""
    return 64 if name.startswith(("yolo", "tinyssd")) else 96


@pytest.mark.slow
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_openvino_fp32_matches_onnxruntime_folded_and_not(name, tmp_path):
    pytest.importorskip("openvino")
    if FAMILIES[name].framework == "jax":
        pytest.importorskip("jax")
    torch.manual_seed(0)
    det = build_detector(name, "none", num_classes=6, input_size=input_size(name))
    plan = plan_pruning(det, score_layers(det, "l1"), 0.1, "safe")
    assert plan.layers, "the check needs zeroed layers to fold"
    pruned = copy.deepcopy(det)
    apply_plan(pruned, plan)
    pruned.meta = {"pruning": plan.to_json()}
    openvino = backend_named("openvino")
    macs = {}
    for variant, fold in (("zeroed", False), ("folded", True)):
        onnx_path = tmp_path / f"{variant}.onnx"
        macs[variant] = export_onnx(pruned, onnx_path, fold=fold)["macs_after"]
        ir_path = onnx_path.with_suffix(".xml")
        assert openvino.build(onnx_path, ir_path, EngineOptions())["precision"] == "fp32"
        reference = open_target(onnx_path, backend=onnx_backend())
        shape = reference.info["input_shape"]
        for target in (open_target(onnx_path, backend=openvino), open_target(ir_path)):
            assert target.runner.name == "openvino" and target.runner.precision == "fp32"
            report = compare_runners(target.runner, reference.runner, shape, inputs=2)
            assert report["passed"], (variant, target.path.name, report["outputs"])
    assert macs["folded"] < macs["zeroed"]
