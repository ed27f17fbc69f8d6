"""Build an OpenVINO IR (.xml + .bin) from an exported ONNX file: fp32, bf16 or int8 (NNCF), with the build's
record in the IR's runtime info.

The precision an IR is exported for is recorded in it and the runner compiles it with that inference precision
(`xprune.runtime.openvino.loader.INFERENCE_HINTS`). Weights are stored as they are computed (fp32, or int8 where
NNCF quantized them): OpenVINO's `save_model` would compress them to fp16 by default, which moves raw outputs beyond
fp32 tolerances, so fp16 storage (`compress_to_fp16`, half the .bin) is only taken when asked for (`--fp16`) and
the record says which was done.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xprune.errors import XpruneError
from xprune.files import display_path, file_sha256
from xprune.runtime.openvino.loader import (INFERENCE_HINTS, IR_SUFFIX, RT_SECTION, first_line,
                                            static_input_shape)

if TYPE_CHECKING:
    import openvino as ov

    from xprune.runtime.registry import EngineOptions

IR_FORMAT = "xprune.openvino-ir/1"


def precision_name(options: EngineOptions) -> str:
    """fp32, bf16 or int8; int8 runs its remaining float ops in fp32, so it does not combine with bf16."""
    if options.int8 and options.bf16:
        raise XpruneError("an OpenVINO IR is int8 or bf16, not both: pass --int8 or --bf16")
    return "int8" if options.int8 else "bf16" if options.bf16 else "fp32"


def check_options(ir_path: Path, options: EngineOptions) -> None:
    if ir_path.suffix.lower() != IR_SUFFIX:
        raise XpruneError(f"an OpenVINO IR is written to a {IR_SUFFIX} file (its weights beside it in a .bin), "
                          f"not {ir_path.name}")
    if options.timing_cache or options.dynamic_batch:
        raise XpruneError("--timing-cache and --dynamic-batch do not apply to an OpenVINO IR")


def save_ir(model: ov.Model, ir_path: Path, compress_to_fp16: bool) -> None:
    """Both files or neither: saved in a temporary folder beside the target, then moved, the .bin first so an .xml
    never points at a missing or older .bin for long."""
    import openvino as ov

    try:
        ir_path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{ir_path.name}.", dir=ir_path.parent) as tmp:
            staged = Path(tmp) / ir_path.name
            ov.save_model(model, str(staged), compress_to_fp16=compress_to_fp16)
            os.replace(staged.with_suffix(".bin"), ir_path.with_suffix(".bin"))
            os.replace(staged, ir_path)
    except OSError as e:
        raise XpruneError(f"cannot write {ir_path}: {e.strerror or e}") from None
    except RuntimeError as e:
        raise XpruneError(f"OpenVINO cannot save {ir_path}: {first_line(e)}") from None


def build_ir(onnx_path: Path, ir_path: Path, options: EngineOptions) -> dict[str, Any]:
    """Convert the ONNX export, quantize it for int8, record the build in the IR and save it; returns the record."""
    import openvino as ov

    from xprune.export.fold import count_macs
    from xprune.export.onnx_export import get_metadata, load_model
    from xprune.runtime.openvino import available

    check_options(ir_path, options)
    precision = precision_name(options)
    if precision == "int8":  # what it needs, before any work
        if options.calibration_data is None:
            raise XpruneError("--int8 needs calibration images: pass --data DIR")
        from xprune.runtime.openvino.quantize import require_nncf
        require_nncf()
    started = time.perf_counter()
    onnx_model = load_model(onnx_path)
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as e:  # OpenVINO's frontends raise their own types for graphs they cannot take
        raise XpruneError(f"OpenVINO cannot convert {onnx_path}: {first_line(e)}") from None
    shape = static_input_shape(model)
    if options.input_size is not None and shape[-2:] != [options.input_size] * 2:
        raise XpruneError(f"{onnx_path}: input {shape} does not match the input size {options.input_size}")
    calibration = None
    if options.int8 and options.calibration_data is not None:
        from xprune.runtime.openvino.quantize import calibration_inputs, quantize
        batches = calibration_inputs(options.calibration_data, shape, options.calibration_images)
        model, calibration = quantize(model, batches)
        calibration["data"] = display_path(options.calibration_data)
    weights = "int8" if precision == "int8" else "fp16" if options.fp16 else "fp32"
    record = {"format": IR_FORMAT, "openvino": available(), "precision": precision,
              "inference_precision_hint": INFERENCE_HINTS[precision], "weights_precision": weights,
              "compress_to_fp16": bool(options.fp16), "input_shape": shape, "macs": count_macs(onnx_model),
              "source_onnx": display_path(onnx_path), "source_onnx_sha256": file_sha256(onnx_path),
              "calibration": calibration,
              "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    record["build_seconds"] = round(time.perf_counter() - started, 2)
    model.set_rt_info(json.dumps(get_metadata(onnx_model)), [RT_SECTION, "metadata"])
    model.set_rt_info(json.dumps(record), [RT_SECTION, "build"])
    save_ir(model, ir_path, compress_to_fp16=bool(options.fp16))
    return record
