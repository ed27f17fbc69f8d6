"""What a JAX detector's convs are and cost, counted the way ptflops counts a PyTorch conv (ptflops cannot trace an
nnx module): type, params, and MACs for one image (k x k x in x out / groups per output position, plus one add per
output element for a bias)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xprune.models.jax.jitted import compiled

if TYPE_CHECKING:
    from xprune.models.jax.detector import JaxDetector


def conv_type(conv: nnx.Conv) -> str:
    groups, kernel = conv.feature_group_count, tuple(conv.kernel_size)
    if groups == 1:
        return "pointwise" if kernel == (1, 1) else "conv"
    if groups == conv.in_features == conv.out_features:
        return "depthwise"
    return "grouped"


def conv_params(conv: nnx.Conv) -> int:
    return int(np.prod(conv.kernel.shape)) + (int(np.prod(conv.bias.shape)) if conv.bias is not None else 0)


def conv_summary(detector: JaxDetector) -> dict[str, dict]:
    """{conv name: {"type", "params"}} in forward order."""
    return {name: {"type": conv_type(conv), "params": conv_params(conv)}
            for name, conv in detector.conv_layers().items()}


def conv_output_shapes(detector: JaxDetector) -> dict[str, tuple[int, ...]]:
    """Each conv's output shape (NHWC) for one image at the detector's input size, without computing it."""
    graphdef, state = detector.split()
    x = jax.ShapeDtypeStruct((1, 3, detector.input_size, detector.input_size), jnp.float32)
    heads = compiled(graphdef, detector.input_size).heads
    record = jax.eval_shape(lambda s, v: heads(s, v)[2], state, x)
    return {name: tuple(s.shape) for name, s in record.items()}


def conv_macs(detector: JaxDetector) -> dict[str, int]:
    """{conv name: MACs for one image} in forward order."""
    shapes = conv_output_shapes(detector)
    out = {}
    for name, conv in detector.conv_layers().items():
        _, h, w, c = shapes[name]
        kh, kw = conv.kernel_size
        per_position = kh * kw * conv.in_features * c // conv.feature_group_count
        out[name] = int(per_position * h * w + (h * w * c if conv.bias is not None else 0))
    return out


def complexity(detector: JaxDetector) -> dict:
    """{'params', 'macs', 'conv_macs'} as `xprune.evaluate.complexity` gives it for a PyTorch detector. params are
    the trainable ones (BatchNorm scale and shift included, running statistics not); macs counts the convs only."""
    macs = conv_macs(detector)
    params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(detector.model, nnx.Param)))
    return {"params": params, "macs": sum(macs.values()), "conv_macs": macs}
