"""ONNX export of a JAX detector through jax2onnx: the raw head path (NCHW images in, decoded boxes and class
probabilities out, NMS outside) at a static shape, with the metadata every xprune export carries.
`xprune.export.onnx_export.export_raw` calls it for JAX detectors; onnxslim, the fold and the report follow there."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import onnx

from xprune.export.onnx_export import INPUT_NAME, OPSET, OUTPUT_NAMES, set_metadata
from xprune.models.jax import require_jax
from xprune.models.jax.detector import JaxDetector, compiled
from xprune.models.jax.tinyssd import anchors, raw_outputs


def export_raw(detector: JaxDetector, batch: int = 1, opset: int = OPSET) -> onnx.ModelProto:
    """Trace `raw` with jax2onnx; the weights become initializers of the graph."""
    require_jax("jax2onnx")
    from jax2onnx import to_onnx

    size = detector.input_size
    graphdef, state = detector.split()
    heads = compiled(graphdef, size).heads
    anchor = anchors(size)

    def raw(x):
        logits, deltas, _ = heads(state, x)
        return raw_outputs(logits, deltas, anchor, size)

    model = to_onnx(raw, [jax.ShapeDtypeStruct((batch, 3, size, size), jnp.float32)], opset=opset,
                    model_name=detector.family.replace("-", "_"), input_names=[INPUT_NAME], output_names=OUTPUT_NAMES)
    # jax2onnx keeps the NHWC shapes of some tensors that its Conv rewrite computes in NCHW; shape inference
    # (onnxslim's, the fold's, ONNX Runtime's) recomputes them all from the static input.
    del model.graph.value_info[:]
    set_metadata(model, {"xprune.family": detector.family, "xprune.input_size": size,
                         "xprune.num_classes": detector.num_classes, "xprune.nms_iou": detector.nms_iou,
                         "xprune.category_ids": detector.category_ids})
    return model

