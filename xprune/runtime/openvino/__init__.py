"""OpenVINO: an exported ONNX file (.onnx) or an OpenVINO IR (.xml with its .bin) built from one
(`xprune export --engine openvino`, `build_from_onnx`), on the CPU.

Precision is always explicit. OpenVINO's CPU plugin infers in bf16 by default on CPUs that have it (AMX, AVX512-BF16),
which moves raw outputs by ~1e-2 of their range, so every model is compiled with `INFERENCE_PRECISION_HINT` set:
f32 unless an IR was exported for bf16 (`--bf16`). An IR carries the precision it was exported for, as a TensorRT
engine does, so one `xprune bench` run can time fp32, bf16 and int8 files side by side; an `.onnx` file (opened
by name, `backend_named("openvino")`: by suffix `.onnx` goes to ONNX Runtime) runs in fp32.

OpenVINO is optional (extra `openvino`); every entry point checks for it first so a machine without it gets one
line naming the extra instead of a traceback.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xprune.errors import XpruneError

if TYPE_CHECKING:
    from xprune.runtime.openvino.runner import OpenVinoRunner
    from xprune.runtime.registry import EngineOptions, TargetOptions

NOT_INSTALLED = 'OpenVINO is not installed; pip install "xprune[openvino]"'


def available() -> str:
    """The installed OpenVINO version, or XpruneError naming the extra."""
    try:
        import openvino
    except ImportError:
        raise XpruneError(NOT_INSTALLED) from None
    try:
        return importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:  # a source build: its version string starts with the release
        return str(openvino.__version__).split("-")[0]


def check_device(options: TargetOptions) -> None:
    """The CPU plugin only (OpenVINO's GPU plugin is for Intel GPUs). `fp16` does not apply: it is PyTorch's and
    TensorRT's; an IR says its own precision."""
    if options.device != "cpu":
        raise XpruneError(f"the OpenVINO backend runs on the CPU only, not '{options.device}'")


def open_file(path: Path, options: TargetOptions) -> tuple[OpenVinoRunner, dict[str, Any]]:
    """A runner for an IR or an ONNX file and the facts the file carries (xprune's metadata, the precision it runs
    in, the precision of its stored weights)."""
    from xprune.runtime.openvino.loader import file_facts
    from xprune.runtime.openvino.runner import OpenVinoRunner

    available()
    check_device(options)
    facts, nms_iou = file_facts(path)
    runner = OpenVinoRunner(path, threads=options.threads, precision=facts["precision"], nms_iou=nms_iou)
    return runner, {k: v for k, v in facts.items() if k != "precision"}


def run_facts(options: TargetOptions) -> dict[str, Any]:
    """How an exported ONNX file runs: fp32 (the hint set explicitly), on `threads` host threads."""
    version = available()
    check_device(options)
    return {"device": "cpu", "version": version, "threads": options.threads or os.cpu_count(), "precision": "fp32",
            "inference_precision_hint": "f32"}


def open_runner(model: str | Path | bytes, options: TargetOptions, nms_iou: float | None = None) -> OpenVinoRunner:
    """A runner for an IR, an ONNX file or an ONNX file's bytes, at the precision the file was exported for."""
    from xprune.runtime.openvino.loader import file_precision
    from xprune.runtime.openvino.runner import OpenVinoRunner

    available()
    check_device(options)
    precision = "fp32" if isinstance(model, bytes) else file_precision(Path(model))
    return OpenVinoRunner(model, threads=options.threads, precision=precision, nms_iou=nms_iou)


def build_from_onnx(onnx_path: Path, ir_path: Path, options: EngineOptions) -> dict[str, Any]:
    """An IR (`ir_path` .xml and its .bin) from an ONNX export, in fp32, bf16 or int8 (NNCF post-training
    quantization on `options.calibration_data`'s calibration images). Returns what the build records, which the
    IR also carries."""
    from xprune.runtime.openvino.build import build_ir

    available()
    return build_ir(onnx_path, ir_path, options)
