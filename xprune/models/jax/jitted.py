"""The nnx module as pure functions of (graphdef, state): `nnx.split` gives the static graph and the arrays
(parameters and BatchNorm statistics), and the jitted functions are cached per (graphdef, input size), so zeroing
a conv in the state or copying the detector does not recompile."""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
import torch
from flax import nnx

from xprune.models.jax.tinyssd import anchors, multibox_loss, raw_outputs


def as_numpy(x: Any) -> np.ndarray:
    """An image batch as float32 numpy (torch tensors are detached and moved to the CPU first)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def split_eval(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State]:
    """The static graph with BatchNorm on running statistics, and every array of the model."""
    model.eval()
    return nnx.split(model)


class Compiled(NamedTuple):
    raw: Callable  # (state, x) -> (boxes, scores)
    heads: Callable  # (state, x, taps) -> (logits, deltas, record), not jitted: callers jit what they compose
    loss: Callable  # (state, x, boxes, labels, valid, taps) -> (loss, record), not jitted
    loss_value: Callable  # (state, x, boxes, labels, valid) -> loss, jitted


@functools.lru_cache(maxsize=16)
def compiled(graphdef: nnx.GraphDef, size: int) -> Compiled:
    anchor = anchors(size)  # numpy: a constant of every trace (a jnp array made under a trace would leak)

    def heads(state, x, taps=None):
        record: dict[str, jax.Array] = {}
        logits, deltas = nnx.merge(graphdef, state)(x, taps, record)
        return logits, deltas, record

    def raw(state, x):
        logits, deltas, _ = heads(state, x)
        return raw_outputs(logits, deltas, anchor, size)

    def loss(state, x, boxes, labels, valid, taps=None):
        logits, deltas, record = heads(state, x, taps)
        return multibox_loss(logits, deltas, anchor, boxes, labels, valid), record

    return Compiled(jax.jit(raw), heads, loss, jax.jit(lambda *args: loss(*args)[0]))
