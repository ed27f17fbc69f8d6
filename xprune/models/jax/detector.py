"""`JaxDetector`: the common `Detector` interface over a Flax nnx module.

The module is run as pure functions of (graphdef, state): `nnx.split` gives the static graph and the arrays
(parameters and BatchNorm statistics), and the jitted functions are cached per (graphdef, input size), so zeroing
a conv in the state or copying the detector does not recompile. Inputs and outputs at the interface are what the
PyTorch families take and give (torch tensors or numpy arrays in, torch tensors out), so the shared post-process,
COCO evaluation and budget search run unchanged.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from xprune.models.detector import Detector, postprocess
from xprune.models.jax import FRAMEWORK
from xprune.models.jax.tinyssd import Targets, anchors, multibox_loss, raw_outputs


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


@dataclass
class JaxDetector(Detector):
    """A detector whose `model` is an nnx module with `taps_in_order()` and `predictor_names()` (see tinyssd)."""

    framework: ClassVar[str] = FRAMEWORK
    model: Any  # an nnx module with taps_in_order() (see tinyssd), where the PyTorch families hold an nn.Module

    def split(self) -> tuple[nnx.GraphDef, nnx.State]:
        return split_eval(self.model)

    def compiled(self) -> Compiled:
        return compiled(self.split()[0], self.input_size)

    def raw_arrays(self, x: Any) -> tuple[jax.Array, jax.Array]:
        """Raw outputs as JAX arrays (asynchronous: block on them to time the work)."""
        graphdef, state = self.split()
        return compiled(graphdef, self.input_size).raw(state, jnp.asarray(as_numpy(x)))

    def raw(self, x):
        boxes, scores = self.raw_arrays(x)
        return torch.from_numpy(np.array(boxes)), torch.from_numpy(np.array(scores))

    def predict(self, x) -> list[dict]:
        boxes, scores = self.raw(x)
        return postprocess(boxes, scores, iou=self.nms_iou)

    def loss(self, x, targets: list[dict]) -> torch.Tensor:
        """The multibox loss with BatchNorm on running statistics (a 0-d tensor, not differentiable in torch)."""
        graphdef, state = self.split()
        t = Targets.pad(targets)
        value = compiled(graphdef, self.input_size).loss_value(state, jnp.asarray(as_numpy(x)), t.boxes, t.labels,
                                                               t.valid)
        return torch.tensor(float(value))

    def conv_layers(self) -> dict[str, nnx.Conv]:  # type: ignore[override]
        """Every conv by its module path, in forward order."""
        return {t.name: t for t in self.model.taps_in_order()}

    def eval(self) -> JaxDetector:
        self.model.eval()
        return self


def build_tinyssd(num_classes: int, size: int, seed: int = 0) -> JaxDetector:
    """A randomly initialised TinySSD (seeded) for `num_classes` classes at input `size`."""
    from xprune.models.jax.tinyssd import TinySSD

    model = TinySSD(num_classes, seed=seed)
    return JaxDetector("tinyssd-jax", model, num_classes, size, predictor_layers=model.predictor_names()).eval()
