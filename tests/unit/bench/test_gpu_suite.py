"""The GPU evidence suite as a CPU dry run (every runtime it claims, raw samples, the A/A control, removed MACs, the
report from the JSON), its one-line errors, and the onnx2torch backend it measures folded graphs with."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from xprune.errors import XpruneError
from xprune.export.onnx_export import export_onnx
from xprune.importance.scores import score_layers
from xprune.models import build_detector
from xprune.prune.plan import apply_plan, plan_pruning
from xprune.runtime.onnx2torch.loader import ModuleFromOnnx, explicit_optional_inputs, host_arguments, to_device
from xprune.runtime.onnx2torch.runner import Onnx2TorchRunner
from xprune.runtime.onnxruntime.runner import OnnxRuntimeRunner
from xprune.runtime.registry import BACKENDS, TargetOptions, backend_for, backend_named

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_suite  # noqa: E402

sys.path.pop(0)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-suite")
    lines: list[str] = []
    assert gpu_suite.main(["--out", str(out), "--device", "cpu", "--quick"], log=lines.append) == 0
    return out, json.loads((out / gpu_suite.RESULTS).read_text()), lines


@pytest.fixture(scope="module")
def folded_onnx(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    det = build_detector("yolov8n", "none", num_classes=6, input_size=64)
    plan = plan_pruning(det, score_layers(det, "l1"), 0.1, "safe")
    pruned = copy.deepcopy(det)
    apply_plan(pruned, plan)
    pruned.meta = {"pruning": plan.to_json()}
    path = tmp_path_factory.mktemp("onnx2torch") / "folded.onnx"
    report = export_onnx(pruned, path, fold=True)
    assert report["macs_after"] < report["macs_before"]
    return path


@pytest.mark.slow
def test_dry_run_measures_every_runtime_it_claims(dry_run):
    _, doc, lines = dry_run
    assert doc["format"] == gpu_suite.FORMAT and doc["complete"]
    measured = [g for g in doc["groups"] if g["status"] == "measured"]
    assert {g["runtime"] for g in measured} == {"torch", "onnxruntime", "onnx2torch"}
    for group in measured:
        rows = [r for r in doc["rows"] if (r["model"], r["runtime"], r["precision"], r["cuda_graph"]) == (
            group["model"], group["runtime"], group["precision"], group["cuda_graph"])]
        assert [r["variant"] for r in rows] == group["variants"]
        assert "baseline" in group["variants"] and "baseline-copy" in group["variants"]  # the A/A control
        assert ("attr@0.05/folded" in group["variants"]) == (group["runtime"] != "torch")
        for row in rows:
            assert len(row["samples_ms"]) == doc["settings"]["runs"] == 3
            assert all(s > 0 for s in row["samples_ms"]) and row["median_ms"] > 0
        assert all(sorted(order) == list(range(len(rows))) for order in group["orders"])
    claimed = {(g["runtime"], g["precision"], g["cuda_graph"]): g for g in doc["groups"]}
    for key in [("torch", "fp16", False), ("torch", "fp32", True), ("onnx2torch", "fp32", True)]:
        assert claimed[key]["status"] == "skipped" and "CUDA" in claimed[key]["reason"]
    for precision in ("fp16", "int8"):
        trt = claimed["tensorrt", precision, False]
        assert trt["status"] in ("unavailable", "measured") and (trt["status"] == "measured" or trt["reason"])
    assert any("timing onnx2torch fp32" in line for line in lines)


@pytest.mark.slow
def test_dry_run_records_removed_macs_accuracy_and_environment(dry_run):
    _, doc, _ = dry_run
    (model,) = doc["models"]
    (plan,) = model["plans"]
    assert plan["plan"] == "attr@0.05" and plan["zeroed_layers"]
    assert 0 < plan["removed_mac_fraction"] < 1 and plan["macs_after"] < plan["macs_before"]
    assert plan["folded_vs_zeroed"]["passed"]
    for row in doc["rows"]:
        expected = plan["removed_mac_fraction"] if row["kind"] == "folded" else 0.0
        assert row["removed_mac_fraction"] == expected
    maps = {a["variant"]: a for a in model["accuracy"]}
    assert set(maps) == {"baseline", "attr@0.05/zeroed", "attr@0.05/folded"}
    assert maps["attr@0.05/folded"]["map"] == pytest.approx(maps["attr@0.05/zeroed"]["map"], abs=1e-6)
    env = doc["environment"]
    assert env["libraries"]["onnx2torch"] and env["onnxruntime_providers"] and "nvidia_smi" in env


@pytest.mark.slow
def test_report_is_generated_from_the_results_json(dry_run):
    out, doc, _ = dry_run
    report = (out / gpu_suite.REPORT).read_text()
    assert report == gpu_suite.render(doc)
    assert "baseline-copy" in report and "tensorrt fp16: unavailable" in report
    for row in doc["rows"]:
        assert f"| {row['variant']} | {row['median_ms']:.3f} |" in report
    doc["rows"][0]["median_ms"] = 12345.0  # the report follows the JSON, not the run
    (out / gpu_suite.RESULTS).write_text(json.dumps(doc))
    assert gpu_suite.main(["--out", str(out), "--render-only"]) == 0
    assert "| 12345.000 |" in (out / gpu_suite.REPORT).read_text()


@pytest.mark.parametrize("argv, message", [
    (["--device", "tpu"], "unknown device 'tpu'; expected cpu, cuda or cuda:N"),
    (["--device", "cpu", "--size", "100"], "--size must be a positive multiple of 32"),
    (["--device", "cpu", "--runs", "0"], "--runs must be at least 1, got 0"),
    (["--device", "cpu", "--rates", "1.5"], "--rate must be in (0, 1)"),
    (["--device", "cpu", "--models", "nonet"], "unknown model 'nonet'"),
    (["--device", "cpu", "--data", "/nonexistent"], "no annotations/instances_{val}.json in /nonexistent"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    assert gpu_suite.main(["--out", str(tmp_path / "out"), "--quick", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gpu_suite: error: ") and message in err
    assert not (tmp_path / "out").exists()


def test_cuda_without_a_gpu_and_unwritable_out_are_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert gpu_suite.main(["--out", str(blocker / "out"), "--device", "cpu", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot write to {blocker / 'out'}" in err
    if not torch.cuda.is_available():
        assert gpu_suite.main(["--out", str(tmp_path / "out"), "--device", "cuda", "--quick"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no NVIDIA GPU is visible to PyTorch" in err


def test_missing_packages_are_named_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gpu_suite, "REQUIRED", (*gpu_suite.REQUIRED, "xprune_absent_package"))
    monkeypatch.setattr(gpu_suite, "import_error", lambda m: "pillow" if m == "PIL" else (
        m if m == "xprune_absent_package" else None))
    assert gpu_suite.main(["--out", str(tmp_path), "--device", "cpu", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err == "gpu_suite: error: missing: pillow, xprune_absent_package - pip install --no-deps <wheels> " \
                  "(see docs/gpu.md)\n"


@pytest.mark.slow
def test_a_family_without_yolo_never_imports_ultralytics():
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import gpu_suite as g; "
            "s = g.settings_from(g.parse_args(['--out', 'x', '--device', 'cpu', '--models', 'ssdlite320-mbv3', "
            "'--size', '64']), ''); g.check_requirements(s); g.check_inputs(s); "
            "g.load_detector('ssdlite320-mbv3', s, 6); "
            "import xprune.runtime.onnx2torch.runner, xprune.bench.environment, xprune.runtime.tensorrt.build; "
            "print('ultralytics' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"


def test_planned_groups_on_cuda_measure_fp16_and_cuda_graphs():
    s = gpu_suite.settings_from(gpu_suite.parse_args(["--out", "x", "--device", "cuda:0"]), "")
    groups = {(g.runtime, g.precision, g.cuda_graph): reason
              for g, reason in gpu_suite.planned_groups(s, ["onnx2torch"], "TensorRT is not installed")}
    for runtime in ("torch", "onnx2torch"):
        for precision in ("fp32", "fp16"):
            assert groups[runtime, precision, False] is None and groups[runtime, precision, True] is None
    assert groups["onnxruntime", "fp32", False].startswith("unavailable: ONNX Runtime has no CUDA provider")
    assert groups["tensorrt", "int8", False] == "unavailable: TensorRT is not installed"
    both = {(g.runtime, g.precision, g.cuda_graph): reason for g, reason in gpu_suite.planned_groups(
        s, ["onnxruntime", "onnx2torch"], None)}
    assert all(reason is None for reason in both.values())
    order = [g for g, _ in gpu_suite.planned_groups(s, ["onnxruntime", "onnx2torch"], None)]
    first_graph = next(i for i, g in enumerate(order) if g.cuda_graph)  # graph captures run after the rest
    assert all(g.cuda_graph or g.runtime == "tensorrt" for g in order[first_graph:])


def test_paired_ratio_pairs_rounds():
    p10, median, p90 = gpu_suite.paired_ratio([2.0, 4.0, 9.0], [1.0, 4.0, 3.0])
    assert (p10, median, p90) == pytest.approx((1.0 + 0.2 * 1, 2.0, 2.0 + 0.8 * 1))


# --- the onnx2torch backend --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_onnx2torch_matches_onnxruntime_on_a_folded_export(folded_onnx):
    runner, facts = backend_named("onnx2torch").open(folded_onnx, TargetOptions())
    assert facts["variant"] == "folded" and facts["input_shape"] == [1, 3, 64, 64]
    x = np.random.default_rng(0).random(facts["input_shape"], dtype=np.float32)
    with runner, OnnxRuntimeRunner(folded_onnx, threads=1) as reference:
        ours, theirs = runner.infer(x), reference.infer(x)
        assert runner.describe()["backend"] == "onnx2torch" and runner.describe()["version"]
    assert len(ours) == len(theirs) == 2
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and np.max(np.abs(a - b)) <= 1e-4 * np.max(np.abs(b))


def test_onnx2torch_is_chosen_by_name_only():
    assert backend_for("m.onnx").name == "onnxruntime" and "onnx2torch" not in BACKENDS
    assert backend_named("onnx2torch").package == "xprune.runtime.onnx2torch"
    with pytest.raises(XpruneError, match="unknown backend 'nope'"):
        backend_named("nope")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_converted_graph_never_reads_device_memory_on_the_host(folded_onnx, dtype):
    """On the meta device no tensor has data, so this forward pass passing shows what a CUDA device needs: the
    constants onnx2torch reads as Python values stay on the host (no sync per run, so a CUDA graph can capture it),
    everything else moves, and fp16 leaves no float32 constant behind."""
    module = ModuleFromOnnx(folded_onnx)()
    assert host_arguments(module)
    out = to_device(module, "meta", dtype)(torch.empty(1, 3, 64, 64, device="meta", dtype=dtype))
    assert [(o.device.type, o.dtype) for o in out] == [("meta", dtype)] * 2


def test_loader_converts_once_and_hands_out_copies(folded_onnx):
    loader = ModuleFromOnnx(folded_onnx)
    a, b = loader(), loader()
    assert a is not b and loader.converted is not None
    with Onnx2TorchRunner(loader) as r1, Onnx2TorchRunner(loader) as r2:
        assert r1.module is not r2.module


def test_omitted_clip_bound_becomes_a_constant():
    node = helper.make_node("Clip", ["x", "", "hi"], ["y"])
    graph = helper.make_graph([node], "clip", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              initializer=[helper.make_tensor("hi", TensorProto.FLOAT, [], [0.5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    fixed = explicit_optional_inputs(model)
    assert all(fixed.graph.node[0].input) and not model.graph.node[0].input[1]  # the original is untouched
    x = np.array([[-3.0, 0.0, 0.25, 2.0]], np.float32)
    with Onnx2TorchRunner(model.SerializeToString()) as runner:
        (y,) = runner.infer(x)
    np.testing.assert_array_equal(y, np.minimum(x, 0.5))


def test_cuda_only_options_are_refused_on_cpu():
    for options, message in (({"fp16": True}, "fp16 PyTorch runs need --device cuda"),
                             ({"cuda_graph": True}, "CUDA-graph replay needs a CUDA device"),
                             ({"device_events": True}, "CUDA-event timing needs a CUDA device")):
        with pytest.raises(XpruneError, match=message):
            Onnx2TorchRunner(b"", "cpu", **options)
