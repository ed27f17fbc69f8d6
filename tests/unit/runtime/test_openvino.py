"""OpenVINO as a backend: found by the registry; without its package every command that needs it is one line and
exit 2; `xprune export --engine openvino` writes an IR (.xml + .bin) that runs and agrees with ONNX Runtime in fp32,
with the fp16 weight compression only when asked; bf16 is its own precision, recorded as such; int8 goes through
NNCF and its mAP evaluates. What needs OpenVINO skips where it is not installed."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest

from cli_helpers import one_line_error, run_cli
from xprune.bench.latency import LatencyProtocol
from xprune.bench.run import BenchSettings, bench_files, compare_files, open_target
from xprune.errors import XpruneError
from xprune.runtime.registry import (EngineOptions, TargetOptions, backend_for, backend_named, engine_builder,
                                     export_backends, onnx_backend)

TINY = LatencyProtocol(warmup_runs=1, warmup_s=0.0, runs=3, min_s=0.0)
SIZE = 64
EXTRA = 'pip install "xprune[openvino]"'


def test_export_options_of_engine_builds_are_refused_without_one(tmp_path, capsys):
    code, _, err = run_cli(["export", "--model", "yolov8n", "--weights", "none", "--bf16", "--out",
                            str(tmp_path / "m.onnx")], capsys)
    assert code == 2 and "--bf16" in one_line_error(err) and list(tmp_path.iterdir()) == []


def test_the_registry_finds_openvino():
    backend = backend_named("openvino")
    assert backend_for("m.xml") is backend and engine_builder("openvino") is backend
    assert backend.label == "OpenVINO" and backend.evaluates_map and backend.bf16 and backend in export_backends()
    # `.onnx` still opens with ONNX Runtime by suffix; OpenVINO runs it when named, so the study times it there
    assert backend_for("m.onnx").name == onnx_backend().name == "onnxruntime" and backend.runs_exported_onnx
    from xprune.study.timing import ONNX_TIMED, runs_onnx, what_is_timed
    assert runs_onnx("openvino") and what_is_timed("openvino") == ONNX_TIMED and not runs_onnx("tensorrt")
    package = backend.module()
    assert all(callable(getattr(package, n, None))
               for n in ("available", "open_file", "run_facts", "open_runner", "build_from_onnx"))
    with pytest.raises(XpruneError, match="the tensorrt backend builds no bf16 files"):
        engine_builder("trt").build("m.onnx", "m.engine", EngineOptions(bf16=True))


@pytest.mark.parametrize("command", [
    ["export", "--model", "yolov8n", "--weights", "none", "--input-size", "64", "--engine", "openvino", "--out",
     "{tmp}/new.xml"],
    ["bench", "{tmp}/m.xml", "--out", "{tmp}/r.json"],
    ["compare", "{tmp}/m.xml", "{tmp}/m.onnx"],
])
def test_without_openvino_each_command_is_one_line_and_exit_2(command, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError, installed or not
    for name in ("m.xml", "m.bin", "m.onnx"):
        (tmp_path / name).write_bytes(b"")
    code, _, err = run_cli([a.format(tmp=tmp_path) for a in command], capsys)
    assert code == 2 and EXTRA in one_line_error(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.onnx", "m.xml"]  # nothing written


# --- with OpenVINO -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ir(tmp_path_factory, synth_data):
    """A random-init YOLOv8n at 64 px with the dataset's classes, exported to ONNX and to an fp32 IR through the
    command line."""
    pytest.importorskip("openvino")
    from xprune.cli import main

    folder = tmp_path_factory.mktemp("ir")
    code = main(["export", "--model", "yolov8n", "--weights", "none", "--input-size", str(SIZE), "--data",
                 str(synth_data), "--engine", "openvino", "--out", str(folder / "m.xml")])
    assert code == 0
    return folder


def build_record(xml) -> dict:
    from xprune.runtime.openvino.loader import read_model, rt_json

    return rt_json(read_model(xml), "build")


def test_ir_export_writes_xml_and_bin_that_run_and_agree_with_onnxruntime(ir):
    assert sorted(p.name for p in ir.iterdir()) == ["m.bin", "m.onnx", "m.onnx.json", "m.xml"]  # no temporary left
    runner, facts = backend_for(ir / "m.xml").open(ir / "m.xml", TargetOptions())
    assert runner.precision == "fp32" and facts["weights_precision"] == "fp32"
    assert facts["model"] == "yolov8n" and facts["input_shape"] == [1, 3, SIZE, SIZE] and facts["macs"] > 0
    record = build_record(ir / "m.xml")
    assert record["compress_to_fp16"] is False and record["inference_precision_hint"] == "f32"
    report = compare_files(ir / "m.onnx", ir / "m.xml")  # ONNX Runtime against OpenVINO
    assert report["passed"] and report["precision"] == "fp32"
    doc = bench_files([str(ir / "m.onnx"), str(ir / "m.xml")], BenchSettings(protocol=TINY))
    assert [(r["engine"], r["precision"]) for r in doc["rows"]] == [("onnxruntime", "fp32"), ("openvino", "fp32")]
    assert doc["rows"][1]["backend"]["version"] == backend_named("openvino").available()


def test_fp32_sets_the_inference_precision_explicitly(ir):
    """The CPU plugin's own default is bf16 on CPUs that have it; a fp32 row must have run in f32 anywhere."""
    target = open_target(ir / "m.onnx", backend=backend_named("openvino"))  # the ONNX file itself, by name
    with target.runner as runner:
        assert runner.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
        x = np.random.default_rng(0).random((1, 3, SIZE, SIZE), dtype=np.float32)
        assert [o.shape for o in runner.infer(x)] == [(1, 84, 4), (1, 84, 6)]


@pytest.mark.slow
def test_fp16_weight_storage_only_when_asked_and_recorded(ir, tmp_path):
    record = engine_builder("openvino").build(ir / "m.onnx", tmp_path / "w16.xml", EngineOptions(fp16=True))
    assert record["compress_to_fp16"] is True and record["weights_precision"] == "fp16"
    assert record["precision"] == "fp32"  # weights stored in fp16, computed in f32
    assert (tmp_path / "w16.bin").stat().st_size < 0.6 * (ir / "m.bin").stat().st_size
    assert build_record(tmp_path / "w16.xml") == record
    import openvino as ov  # an IR saved by OpenVINO itself, with its default compression and no xprune record

    ov.save_model(ov.convert_model(str(ir / "m.onnx")), str(tmp_path / "plain.xml"))
    runner, facts = backend_for(tmp_path / "plain.xml").open(tmp_path / "plain.xml", TargetOptions())
    assert runner.precision == "fp32" and facts["weights_precision"] == "fp16" and facts["model"] == "openvino"


def cpu_has_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.mark.slow
def test_bf16_is_asked_for_by_name_and_recorded_as_bf16(ir, tmp_path):
    record = engine_builder("openvino").build(ir / "m.onnx", tmp_path / "b.xml", EngineOptions(bf16=True))
    assert record["precision"] == "bf16" and record["inference_precision_hint"] == "bf16"
    target = open_target(tmp_path / "b.xml")
    assert target.runner.precision == "bf16"
    if not cpu_has_bf16():
        with pytest.raises(XpruneError, match="cannot infer in bf16"):
            target.runner.__enter__()
        return
    doc = bench_files([str(ir / "m.xml"), str(tmp_path / "b.xml")], BenchSettings(protocol=TINY))
    assert [r["precision"] for r in doc["rows"]] == ["fp32", "bf16"]
    assert doc["rows"][1]["backend"]["precision"] == "bf16"
    report = compare_files(ir / "m.onnx", tmp_path / "b.xml")  # the reference's precision picks the tolerances
    assert report["passed"] and report["precision"] == "bf16" and report["rtol_of_max"] > 0


def test_bad_builds_are_one_line_and_write_nothing(ir, tmp_path, monkeypatch):
    from xprune.runtime.openvino.quantize import NNCF_MISSING

    builder, onnx_path = engine_builder("openvino"), ir / "m.onnx"
    with pytest.raises(XpruneError, match="--int8 needs calibration images: pass --data DIR"):
        builder.build(onnx_path, tmp_path / "q.xml", EngineOptions(int8=True))
    with pytest.raises(XpruneError, match="int8 or bf16, not both"):
        builder.build(onnx_path, tmp_path / "q.xml", EngineOptions(int8=True, bf16=True))
    with pytest.raises(XpruneError, match=r"written to a \.xml file"):
        builder.build(onnx_path, tmp_path / "m.engine", EngineOptions())
    with pytest.raises(XpruneError, match="do not apply to an OpenVINO IR"):
        builder.build(onnx_path, tmp_path / "q.xml", EngineOptions(dynamic_batch=(1, 2, 4)))
    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(XpruneError) as e:
        builder.build(onnx_path, tmp_path / "q.xml", EngineOptions(int8=True, calibration_data=tmp_path))
    assert str(e.value) == NNCF_MISSING and list(tmp_path.iterdir()) == []
    shutil.copy(ir / "m.xml", tmp_path / "alone.xml")
    with pytest.raises(XpruneError, match="its weights file alone.bin is missing"):
        backend_for(tmp_path / "alone.xml").open(tmp_path / "alone.xml", TargetOptions())
    with pytest.raises(XpruneError, match="on the CPU only"):
        backend_named("openvino").run_facts(TargetOptions(device="cuda"))


@pytest.mark.slow
def test_int8_export_quantizes_with_nncf_and_its_map_evaluates(ir, synth_data, tmp_path):
    pytest.importorskip("nncf")
    from xprune.data.coco import CocoDetectionSet
    from xprune.evaluate.coco_map import evaluate_predictions
    from xprune.runtime.openvino.loader import read_model

    out = tmp_path / "q.xml"
    options = EngineOptions(int8=True, calibration_data=synth_data, calibration_images=4, input_size=SIZE)
    record = engine_builder("openvino").build(ir / "m.onnx", out, options)
    assert record == build_record(out)
    assert record["precision"] == "int8" and record["weights_precision"] == "int8"
    assert record["calibration"]["images"] == 4 and record["calibration"]["float_ops"]
    assert any(op.get_type_name() == "FakeQuantize" for op in read_model(out).get_ops())
    doc = bench_files([str(out)], BenchSettings(protocol=TINY, data=synth_data, val_images=4))
    row = doc["rows"][0]
    assert row["engine"] == "openvino" and row["precision"] == "int8" and 0.0 <= row["map"] <= 1.0
    val = CocoDetectionSet.from_folder(synth_data, "val", SIZE, limit=4)
    with backend_named("openvino").runner(out) as runner:  # the registry's runner for mAP (`evaluates_map`)
        assert runner.precision == "int8"
        metrics = evaluate_predictions(runner.predict, val, val.category_ids, batch_size=1)
    assert metrics["images"] == 4 and 0.0 <= metrics["map"] <= 1.0
