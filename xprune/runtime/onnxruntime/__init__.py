"""ONNX Runtime: exported ONNX files (.onnx), on CPU or ONNX Runtime's CUDA provider."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xprune.errors import XpruneError

if TYPE_CHECKING:
    from xprune.runtime.onnxruntime.runner import OnnxRuntimeRunner
    from xprune.runtime.registry import TargetOptions


def available() -> str:
    try:
        import onnxruntime
    except ImportError:
        raise XpruneError("ONNX Runtime is not installed (pip install onnxruntime)") from None
    return onnxruntime.__version__


def open_file(path: Path, options: TargetOptions) -> tuple[OnnxRuntimeRunner, dict[str, Any]]:
    from xprune.export.fold import count_macs
    from xprune.export.onnx_export import get_metadata, load_model
    from xprune.runtime.onnxruntime.loader import model_facts
    from xprune.runtime.onnxruntime.runner import OnnxRuntimeRunner

    model = load_model(path)
    meta = get_metadata(model)
    facts = {**model_facts(model, meta), "macs": count_macs(model)}
    runner = OnnxRuntimeRunner(path, device=options.device, threads=options.threads, nms_iou=meta.get("nms_iou"))
    return runner, facts


def run_facts(options: TargetOptions) -> dict[str, Any]:
    return {"device": options.device, "version": available(), "threads": options.threads or os.cpu_count(),
            "spinning": False}


def open_runner(model: str | Path | bytes, options: TargetOptions, nms_iou: float | None = None) -> OnnxRuntimeRunner:
    from xprune.runtime.onnxruntime.runner import OnnxRuntimeRunner

    return OnnxRuntimeRunner(model, device=options.device, threads=options.threads, spinning=False, nms_iou=nms_iou)
