"""The runtime registry is the only door to the backends: each backend's package provides what its line declares,
the framework slot is chosen from a detector's framework, and a backend registered by one line - here a fake one,
run by onnx's pure-numpy reference evaluator - is found by `xprune bench`, `xprune compare`, `xprune export
--engine` and the study without any other change."""

from __future__ import annotations

import ast
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from xprune.bench.latency import LatencyProtocol
from xprune.errors import XpruneError
from xprune.runtime import registry
from xprune.runtime.base import Runner
from xprune.runtime.registry import (BACKENDS, Backend, EngineOptions, TargetOptions, all_backends, backend_named,
                                     engine_builder, engine_names, export_backends, onnx_backend, runner_for)

ROOT = Path(__file__).resolve().parents[3]
TINY = LatencyProtocol(warmup_runs=1, warmup_s=0.0, runs=3, min_s=0.0)
FAKE_PACKAGE = "xprune_tests_fake_backend"
SIZE, CLASSES = 8, 2


def test_every_package_provides_what_its_line_declares():
    for backend in all_backends():
        package = backend.module()
        needed = ["available", "open_file", "run_facts"]
        needed += ["open_runner"] if backend.evaluates_map else []
        needed += ["build_from_onnx"] if backend.builds_engine else []
        needed += ["runner_for"] if backend.framework else []
        assert all(callable(getattr(package, name, None)) for name in needed), backend.name
        assert backend.label


def test_the_registry_answers_what_callers_ask():
    assert onnx_backend().name == "onnxruntime"
    assert engine_names() == ["openvino", "trt"] and engine_builder("trt").name == "tensorrt"
    assert engine_builder("openvino").name == "openvino"
    assert [b.name for b in export_backends()] == ["onnxruntime", "openvino", "tensorrt"]
    with pytest.raises(XpruneError, match="unknown engine 'nope'; choose one of: openvino, trt"):
        engine_builder("nope")
    with pytest.raises(XpruneError, match="builds no engine"):
        backend_named("onnxruntime").build("m.onnx", "m.engine")
    with pytest.raises(XpruneError, match="runs files, not detectors"):
        backend_named("onnxruntime").runner_for(object())


def test_an_engine_build_without_its_library_is_one_line_and_writes_nothing(monkeypatch, tmp_path):
    from xprune.runtime.tensorrt import NOT_INSTALLED

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    onnx_path = tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(XpruneError, match="int8 needs calibration images"):
        engine_builder("trt").build(onnx_path, tmp_path / "m.engine", EngineOptions(int8=True, input_size=SIZE))
    with pytest.raises(XpruneError) as e:
        engine_builder("trt").build(onnx_path, tmp_path / "m.engine", EngineOptions(fp16=True))
    assert str(e.value) == NOT_INSTALLED and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_the_framework_slot_runs_a_detector_on_its_own_framework():
    torch_det = types.SimpleNamespace(nms_iou=0.5, family="toy")  # a zoo PyTorch detector names no framework
    assert runner_for(torch_det).name == "torch"
    pytest.importorskip("jax")
    jax_det = types.SimpleNamespace(nms_iou=0.5, family="toy-jax", framework="jax")
    runner = runner_for(jax_det)
    assert runner.name == "jax"
    with pytest.raises(XpruneError, match="runs on the CPU"):
        runner_for(jax_det, TargetOptions(device="cuda"))


def test_jax_rows_record_the_threads_xla_runs_on(monkeypatch):
    pytest.importorskip("jax")
    from xprune.runtime.jax.runner import xla_cpu_threads

    runner = runner_for(types.SimpleNamespace(nms_iou=0.5, family="toy-jax", framework="jax"))
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv("PJRT_NPROC", raising=False)
    monkeypatch.delenv("NPROC", raising=False)
    assert runner.describe()["threads"] == xla_cpu_threads() >= 1
    monkeypatch.setenv("NPROC", "3")
    assert runner.describe()["threads"] == 3
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    assert runner.describe()["threads"] == 1
    assert backend_named("jax").run_facts(TargetOptions())["threads"] == 1


def test_nothing_outside_runtime_imports_a_backend_folder():
    folders = {b.package for b in all_backends()}
    offenders = []
    for path in (ROOT / "xprune").rglob("*.py"):
        if "runtime" in path.relative_to(ROOT / "xprune").parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if any(n == f or n.startswith(f + ".") for f in folders)]
    assert offenders == []


# --- a fake backend: a folder (here a module) plus one registry line ----------------------------------------------

def tiny_onnx(path: Path) -> Path:
    """A static-shape model with xprune's raw-head outputs: boxes [1, N, 4] and scores [1, N, C]."""
    rng = np.random.default_rng(0)
    n = SIZE * SIZE
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "wb"),
             numpy_helper.from_array(rng.standard_normal((CLASSES, 3, 1, 1)).astype(np.float32), "ws"),
             numpy_helper.from_array(np.array([1, 4, n], np.int64), "shape_b"),
             numpy_helper.from_array(np.array([1, CLASSES, n], np.int64), "shape_s")]
    nodes = [helper.make_node("Conv", ["images", "wb"], ["cb"]),
             helper.make_node("Reshape", ["cb", "shape_b"], ["rb"]),
             helper.make_node("Transpose", ["rb"], ["boxes"], perm=[0, 2, 1]),
             helper.make_node("Conv", ["images", "ws"], ["cs"]),
             helper.make_node("Reshape", ["cs", "shape_s"], ["rs"]),
             helper.make_node("Transpose", ["rs"], ["ts"], perm=[0, 2, 1]),
             helper.make_node("Sigmoid", ["ts"], ["scores"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                            [1, 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, n, 4]),
                               helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, n, CLASSES])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


class ReferenceRunner(Runner):
    """The fake backend's runner: onnx's reference evaluator over the file's graph."""

    name = "fake"

    def __init__(self, path: Path, threads: int | None = None, nms_iou: float | None = None):
        self.path, self.threads = path, threads
        if nms_iou is not None:
            self.nms_iou = nms_iou
        self.session: Any = None  # onnx's ReferenceEvaluator while active

    def activate_impl(self) -> None:
        from onnx.reference import ReferenceEvaluator

        self.session = ReferenceEvaluator(onnx.load(self.path))

    def deactivate_impl(self) -> None:
        self.session = None

    def infer_impl(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(self.session.run(None, {"images": np.asarray(x, np.float32)}))

    def version(self) -> str:
        return onnx.__version__


def fake_package() -> types.ModuleType:
    """What `xprune/runtime/fake/__init__.py` would hold."""
    def available():
        return onnx.__version__

    def run_facts(options):
        return {"device": "cpu", "version": onnx.__version__, "threads": 1}

    def open_file(path, options):
        shape = [d.dim_value for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim]
        return ReferenceRunner(Path(path), options.threads), {"model": "tiny", "input_shape": shape}

    def open_runner(path, options, nms_iou=None):
        return ReferenceRunner(Path(path), options.threads, nms_iou)

    def build_from_onnx(onnx_path, path, options):
        shutil.copyfile(onnx_path, path)  # the "engine" is the graph itself
        return {"precision": "fp16" if options.fp16 else "fp32", "onnx": str(onnx_path)}

    package = types.ModuleType(FAKE_PACKAGE)
    vars(package).update(available=available, run_facts=run_facts, open_file=open_file, open_runner=open_runner,
                         build_from_onnx=build_from_onnx)
    return package


@pytest.fixture
def fake(monkeypatch):
    """The fake backend's folder and its one registry line."""
    monkeypatch.setitem(sys.modules, FAKE_PACKAGE, fake_package())
    backend = Backend("fake", (".fake",), FAKE_PACKAGE, "Fake reference", engine="fake", evaluates_map=True)
    monkeypatch.setitem(BACKENDS, "fake", backend)
    return backend


def test_bench_and_compare_find_a_new_backend(fake, tmp_path):
    from xprune.bench.run import BenchSettings, bench_files, compare_files

    onnx_path = tiny_onnx(tmp_path / "tiny.onnx")
    fake.build(onnx_path, tmp_path / "tiny.fake")
    doc = bench_files([str(tmp_path / "tiny.fake"), str(onnx_path)], BenchSettings(protocol=TINY))
    assert [r["engine"] for r in doc["rows"]] == ["fake", "onnxruntime"]
    assert doc["rows"][0]["backend"]["backend"] == "fake" and len(doc["rows"][0]["samples_ms"]) == 3
    report = compare_files(tmp_path / "tiny.fake", onnx_path)  # the reference evaluator against ONNX Runtime
    assert report["passed"] and [o["name"] for o in report["outputs"]] == ["boxes", "scores"]


@pytest.mark.slow
def test_export_builds_a_new_backends_engine(fake, tmp_path, capsys):
    from xprune.cli import main

    out = tmp_path / "m.fake"
    code = main(["export", "--model", "yolov8n", "--weights", "none", "--input-size", "64", "--engine", "fake",
                 "--out", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0 and out.is_file() and (tmp_path / "m.onnx").is_file()
    assert f"Fake reference engine (fp32): {out}" in stdout
    assert onnx.load(out).graph.input[0].name == onnx.load(tmp_path / "m.onnx").graph.input[0].name


@pytest.mark.parametrize("builds", [True, False], ids=["engine", "onnx-file"])
def test_the_study_times_a_new_backend(fake, monkeypatch, tmp_path, builds):
    from xprune.study.settings import FRAMEWORK, StudySettings
    from xprune.study.sweep import engine_summaries
    from xprune.study.timing import ENGINE_TIMED, ONNX_TIMED, backends_block, time_backend
    from xprune.study.variants import BASELINE, BASELINE_COPY, Variant

    if not builds:  # a second way to run the exported file itself, as an OpenVINO backend may be
        monkeypatch.setitem(BACKENDS, "fake", Backend("fake", (".onnx",), FAKE_PACKAGE, "Fake reference",
                                                      evaluates_map=True))
    assert onnx_backend().name == "onnxruntime"  # the first that runs exported files for their mAP
    settings = StudySettings(out=tmp_path, models=["yolov8n"], backends=(FRAMEWORK, "fake"), latency=TINY,
                             aa_control=True, progress=False)
    settings.validate()
    assert "fake" in StudySettings(out=tmp_path).backends  # every study times it by default
    block = backends_block(settings)
    assert block["fake"] == {"available": True, "device": "cpu", "version": onnx.__version__, "threads": 1,
                             "variant": ENGINE_TIMED if builds else ONNX_TIMED}
    assert ("fake" in engine_summaries(block)) == builds

    base_onnx = tiny_onnx(tmp_path / "base.onnx")
    pruned_onnx = tiny_onnx(tmp_path / "l1-1.onnx")
    variants = [Variant(BASELINE, BASELINE, (), None, [(BASELINE, 0.0)], onnx=base_onnx),
                Variant("l1-1", "l1", ("conv",), None, [("l1", 0.05)], onnx=pruned_onnx)]
    work = tmp_path / "work"
    work.mkdir()
    doc, by_id = time_backend("fake", "tiny", variants, [], work, settings, TINY, "pytest", lambda m: None)
    assert set(by_id) == {BASELINE, BASELINE_COPY, "l1-1"}
    assert {r["engine"] for r in doc["rows"]} == {"fake"} and doc["protocol"]["interleaved"]
    assert (sorted(p.suffix for p in work.iterdir()) == [".fake"] * 3 if builds
            else [p.name for p in work.iterdir()] == [f"tiny-{BASELINE_COPY}.onnx"])


def test_the_registry_label_names_backends_in_reports():
    assert registry.label("onnxruntime") == "ONNX Runtime" and registry.label("gone") == "gone"
