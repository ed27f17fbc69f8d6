"""The importance criteria for JAX detectors, computing what their PyTorch classes in `xprune.importance.criteria`
compute, and the per-layer facts of scores.json (type, params, MACs counted as ptflops counts a conv).

- attr:   E_x[ sum_i |dL/dA_i * A_i| ]: the loss (BatchNorm on running statistics) is differentiated with respect
          to a zero tap added to every conv output A, which is dL/dA; one jax.grad per calibration batch.
- taylor: |sum_w dL/dw * w| per conv kernel per batch, summed, divided by the images.
- l1:     sum |W| of the conv kernel (biases excluded, as for PyTorch).
- random: the PyTorch class itself (it only needs the conv names in order).
"""

from __future__ import annotations

import functools
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xprune.errors import XpruneError
from xprune.importance.criteria.base import Batch, Criterion, mean_per_image
from xprune.models.detector import Detector
from xprune.models.jax.detector import JaxDetector, as_numpy, compiled
from xprune.models.jax.tinyssd import Targets

METHODS = ("attr", "taylor", "l1", "random")


def check_method(detector: Detector, method: str) -> None:
    if method not in METHODS:
        raise XpruneError(f"method '{method}' is not available for {detector.family} (JAX); "
                          f"choose one of: {', '.join(METHODS)}")


def score(detector: JaxDetector, batches: Iterable[Batch] | None = None, *, criterion: Criterion,
          progress: bool = False, seed: int = 0, total: int | None = None) -> dict[str, float]:
    """{conv name: score} by `criterion` (one of METHODS), lower is less important."""
    if criterion.name == "random":
        return criterion.score(detector, batches, progress=progress, seed=seed, total=total)
    if criterion.name == "l1":
        return {name: float(jnp.sum(jnp.abs(conv.kernel[...]))) for name, conv in detector.conv_layers().items()}
    check_method(detector, criterion.name)
    graphdef, state = detector.split()
    names = list(detector.conv_layers())
    step = (_attr_step(graphdef, detector.input_size) if criterion.name == "attr"
            else _taylor_step(graphdef, detector.input_size, tuple(names)))
    sums = {name: 0.0 for name in names}
    images = 0
    for x, targets in criterion.progress_bar(batches or [], progress, total):
        t = Targets.pad(targets)
        values = step(state, jnp.asarray(as_numpy(x)), t.boxes, t.labels, t.valid)
        for name in names:
            sums[name] += float(values[name])
        images += x.shape[0]
    return mean_per_image(sums, images, "attribution" if criterion.name == "attr" else "taylor")


def kernel_path(name: str) -> tuple[str | int, ...]:
    """'blocks.0.1.conv' -> ('blocks', 0, 1, 'conv', 'kernel'): where the conv's kernel sits in the state."""
    return (*(int(p) if p.isdigit() else p for p in name.split(".")), "kernel")


@functools.lru_cache(maxsize=8)
def _attr_step(graphdef: nnx.GraphDef, size: int) -> Callable:
    fns = compiled(graphdef, size)

    @jax.jit
    def step(state, x, boxes, labels, valid):
        shapes = jax.eval_shape(lambda: fns.heads(state, x)[2])
        taps = {n: jnp.zeros(s.shape, s.dtype) for n, s in shapes.items()}
        grads, record = jax.grad(lambda t: fns.loss(state, x, boxes, labels, valid, t), has_aux=True)(taps)
        return {n: jnp.sum(jnp.abs(grads[n] * record[n])) for n in taps}

    return step


@functools.lru_cache(maxsize=8)
def _taylor_step(graphdef: nnx.GraphDef, size: int, names: tuple[str, ...]) -> Callable:
    fns = compiled(graphdef, size)

    @jax.jit
    def step(state, x, boxes, labels, valid):
        grads = jax.grad(lambda s: fns.loss(s, x, boxes, labels, valid)[0])(state)
        g, w = _flat(grads), _flat(state)
        return {n: jnp.abs(jnp.sum(g[kernel_path(n)] * w[kernel_path(n)])) for n in names}

    return step


def _flat(state: nnx.State) -> dict:
    return dict(nnx.traversals.flatten_mapping(nnx.to_pure_dict(state)))


# --- facts of each conv layer ------------------------------------------------------------------------------------

def conv_type(conv: nnx.Conv) -> str:
    groups, kernel = conv.feature_group_count, tuple(conv.kernel_size)
    if groups == 1:
        return "pointwise" if kernel == (1, 1) else "conv"
    if groups == conv.in_features == conv.out_features:
        return "depthwise"
    return "grouped"


def conv_output_shapes(detector: JaxDetector) -> dict[str, tuple[int, ...]]:
    """Each conv's output shape (NHWC) for one image at the detector's input size, without computing it."""
    graphdef, state = detector.split()
    x = jax.ShapeDtypeStruct((1, 3, detector.input_size, detector.input_size), jnp.float32)
    heads = compiled(graphdef, detector.input_size).heads
    record = jax.eval_shape(lambda s, v: heads(s, v)[2], state, x)
    return {name: tuple(s.shape) for name, s in record.items()}


def conv_facts(detector: JaxDetector) -> dict[str, dict]:
    """{conv name: {"type", "params", "macs"}} in forward order; MACs for one image as ptflops counts a conv
    (k x k x in x out / groups per output position, plus one add per output element for a bias)."""
    shapes = conv_output_shapes(detector)
    out = {}
    for name, conv in detector.conv_layers().items():
        _, h, w, c = shapes[name]
        kh, kw = conv.kernel_size
        per_position = kh * kw * conv.in_features * c // conv.feature_group_count
        bias = conv.bias is not None
        params = int(np.prod(conv.kernel.shape)) + (int(np.prod(conv.bias.shape)) if conv.bias is not None else 0)
        out[name] = {"type": conv_type(conv), "params": params,
                     "macs": int(per_position * h * w + (h * w * c if bias else 0))}
    return out


def complexity(detector: JaxDetector) -> dict:
    """`xprune.evaluate.complexity.complexity` for a JAX detector: {'params', 'macs', 'conv_macs'}. params are the
    trainable ones (BatchNorm scale and shift included, running statistics not); macs counts the convs only."""
    facts = conv_facts(detector)
    params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(detector.model, nnx.Param)))
    conv_macs = {name: f["macs"] for name, f in facts.items()}
    return {"params": params, "macs": sum(conv_macs.values()), "conv_macs": conv_macs}
