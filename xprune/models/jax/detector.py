"""`JaxDetector`: the common `Detector` interface over a Flax nnx module.

The module runs as the pure jitted functions of `xprune.models.jax.jitted`. Inputs and outputs at the interface are
what the PyTorch families take and give (torch tensors or numpy arrays in, torch tensors out), so the shared
post-process, COCO evaluation and budget search run unchanged; what pruning, export and the stages' counts need
from the model (zeroing by conv name, the float64 dependence check, the ONNX graph, MACs, checkpoints) is
implemented here over the parameter tree.
"""

from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import torch
from flax import nnx

from xprune.models.detector import Detector, postprocess
from xprune.models.jax import FRAMEWORK, checkpoint, counting, pruning
from xprune.models.jax.jitted import Compiled, as_numpy, compiled, split_eval
from xprune.models.jax.tinyssd import ANCHORS_PER_POSITION, Targets, feature_sizes


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

    # --- the interface over the parameter tree --------------------------------------------------------------------
    def zeroed(self, layers: list[str]) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        return pruning.zeroed(self, layers)

    def zero_layers(self, layers: list[str]) -> list[str]:
        return pruning.zero_layers(self, layers)

    def nonzero_layers(self, layers: list[str]) -> list[str]:
        convs = self.conv_layers()
        return [n for n in layers if bool(np.any(np.asarray(convs[n].kernel.get_value())))]

    def state_sha256(self) -> str:
        """SHA-256 of every array of the module, by path."""
        from xprune.resume import arrays_sha256
        flat = nnx.traversals.flatten_mapping(nnx.to_pure_dict(nnx.state(self.model)))
        return arrays_sha256((".".join(map(str, k)), v) for k, v in sorted(flat.items(), key=lambda kv: str(kv[0])))

    def float64_probe(self) -> JaxDetector:
        """A copy (the original stays untouched); its `outputs_depend_on_input` computes in float64 whatever the
        copy's dtype."""
        return copy.deepcopy(self)

    def outputs_depend_on_input(self, probes: int = 2, seed: int = 0) -> bool:
        return pruning.outputs_depend_on_input(self, probes, seed)

    def conv_summary(self) -> dict[str, dict]:
        return counting.conv_summary(self)

    def own_complexity(self) -> dict:
        return counting.complexity(self)

    def output_levels(self) -> list[tuple[str, int]]:
        return [(f"{side}x{side}", side * side * ANCHORS_PER_POSITION) for side in feature_sizes(self.input_size)]

    def raw_onnx(self, batch: int, opset: int, input_name: str, output_names: list[str]) -> onnx.ModelProto:
        """The raw head path traced by jax2onnx (extra `jax`)."""
        from xprune.models.jax.export import raw_heads_onnx

        return raw_heads_onnx(self, batch, opset, input_name, output_names)

    def save_checkpoint(self, path: str | os.PathLike, meta: dict | None = None, half: bool = False) -> None:
        """A flax msgpack file (*.msgpack); `half` stores floating arrays as fp16, loaded back as fp32."""
        checkpoint.save_checkpoint(self, path, meta, half)


def build_tinyssd(num_classes: int, size: int, seed: int = 0) -> JaxDetector:
    """A randomly initialised TinySSD (seeded) for `num_classes` classes at input `size`."""
    from xprune.models.jax.tinyssd import TinySSD

    model = TinySSD(num_classes, seed=seed)
    return JaxDetector("tinyssd-jax", model, num_classes, size, predictor_layers=model.predictor_names()).eval()
