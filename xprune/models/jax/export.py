"""The raw head path of a JAX detector as ONNX, through jax2onnx: NCHW images in, decoded boxes and class
probabilities out (NMS outside), at a static shape. `xprune.export.onnx_export` adds the metadata, onnxslim and the
fold, the same for every family."""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import onnx

from xprune.models.jax import require_jax
from xprune.models.jax.jitted import compiled
from xprune.models.jax.tinyssd import anchors, raw_outputs

if TYPE_CHECKING:
    from xprune.models.jax.detector import JaxDetector


def raw_heads_onnx(detector: JaxDetector, batch: int, opset: int, input_name: str,
                   output_names: list[str]) -> onnx.ModelProto:
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
                    model_name=detector.family.replace("-", "_"), input_names=[input_name], output_names=output_names)
    # jax2onnx keeps the NHWC shapes of some tensors that its Conv rewrite computes in NCHW; shape inference
    # (onnxslim's, the fold's, ONNX Runtime's) recomputes them all from the static input.
    del model.graph.value_info[:]
    return model
