"""The criteria computed in JAX, for the JAX families: each is its PyTorch class (same name, definition and
scores.json line) with `score` written over the nnx parameter tree. `criterion_for` picks them by the detector's
framework.

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
from flax import nnx

from xprune.importance.criteria.base import Batch, Criterion, mean_per_image
from xprune.importance.criteria.gradient import Attribution, Taylor
from xprune.importance.criteria.weights import L1, RandomScores
from xprune.models.jax.detector import JaxDetector
from xprune.models.jax.jitted import as_numpy, compiled
from xprune.models.jax.pruning import kernel_path
from xprune.models.jax.tinyssd import Targets


class JaxL1(L1):
    def score(self, detector: JaxDetector, batches: Iterable[Batch] | None = None, *,  # type: ignore[override]
              progress: bool = False, seed: int = 0, total: int | None = None) -> dict[str, float]:
        return {name: float(jnp.sum(jnp.abs(conv.kernel[...]))) for name, conv in detector.conv_layers().items()}


class JaxAttribution(Attribution):
    def score(self, detector: JaxDetector, batches: Iterable[Batch] | None = None, *,  # type: ignore[override]
              progress: bool = False, seed: int = 0, total: int | None = None) -> dict[str, float]:
        step = _attr_step(detector.split()[0], detector.input_size)
        return gradient_scores(self, detector, step, batches, progress, total, "attribution")


class JaxTaylor(Taylor):
    def score(self, detector: JaxDetector, batches: Iterable[Batch] | None = None, *,  # type: ignore[override]
              progress: bool = False, seed: int = 0, total: int | None = None) -> dict[str, float]:
        step = _taylor_step(detector.split()[0], detector.input_size, tuple(detector.conv_layers()))
        return gradient_scores(self, detector, step, batches, progress, total, "taylor")


JAX_CRITERIA: dict[str, Criterion] = {c.name: c for c in (JaxAttribution(), JaxTaylor(), JaxL1(), RandomScores())}


def gradient_scores(criterion: Criterion, detector: JaxDetector, step: Callable, batches: Iterable[Batch] | None,
                    progress: bool, total: int | None, what: str) -> dict[str, float]:
    """Per-conv sums of `step(state, x, boxes, labels, valid)` over the calibration batches, per image."""
    _, state = detector.split()
    names = list(detector.conv_layers())
    sums = {name: 0.0 for name in names}
    images = 0
    for x, targets in criterion.progress_bar(batches or [], progress, total):
        t = Targets.pad(targets)
        values = step(state, jnp.asarray(as_numpy(x)), t.boxes, t.labels, t.valid)
        for name in names:
            sums[name] += float(values[name])
        images += x.shape[0]
    return mean_per_image(sums, images, what)


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
