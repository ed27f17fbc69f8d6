"""Exact folding of zeroed layers: turn the zeros a pruning wrote into work that is really gone.

Why this pass exists: ONNX simplifiers (onnxslim, onnxsim, polygraphy fold-constants) and TensorRT do not skip
all-zero weights. A Conv whose weight is all zero still runs as a dense Conv and costs its full MACs, and so does
every layer that only fed it. For a fixed input shape, though, such a layer's output no longer depends on the data:
it is its bias broadcast (or zeros). This pass computes every tensor that became input-independent once, stores it
as a constant and removes the ops that only fed it. It changes no value the model computes (a few float32 ulps at
most, where a bias is re-summed in float64).

The model is held as an onnx-graphsurgeon graph with every shape resolved (`static_graph`); onnx-graphsurgeon
evaluates constants with onnxruntime, removes dead nodes and sorts. xprune's own part is a set of exact passes, each
usable alone and repeated until none finds more: `constant_shapes`, `constant_outputs_of_zero_weights` (the seeds: a
linear op with an all-zero weight outputs its bias broadcast), `fold_constants` (everything computed only from
constants; a graph output becomes a Constant node, its name kept), `compact_broadcast_constants` (a bias map
[1,C,H,W] added to x becomes [1,C,1,1]), `drop_neutral_ops` (Identity, x+0, x*1, ...) and
`absorb_constant_concat_slices` (a constant Concat slice read by a Conv moves into its bias). If in doubt, a pattern
is left alone. Never folded: random ops, control flow, non-default domains and Q/DQ nodes.

Caveat: a zero weight times inf/NaN is NaN, so a model fed non-finite inputs may differ from its folded version.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

from xprune.errors import XpruneError
from xprune.export.fold.graph import first_line, graph_macs, to_model, with_static_inputs
from xprune.export.fold.propagate import (compact_broadcast_constants, constant_outputs_of_zero_weights,
                                          constant_shapes, fold_constants, fold_input_independent, static_graph)
from xprune.export.fold.rewrite import absorb_constant_concat_slices, drop_neutral_ops
from xprune.files import atomic_path

__all__ = ["DeadOutputWarning", "FoldReport", "absorb_constant_concat_slices", "compact_broadcast_constants",
           "constant_outputs_of_zero_weights", "constant_shapes", "count_macs", "drop_neutral_ops", "fold_constants",
           "fold_file", "fold_input_independent", "fold_model", "parse_input_shape", "static_graph"]


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
    return graph_macs(static_graph(with_static_inputs(model, input_shapes)))


def fold_model(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None
               ) -> tuple[onnx.ModelProto, FoldReport]:
    """Return an equivalent model (for the fixed input shapes) without the work zero weights made pointless."""
    model = with_static_inputs(model, input_shapes)
    graph = static_graph(model)
    report = FoldReport(len(model.graph.node), 0, graph_macs(graph), 0)
    while True:  # again while a pass finds more: a weight may only become a plain constant in the last round
        folded, dead = fold_input_independent(graph)
        dropped = drop_neutral_ops(graph)
        absorbed = absorb_constant_concat_slices(graph)
        graph.cleanup().toposort()
        report.folded_tensors += folded
        report.absorbed_concat_inputs += absorbed
        report.dead_outputs += dead
        if not folded + dropped + absorbed:
            break
    model = to_model(graph, model)
    report.nodes_after, report.macs_after = len(model.graph.node), graph_macs(graph)
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
        raise XpruneError(f"{path} is not a valid ONNX model: {first_line(e)}") from None
    return model
