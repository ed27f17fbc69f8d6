"""TensorRT paths that must behave on a machine without TensorRT or a GPU: one clear error, no files left behind;
output comparison tolerances; and a type check of the TensorRT code against the TensorRT 10 API stubs."""

import ast
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from xprune.errors import XpruneError
from xprune.runtime.compare import TOLERANCES, compare_outputs
from xprune.runtime.tensorrt import NO_GPU, NOT_INSTALLED, require_tensorrt
from xprune.runtime.tensorrt.build import CalibrationFeed, build_engine, calibration_shape, input_shapes
from xprune.runtime.tensorrt.loader import sidecar_path
from xprune.runtime.tensorrt.runner import TensorRTRunner

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError


@pytest.fixture
def tiny_onnx(tmp_path):
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 1, 1], np.ones(12, dtype=np.float32))
    graph = helper.make_graph([helper.make_node("Conv", ["images", "w"], ["boxes"])], "tiny",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 4, 8, 8])], [weight])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_require_tensorrt_without_tensorrt(no_tensorrt):
    with pytest.raises(XpruneError) as e:
        require_tensorrt()
    assert str(e.value) == NOT_INSTALLED
    assert NOT_INSTALLED == "TensorRT is not installed; install xprune[trt] on a machine with an NVIDIA GPU"


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # torch._dynamo looks tensorrt up with find_spec
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


@pytest.fixture
def tensorrt_and_gpu(monkeypatch):
    """A TensorRT that passes require_tensorrt(), for checks that happen before TensorRT is used."""
    monkeypatch.setitem(sys.modules, "tensorrt", _module("tensorrt", __version__="10.13.0.35", Builder=object))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_require_tensorrt_stub_only_package_counts_as_missing(monkeypatch):
    # tensorrt-stubs installs tensorrt/*.pyi only, which imports as an empty namespace package
    monkeypatch.setitem(sys.modules, "tensorrt", _module("tensorrt"))
    with pytest.raises(XpruneError, match="^TensorRT is not installed;"):
        require_tensorrt()


def test_require_tensorrt_without_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", _module("tensorrt", __version__="10.13.0.35", Builder=object))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(XpruneError) as e:
        require_tensorrt()
    assert str(e.value) == NO_GPU
    assert NO_GPU == "TensorRT needs an NVIDIA GPU; none is visible (torch.cuda.is_available() is False)"


def test_build_engine_without_tensorrt_writes_nothing(no_tensorrt, tiny_onnx, tmp_path):
    engine = tmp_path / "out" / "tiny.engine"
    with pytest.raises(XpruneError) as e:
        build_engine(tiny_onnx, engine, fp16=True, timing_cache=tmp_path / "timing.cache")
    assert str(e.value) == NOT_INSTALLED
    assert not engine.exists() and not sidecar_path(engine).exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["tiny.onnx"]


@pytest.mark.parametrize("options, message", [
    ({"int8": True}, "int8 needs calibration batches"),
    ({"int8": True, "calibration_batches": []}, "int8 calibration got no batches"),
    ({"int8": True, "calibration_batches": [np.zeros((2, 3, 8, 8), np.float32)]},
     r"calibration batches have shape \[2, 3, 8, 8\]; the engine input is \[1, 3, 8, 8\]"),
    ({"dynamic_batch": (1, 2, 4)}, "fixed batch of 1; export with a dynamic batch axis"),
    ({"workspace_gb": 0}, "workspace_gb must be positive"),
])
def test_build_engine_rejects_bad_options_before_building(tensorrt_and_gpu, tiny_onnx, tmp_path, options, message):
    engine = tmp_path / "tiny.engine"
    with pytest.raises(XpruneError, match=message):
        build_engine(tiny_onnx, engine, **options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]


def test_build_engine_missing_onnx(tensorrt_and_gpu, tmp_path):
    with pytest.raises(XpruneError, match="ONNX file not found"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "m.engine")


def test_runner_without_tensorrt(no_tensorrt, tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(XpruneError) as e:
        with TensorRTRunner(engine):
            pass
    assert str(e.value) == NOT_INSTALLED


def test_runner_reads_precision_and_model_facts_from_the_sidecar(tensorrt_and_gpu, tmp_path):
    engine = tmp_path / "m.engine"
    with pytest.raises(XpruneError, match="TensorRT engine not found"):
        TensorRTRunner(engine)
    engine.write_bytes(b"plan")
    assert TensorRTRunner(engine).precision == "unknown"  # built elsewhere: no sidecar
    sidecar_path(engine).write_text(json.dumps({"precision": "fp16", "metadata": {"family": "yolov8n",
                                                                                  "input_size": 320}}))
    runner = TensorRTRunner(engine)
    assert (runner.name, runner.precision, runner.family, runner.input_size) == ("tensorrt", "fp16", "yolov8n", 320)


def test_calibration_shape_within_a_dynamic_batch_range():
    bounds = {"min": [1, 3, 8, 8], "opt": [4, 3, 8, 8], "max": [8, 3, 8, 8]}
    shape, batches = calibration_shape(iter([np.zeros((1, 3, 8, 8), np.float32)] * 3), bounds)
    assert shape == [1, 3, 8, 8] and len(list(batches)) == 3
    with pytest.raises(XpruneError, match=r"the engine input is \[1..8, 3, 8, 8\]"):
        calibration_shape([np.zeros((16, 3, 8, 8), np.float32)], bounds)


def test_sidecar_sits_beside_the_engine(tmp_path):
    assert sidecar_path(tmp_path / "m.engine") == tmp_path / "m.engine.json"


def test_input_shapes_static_and_dynamic_batch(tmp_path):
    src = tmp_path / "m.onnx"
    assert input_shapes("images", [1, 3, 64, 64], src, None) == {
        "images": {"min": [1, 3, 64, 64], "opt": [1, 3, 64, 64], "max": [1, 3, 64, 64]}}
    assert input_shapes("images", [None, 3, 64, 64], src, (1, 4, 8))["images"]["max"] == [8, 3, 64, 64]
    with pytest.raises(XpruneError, match="fixed batch of 1"):
        input_shapes("images", [1, 3, 64, 64], src, (1, 4, 8))
    with pytest.raises(XpruneError, match="dynamic batch axis"):
        input_shapes("images", [None, 3, 64, 64], src, None)
    with pytest.raises(XpruneError, match="min <= opt <= max"):
        input_shapes("images", [None, 3, 64, 64], src, (4, 2, 8))


def test_calibration_feed_stops_on_a_bad_batch():
    feed = CalibrationFeed("images", [np.zeros((2, 3, 8, 8), np.float32)], [1, 3, 8, 8])
    assert list(feed) == []
    assert feed.count == 0 and "expected [1, 3, 8, 8] float32" in (feed.error or "")


# --- compare_outputs -------------------------------------------------------------------------------------------------

def _outputs(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 320, (1, 100, 4)).astype(np.float32), rng.uniform(0, 1, (1, 100, 3)).astype(np.float32))


def test_compare_identical_outputs_pass():
    a = _outputs()
    report = compare_outputs(a, tuple(x.copy() for x in a), "fp32")
    assert report["passed"]
    assert [o["name"] for o in report["outputs"]] == ["boxes", "scores"]
    assert all(o["max_abs_error"] == 0 and o["mismatched"] == 0 for o in report["outputs"])


@pytest.mark.parametrize("precision", sorted(TOLERANCES))
def test_compare_perturbation_beyond_tolerance_fails(precision):
    ref = _outputs()
    tol = TOLERANCES[precision]
    scores = ref[1].copy()
    scores[0, 7, 1] += 2 * (tol["atol"] + tol["rtol"] * abs(scores[0, 7, 1]))
    report = compare_outputs((ref[0], scores), ref, precision)
    assert not report["passed"]
    assert report["outputs"][0]["passed"] and not report["outputs"][1]["passed"]
    assert report["outputs"][1]["mismatched"] == 1
    assert report["outputs"][1]["max_abs_error"] == pytest.approx(abs(scores[0, 7, 1] - ref[1][0, 7, 1]), rel=1e-6)


def test_compare_fp16_sized_noise_passes_fp16_not_fp32():
    ref = _outputs()
    noisy = tuple((x * (1 + 2e-3)).astype(np.float32) for x in ref)  # ~fp16 rounding, 0.2%
    assert compare_outputs(noisy, ref, "fp16")["passed"]
    assert not compare_outputs(noisy, ref, "fp32")["passed"]


def test_compare_nan_is_a_mismatch():
    ref = _outputs()
    scores = ref[1].copy()
    scores[0, 0, 0] = np.nan
    report = compare_outputs((ref[0], scores), ref, "int8")
    assert not report["passed"] and report["outputs"][1]["nonfinite"] == 1
    assert np.isfinite(report["outputs"][1]["max_abs_error"])


def test_compare_shape_mismatch_is_a_user_error():
    ref = _outputs()
    with pytest.raises(XpruneError, match=r"output 1 \(scores\): shapes \[1, 100, 4\] and \[1, 100, 3\] differ"):
        compare_outputs((ref[0], np.zeros((1, 100, 4), np.float32)), ref, "fp32")
    with pytest.raises(XpruneError, match="2 and 1 outputs"):
        compare_outputs(ref, ref[:1], "fp32")
    with pytest.raises(XpruneError, match="unknown precision 'fp8'"):
        compare_outputs(ref, ref, "fp8")


# --- type check -------------------------------------------------------------------------------------------------------

TENSORRT_SOURCES = sorted(str(p.relative_to(REPO)) for p in (REPO / "xprune" / "runtime" / "tensorrt").glob("*.py"))
_DEF = re.compile(r"^(\s*)def (\w+)\((.*)\)( -> .*)?:(.*)$")


def _readable_stubs(target: Path) -> Path:
    """Copy the tensorrt-stubs .pyi files into `target`, loosening the few generated signatures that are not valid
    Python (a parameter named `in`, a required parameter after defaulted ones) to `*args, **kwargs`.

    The package ships the stubs as `tensorrt/__init__.pyi` without a py.typed marker, so mypy does not use them from
    site-packages; on MYPYPATH it does.
    """
    for package in ("tensorrt", "tensorrt_bindings"):
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations
        source = Path(list(spec.submodule_search_locations)[0])
        (target / package).mkdir(parents=True)
        for stub in source.glob("*.pyi"):
            lines = []
            for line in stub.read_text().splitlines():
                m = _DEF.match(line)
                if m:
                    try:
                        ast.parse(line.strip() + "\n    ...")
                    except SyntaxError:
                        indent, name, params, returns, rest = m.groups()
                        first = params.split(",")[0].split(":")[0].strip()
                        receiver = f"{first}, " if first in ("self", "cls") else ""
                        loose = f"{receiver}*args: typing.Any, **kwargs: typing.Any"
                        line = f"{indent}def {name}({loose}){returns or ''}:{rest}"
                lines.append(line)
            (target / package / stub.name).write_text("import typing\n" + "\n".join(lines) + "\n")
    return target


@pytest.mark.slow
def test_tensorrt_code_type_checks(tmp_path):
    pytest.importorskip("mypy")
    try:
        importlib.metadata.version("tensorrt-stubs")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("tensorrt-stubs is not installed")
    base = [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache")]
    plain = subprocess.run([*base, "--ignore-missing-imports", "--follow-imports=silent", *TENSORRT_SOURCES],
                           cwd=REPO, capture_output=True, text=True)
    assert plain.returncode == 0, plain.stdout + plain.stderr

    # Against the TensorRT API itself: errors inside the generated stubs are theirs, not ours.
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nignore_missing_imports = True\nfollow_imports = silent\n\n"
                      "[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]\nignore_errors = True\n")
    stubs = _readable_stubs(tmp_path / "stubs")
    typed = subprocess.run([*base, "--config-file", str(config), *TENSORRT_SOURCES], cwd=REPO, capture_output=True,
                           text=True, env={**os.environ, "MYPYPATH": str(stubs)})
    assert typed.returncode == 0, typed.stdout + typed.stderr
