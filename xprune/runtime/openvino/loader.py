"""Reads what an OpenVinoRunner runs, and the facts a file carries.

An IR built by `xprune export --engine openvino` keeps two JSON texts in its runtime info under `xprune`: `metadata`,
the source ONNX file's xprune metadata (family, category ids, NMS IoU, variant, ...), and `build`, what the build
recorded (precision, weight storage, OpenVINO version, source hash). An ONNX file's facts are its own metadata, read
as for ONNX Runtime; it runs in fp32.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xprune.errors import XpruneError

if TYPE_CHECKING:
    import openvino as ov

IR_SUFFIX = ".xml"
RT_SECTION = "xprune"  # the IR's runtime-info section xprune writes
# The INFERENCE_PRECISION_HINT each file precision compiles with: int8 files run their quantized ops in int8 and
# the rest in f32. Set every time, since the CPU plugin's own default is bf16 wherever the CPU has it.
INFERENCE_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def first_line(error: Exception) -> str:
    """OpenVINO's messages start with a source location; the last non-empty line says what went wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:200]


def read_model(source: str | os.PathLike | bytes) -> ov.Model:
    """An IR (.xml, its weights in the .bin beside it), an ONNX file, or an ONNX file's bytes."""
    import openvino as ov

    if not isinstance(source, bytes):
        path = Path(source)
        if not path.is_file():
            raise XpruneError(f"model file not found: {path}")
        if path.suffix.lower() == IR_SUFFIX and not path.with_suffix(".bin").is_file():
            raise XpruneError(f"{path}: its weights file {path.with_suffix('.bin').name} is missing")
        source = str(path)
    try:
        return ov.Core().read_model(source)
    except RuntimeError as e:
        raise XpruneError(f"OpenVINO cannot read the model: {first_line(e)}") from None


def rt_json(model: ov.Model, key: str) -> Any:
    """The JSON text stored under xprune/`key` in an IR's runtime info (None when absent)."""
    if not model.has_rt_info([RT_SECTION, key]):
        return None
    text = model.get_rt_info([RT_SECTION, key]).astype(str)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise XpruneError(f"the IR's {RT_SECTION}/{key} runtime info is not valid JSON") from None


def static_input_shape(model: ov.Model) -> list[int]:
    if len(model.inputs) != 1:
        raise XpruneError(f"the model has {len(model.inputs)} inputs; an xprune model has one image input")
    shape = model.inputs[0].get_partial_shape()
    if shape.is_dynamic:
        raise XpruneError("benchmarks need a static input shape; fix it with `xprune fold --input-shape` first")
    return [int(d) for d in shape.to_shape()]


def read_precisions(model: ov.Model) -> dict[str, str]:
    """What an IR is made of, read from its ops (for an IR built elsewhere): int8 where it has FakeQuantize ops; its
    weights int8, fp16 (`save_model`'s default compression) or fp32 by the type of its constants."""
    ops = model.get_ops()
    constants = {op.get_output_element_type(0).get_type_name() for op in ops if op.get_type_name() == "Constant"}
    quantized = any(op.get_type_name() == "FakeQuantize" for op in ops)
    weights = "int8" if constants & {"i8", "u8"} else "fp16" if "f16" in constants else "fp32"
    return {"precision": "int8" if quantized else "fp32", "weights_precision": weights}


def ir_facts(model: ov.Model) -> tuple[dict[str, Any], dict[str, Any]]:
    """The results-row facts of an IR and its xprune metadata (empty for an IR built elsewhere)."""
    meta = rt_json(model, "metadata") or {}
    build = {**read_precisions(model), **(rt_json(model, "build") or {})}  # what xprune recorded wins
    facts = {"model": meta.get("family", "openvino"), "variant": meta.get("variant", "unknown"),
             "method": meta.get("method"), "rate": meta.get("rate"), "input_shape": static_input_shape(model),
             "category_ids": meta.get("category_ids"), "removed_mac_fraction": meta.get("removed_mac_fraction"),
             "macs": build.get("macs"), "precision": build["precision"],
             "weights_precision": build["weights_precision"]}
    return facts, meta


def file_facts(path: Path) -> tuple[dict[str, Any], float | None]:
    """The facts of an IR or ONNX file (see `ir_facts`), and the NMS IoU its metadata carries."""
    if Path(path).suffix.lower() == IR_SUFFIX:
        facts, meta = ir_facts(read_model(path))
    else:
        from xprune.export.fold import count_macs
        from xprune.export.onnx_export import get_metadata, load_model
        from xprune.runtime.onnxruntime.loader import model_facts  # an ONNX file's facts, whatever runs it

        onnx_model = load_model(path)
        meta = get_metadata(onnx_model)
        facts = {**model_facts(onnx_model, meta), "macs": count_macs(onnx_model), "precision": "fp32",
                 "weights_precision": "fp32"}
    if facts["precision"] not in INFERENCE_HINTS:
        raise XpruneError(f"{path}: unknown precision {facts['precision']!r} in its runtime info")
    return facts, meta.get("nms_iou")


def file_precision(path: Path) -> str:
    """The precision an IR was exported for (fp32 for an ONNX file or an IR built elsewhere)."""
    if path.suffix.lower() != IR_SUFFIX:
        return "fp32"
    return file_facts(path)[0]["precision"]
