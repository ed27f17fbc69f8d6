"""Post-training int8 quantization of an OpenVINO model with NNCF, calibrated on a dataset's calibration images
preprocessed exactly as the model's input (`xprune.data.coco.calibration_set`: letterboxed to the input size, RGB in
[0, 1], NCHW), one batch of the model's batch size at a time.

What stays in float: the final predictor of every output and all the arithmetic after it (box decoding, sigmoid,
reshapes), found by walking back from each output to the first Convolution or MatMul on every path. Raw head
outputs are pixel coordinates and scores; int8 steps in the decode would move boxes by whole pixels. (The YOLOv8n
reference at 320 px, first 100 synthetic val images: mAP 0.396 int8 against 0.399 fp32; 0.376 with every op
quantized.)
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xprune.errors import XpruneError

if TYPE_CHECKING:
    import openvino as ov

NNCF_MISSING = '--int8 quantizes with NNCF, which is not installed; pip install "xprune[openvino]"'
LINEAR_OPS = {"Convolution", "GroupConvolution", "MatMul"}
PRESET = "mixed"  # symmetric weights, asymmetric activations: SiLU and ReLU6 outputs are not centred on 0


def require_nncf() -> str:
    # NNCF imports torch's C++ extension loader, which warns on a machine without CUDA; the warning is not ours
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        import nncf
    except ImportError:
        raise XpruneError(NNCF_MISSING) from None
    return str(nncf.__version__)


def calibration_inputs(data: Path | None, input_shape: list[int], images: int) -> list[np.ndarray]:
    """The calibration images as model inputs: batches of the model's batch size, letterboxed to its input side."""
    if data is None:
        raise XpruneError("--int8 needs calibration images: pass --data DIR")
    batch, _, height, width = input_shape
    if height != width:
        raise XpruneError(f"calibration images are letterboxed to a square; the model input is {height}x{width}")
    from xprune.data.coco import calibration_set

    batches = [x.numpy() for x, _, _ in calibration_set(data, height, images).batches(batch)]
    batches = [b for b in batches if b.shape[0] == batch]  # a short last batch does not fit a static input
    if not batches:
        raise XpruneError(f"{data}: no calibration images to fill a batch of {batch}")
    return batches


def output_tail(model: ov.Model) -> list[str]:
    """The ops from the last Convolution/MatMul of every path up to the outputs, those linear ops included."""
    tail: set[str] = set()
    stack = list(model.get_results())
    while stack:
        node = stack.pop()
        for port in node.inputs():
            source = port.get_source_output().get_node()
            kind, name = source.get_type_name(), source.get_friendly_name()
            if kind in ("Constant", "Parameter") or name in tail:
                continue
            tail.add(name)
            if kind not in LINEAR_OPS:
                stack.append(source)
    return sorted(tail)


@contextlib.contextmanager
def quiet_nncf():
    """NNCF logs and draws progress bars on stdout; the command's own output stays readable without them."""
    from nncf.common.logging import nncf_logger

    level = nncf_logger.level
    nncf_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        nncf_logger.setLevel(level)


def quantize(model: ov.Model, batches: list[np.ndarray]) -> tuple[ov.Model, dict]:
    """The int8 model and what the calibration was: NNCF's version, images, preset, the ops kept in float."""
    import nncf

    keep_float = output_tail(model)
    images = sum(b.shape[0] for b in batches)
    try:
        with quiet_nncf():
            quantized = nncf.quantize(model, nncf.Dataset(batches), preset=nncf.QuantizationPreset(PRESET),
                                      subset_size=images,
                                      ignored_scope=nncf.IgnoredScope(names=keep_float, validate=False))
    except (RuntimeError, ValueError, nncf.ValidationError, nncf.InternalError) as e:  # on a graph it cannot take
        lines = str(e).strip().splitlines()
        raise XpruneError(f"NNCF cannot quantize the model: {(lines[-1] if lines else type(e).__name__)[:200]}") \
            from None
    return quantized, {"nncf": require_nncf(), "images": images, "preset": PRESET, "float_ops": keep_float}
