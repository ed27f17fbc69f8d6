"""Exact folding of zeroed layers: turn the zeros a pruning wrote into work that is really gone.

Why this pass exists: ONNX simplifiers (onnxslim, onnxsim, polygraphy fold-constants) and TensorRT do not skip
all-zero weights. A Conv whose weight is all zero still runs as a dense Conv and costs its full MACs, and so does
every layer that only fed it. For a fixed input shape, though, such a layer's output no longer depends on the data:
it is its bias broadcast (or zeros). This pass computes every tensor that became input-independent once, stores it
as a constant and removes the ops that only fed it. It changes no value the model computes (a few float32 ulps at
most, where a bias is re-summed in float64).

Cases handled, all exact (if in doubt, a pattern is left alone):
- seeds: Conv / ConvTranspose / Gemm / MatMul whose weight (either operand for Gemm/MatMul) is an all-zero
  initializer or Constant, and whose output shape is static: the output is the bias (Gemm: beta*C) or zeros;
- anything computed only from seeds, constants and static shapes (Shape/Size of a static tensor) is evaluated once
  with onnxruntime and becomes an initializer (a graph output becomes a Constant node, its name kept). Never folded:
  random ops, control flow (If/Loop/Scan), non-default domains, and Q/DQ of a weight (QDQ patterns stay intact);
- dead-node and unused-initializer elimination;
- a folded constant feeding only Add/Sub/Mul/Div whose other operand already has the output shape is stored at its
  smallest exact broadcast shape (e.g. a bias map [1,C,H,W] becomes [1,C,1,1]);
- x+0, 0+x, x-0, x*1, 1*x, x/1 become x when the constant does not broadcast x to a larger shape;
- Concat (axis 1) whose every consumer is a group-1 Conv reading it as data: a constant input of the Concat is
  dropped, and the Conv weight loses those input channels, when the slice is all zero (any kernel, padding) or
  when it is uniform per channel over batch and space and the Conv has no padding (pads 0, auto_pad VALID, or
  SAME with a 1x... kernel): then the slice's contribution is the same at every output pixel and goes into the bias.
  A uniform slice under a padded kernel > 1 differs at the border and is left alone.

Caveat: a zero weight times inf/NaN is NaN, so a model fed non-finite inputs may differ from its folded version.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

from xprune.errors import XpruneError
from xprune.export.fold.graph import _first_line
from xprune.export.fold.propagate import _eliminate_dead, _fold_constants
from xprune.export.fold.rewrite import _absorb_concat_slices, _drop_neutral
from xprune.export.fold.shapes import _resolve_shapes, _total_macs, _with_static_inputs
from xprune.files import atomic_path


class DeadOutputWarning(UserWarning):
    """A graph output became a constant: the pruning removed every path from the input to it."""


@dataclass
class FoldReport:
    nodes_before: int
    nodes_after: int
    macs_before: int
    macs_after: int
    folded_tensors: int = 0
    absorbed_concat_inputs: int = 0
    dead_outputs: list[str] = field(default_factory=list)

    @property
    def removed_mac_fraction(self) -> float:
        return 1.0 - self.macs_after / self.macs_before if self.macs_before else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "removed_mac_fraction": self.removed_mac_fraction}


def parse_input_shape(text: str) -> dict[str, list[int]]:
    """'images:1x3x320x320' (several: comma-separated) -> {'images': [1, 3, 320, 320]}."""
    out: dict[str, list[int]] = {}
    for part in (text or "").split(","):
        name, sep, dims = part.strip().rpartition(":")
        try:
            shape = [int(d) for d in dims.lower().split("x")] if sep and name else []
        except ValueError:
            shape = []
        if not shape or any(d <= 0 for d in shape):
            raise XpruneError(f"bad input shape {part.strip()!r}: expected NAME:DxDx..., e.g. images:1x3x320x320")
        if name in out:
            raise XpruneError(f"input shape for {name!r} given twice")
        out[name] = shape
    return out


def fold_file(src, dst, input_shapes: dict[str, list[int]] | None = None) -> FoldReport:
    """Fold src into dst; dst appears only once it is complete."""
    folded, report = fold_model(_load(src), input_shapes)
    with atomic_path(dst) as tmp:
        onnx.save(folded, str(tmp), format="protobuf")
    return report


def count_macs(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None) -> int:
    """MACs of Conv, ConvTranspose, Gemm and MatMul (zero weights count in full: the runtime does the work)."""
    model = _with_static_inputs(model, input_shapes)
    return _total_macs(model.graph, _resolve_shapes(model)[0])


def fold_model(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None
               ) -> tuple[onnx.ModelProto, FoldReport]:
    """Return an equivalent model (for the fixed input shapes) without the work zero weights made pointless."""
    model = _with_static_inputs(model, input_shapes)
    shapes, dtypes = _resolve_shapes(model)
    g = model.graph
    report = FoldReport(len(g.node), 0, _total_macs(g, shapes), 0)
    while True:  # again while it finds more: a weight or bias may only become a plain constant in the last round
        folded, dead = _fold_constants(model, shapes, dtypes)  # (torch dedups equal initializers with Identity)
        if not folded:
            break
        report.folded_tensors += folded
        report.dead_outputs += dead
        _eliminate_dead(g)
    for _ in range(len(g.node) + 1):  # each round removes a node or a Concat input; stops when none does
        dropped = _drop_neutral(g, shapes)
        absorbed = _absorb_concat_slices(g, shapes)
        report.absorbed_concat_inputs += absorbed
        if not dropped + absorbed:
            break
        _eliminate_dead(g)
    report.nodes_after, report.macs_after = len(g.node), _total_macs(g, _resolve_shapes(model)[0])
    for name in report.dead_outputs:
        warnings.warn(f"output '{name}' no longer depends on the input: the pruning removed every path to it",
                      DeadOutputWarning, stacklevel=2)
    onnx.checker.check_model(model)
    return model, report


def _load(src) -> onnx.ModelProto:
    path = Path(src)
    if not path.is_file():
        raise XpruneError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:  # protobuf DecodeError, onnx ValidationError, external data missing, ...
        raise XpruneError(f"{path} is not a valid ONNX model: {_first_line(e)}") from None
    return model
