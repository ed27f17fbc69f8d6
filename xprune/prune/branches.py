"""What the fold removes when a conv layer is zeroed: the MACs of its whole branch, read off one exported graph.

A zeroed conv pays only through the fold (`xprune.export.fold`): its output becomes a constant, so does everything
computed only from it, every op that only fed those dies, and constant Concat slices read by a 1x1 conv leave that
conv's input channels. A conv on a branch that ends in an Add with a bypass takes the whole branch with it; a conv
whose output feeds a 3x3 conv through a Concat may remove little more than itself. The zeroed conv's own MACs are
therefore the wrong currency for a speed budget.

`FoldAnalysis` exports the detector once (the graph `export_onnx` folds) and replays the fold's passes as a graph
analysis, without running onnxruntime: for a set of zeroed layers it propagates which tensors become constant,
keeps for each a compact value (a per-channel array where the value is uniform over batch and space, as a zeroed
conv's bias is; None where the value is not followed), finds the ops no longer needed by any output, and applies
the fold's Concat-slice rule with the same predicates. One analysis takes milliseconds, so every candidate's
branch, and the marginal branch given layers already zeroed, cost one export in all. `macs_by_folding` runs the
real fold on the same graph for comparison; the tests hold the two equal on every conv of YOLOv8n and SSDlite and
on generated graphs.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from xprune.errors import XpruneError
from xprune.export.fold.graph import LINEAR_OPS, is_default_domain, node_macs, static_shape, with_static_inputs
from xprune.export.fold.propagate import NEVER_FOLD, static_graph
from xprune.export.fold.rewrite import _padding_free, _plain_conv
from xprune.models.detector import Detector

CACHE_SIZE = 1024  # replayed outcomes kept (sets of zeroed layers)


@dataclass(frozen=True)
class FoldOutcome:
    """The folded graph's MACs with a set of layers zeroed, which nodes the fold removes, and which graph outputs
    no longer depend on the input (then the zeroing killed a whole output)."""

    macs: int
    removed_nodes: frozenset[str]
    absorbed_concat_inputs: int
    dead_outputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Branch:
    """What zeroing `layer` removes (given the layers already zeroed): `macs` of the folded graph, and the conv
    layers whose every node goes with it (the layer itself included)."""

    layer: str
    macs: int
    layers: tuple[str, ...]


def _scope_layer(node_name: str) -> str:
    """The module path torch's exporter wrote into a node name: '/model/model.22/cv2.2/cv2.2.1/conv/Conv' ->
    'model.22.cv2.2.1.conv' (each scope names a child by its path below the previous scope)."""
    parts: list[str] = []
    for seg in node_name.strip("/").split("/")[:-1]:
        if parts and seg.startswith(parts[-1] + "."):
            parts[-1] = seg
        else:
            parts.append(seg)
    return ".".join(parts)


def layer_nodes(graph: gs.Graph, weight_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, list[str]]:
    """{conv layer: names of the Conv nodes it became} (several where a module runs more than once, as shared heads
    do). Matched on the exporter's scope names and checked on the weight shape."""
    found: dict[str, list[str]] = {name: [] for name in weight_shapes}
    for node in graph.nodes:
        if node.op != "Conv" or not node.name:
            continue
        name = _scope_layer(node.name)
        if name not in found:  # a module called again gets a numbered scope: 'conv.0.0_2'
            name = re.sub(r"_\d+(?=\.|$)", "", name)
        weight = static_shape(node.inputs[1]) if len(node.inputs) > 1 else None
        if name in found and weight == tuple(weight_shapes[name]):
            found[name].append(node.name)
    return found


class FoldAnalysis:
    """One exported graph and its conv layers' nodes; `outcome(zeroed)` replays the fold for any set of layers.
    weight_shapes: {conv layer: weight shape} of the module the graph was exported from."""

    def __init__(self, model: onnx.ModelProto, weight_shapes: Mapping[str, tuple[int, ...]]):
        self.model = model
        self.graph = static_graph(with_static_inputs(model, None)).toposort()
        self.nodes = list(self.graph.nodes)
        by_name = {n.name: n for n in self.nodes}
        self.nodes_of_layer = {layer: [by_name[n] for n in names]
                               for layer, names in layer_nodes(self.graph, weight_shapes).items()}
        self.macs_before = sum(node_macs(n) for n in self.nodes)
        self._macs = {id(n): node_macs(n) for n in self.nodes}
        self._outputs = {t.name for t in self.graph.outputs}
        self._cache: dict[frozenset[str], FoldOutcome] = {}

    @classmethod
    def of(cls, detector: Detector) -> FoldAnalysis:
        """Export the detector as `export_onnx` does before folding (torch export, onnxslim) and map its convs."""
        from xprune.export.onnx_export import export_raw, slim

        return cls(slim(export_raw(detector)), {n: tuple(c.weight.shape) for n, c in detector.conv_layers().items()})

    @property
    def layers(self) -> list[str]:
        return list(self.nodes_of_layer)

    def unmapped(self, layers: Iterable[str]) -> list[str]:
        return [n for n in layers if not self.nodes_of_layer.get(n)]

    def macs_after(self, zeroed: Iterable[str] = ()) -> int:
        """MACs of the folded graph with `zeroed` layers zeroed (and those zero in the export already)."""
        return self.outcome(zeroed).macs

    def removed_macs(self, layer: str, given: Iterable[str] = ()) -> int:
        """MACs the fold removes when `layer` is zeroed on top of `given`."""
        given = frozenset(given)
        return self.macs_after(given) - self.macs_after(given | {layer})

    def branch(self, layer: str, given: Iterable[str] = ()) -> Branch:
        given = frozenset(given)
        base, with_layer = self.outcome(given), self.outcome(given | {layer})
        gone = with_layer.removed_nodes - base.removed_nodes
        layers = tuple(n for n, nodes in self.nodes_of_layer.items()
                       if nodes and all(x.name in gone for x in nodes))
        return Branch(layer, base.macs - with_layer.macs, layers)

    def branches(self, layers: Iterable[str], given: Iterable[str] = ()) -> dict[str, Branch]:
        missing = self.unmapped(layers)
        if missing:
            raise XpruneError(f"{len(missing)} conv layers have no node in the exported graph (first: {missing[0]}); "
                              f"their fold-removed MACs are unknown")
        return {n: self.branch(n, given) for n in layers}

    # --- the replay ---------------------------------------------------------------------------------------------
    def outcome(self, zeroed: Iterable[str] = ()) -> FoldOutcome:
        key = frozenset(zeroed)
        if key not in self._cache:
            unknown = self.unmapped(key)
            if unknown:
                raise XpruneError(f"no node of the exported graph is layer {unknown[0]}")
            seeds = {id(x) for n in key for x in self.nodes_of_layer[n]}
            if len(self._cache) >= CACHE_SIZE:  # oldest first: a greedy walk asks about the latest sets
                del self._cache[next(iter(self._cache))]
            self._cache[key] = self._replay(seeds)
        return self._cache[key]

    def _replay(self, seeds: set[int]) -> FoldOutcome:
        known: dict[str, object] = {}  # computed tensor -> compact value (or None): it became a constant
        folded: set[int] = set()

        def is_constant(t: gs.Tensor) -> bool:
            return t.is_empty() or isinstance(t, gs.Constant) or t.name in known

        def value(t: gs.Tensor):
            return t.values if isinstance(t, gs.Constant) else known.get(t.name)

        with np.errstate(all="ignore"):
            for node in self.nodes:
                if node.op in NEVER_FOLD or not is_default_domain(node) or any(True for _ in node.subgraphs()):
                    continue
                seed = _zero_weight_value(node, id(node) in seeds)
                if seed is not _NOT:
                    known[node.outputs[0].name] = seed
                elif node.op in ("Shape", "Size") and static_shape(node.inputs[0]) is not None:
                    for out in node.outputs:
                        known[out.name] = None
                elif node.inputs and all(is_constant(t) for t in node.inputs) or node.op == "Constant":
                    outs = _evaluate(node, [value(t) for t in node.inputs])
                    for out, v in zip(node.outputs, outs):
                        known[out.name] = v
                else:
                    continue
                folded.add(id(node))

        live: set[int] = set()
        needed = {name for name in self._outputs if name not in known}
        for node in reversed(self.nodes):
            if id(node) in folded or not any(t.name in needed for t in node.outputs):
                continue
            live.add(id(node))
            needed.update(t.name for t in node.inputs if isinstance(t, gs.Variable) and t.name not in known)

        macs = sum(self._macs[id(n)] for n in self.nodes if id(n) in live)
        saved, absorbed = self._concat_slices(live, known)
        removed = frozenset(n.name for n in self.nodes if id(n) not in live)
        dead = tuple(t.name for t in self.graph.outputs if t.name in known)
        return FoldOutcome(macs - saved, removed, absorbed, dead)

    def _concat_slices(self, live: set[int], known: dict) -> tuple[int, int]:
        """`absorb_constant_concat_slices` on the replayed graph: the MACs its readers lose, and how many inputs."""
        saved = absorbed = 0
        for cat in self.nodes:
            if id(cat) not in live or cat.op != "Concat" or not is_default_domain(cat):
                continue
            out = cat.outputs[0]
            shapes = [static_shape(t) for t in cat.inputs]
            if out.name in self._outputs or any(s is None or len(s) < 3 for s in shapes):
                continue
            rank, total = len(shapes[0]), sum(s[1] for s in shapes)
            convs = [c for c in out.outputs if id(c) in live]
            if cat.attrs.get("axis", 0) % rank != 1 or not convs or not all(
                    _plain_conv(c, out, rank, total) for c in convs):
                continue
            dtype = convs[0].inputs[1].values.dtype
            drop = 0
            dropped = 0
            for t, s in zip(cat.inputs, shapes):
                v = t.values if isinstance(t, gs.Constant) else known.get(t.name, _NOT)
                if v is _NOT or v is None or v.dtype != dtype:
                    continue
                if not np.any(v) or (_uniform(v, s) and all(_padding_free(c) for c in convs)):
                    drop += s[1]
                    dropped += 1
            if not dropped or dropped == len(cat.inputs):
                continue
            saved += sum(self._macs[id(c)] * drop // total for c in convs)
            absorbed += dropped
        return saved, absorbed


def macs_by_folding(analysis: FoldAnalysis, zeroed: Iterable[str] = ()) -> int:
    """The MACs `export_onnx` leaves with `zeroed` layers zeroed, by running the real fold and onnxslim on the
    analysed export (its zeroed layers' weights replaced by zeros): slow, the reference for `FoldAnalysis`."""
    from xprune.export.fold import count_macs, fold_model
    from xprune.export.onnx_export import slim

    model = onnx.ModelProto()
    model.CopyFrom(analysis.model)
    names = {x.name for n in zeroed for x in analysis.nodes_of_layer[n]}
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.name in names:  # a fresh zero initializer: the old one may be shared
            zero = numpy_helper.from_array(np.zeros(shapes[node.input[1]], np.float32), f"{node.input[1]}__zeroed")
            if zero.name not in shapes:
                model.graph.initializer.append(zero)
                shapes[zero.name] = tuple(zero.dims)
            node.input[1] = zero.name
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # dead outputs are the caller's business here
        folded, _ = fold_model(model)
        return count_macs(slim(folded))


# --- compact values ---------------------------------------------------------------------------------------------

_NOT = object()  # "not a zero-weight seed"


def _zero_weight_value(node: gs.Node, seeded: bool):
    """A linear op's output when its weight is (or is taken as) all zero: the bias as a [1, M, 1, ...] array, zeros
    without one; None for Gemm/MatMul (followed no further); _NOT when the op is not a zero-weight output."""
    if node.op not in LINEAR_OPS or len(node.inputs) < 2 or not node.outputs:
        return _NOT
    out = static_shape(node.outputs[0])
    if out is None:
        return _NOT
    operands = node.inputs[1:2] if node.op in ("Conv", "ConvTranspose") else node.inputs[:2]
    zero = seeded and node.op == "Conv" or any(isinstance(t, gs.Constant) and not np.any(t.values) for t in operands)
    if not zero:
        return _NOT
    bias = node.inputs[2] if len(node.inputs) > 2 and not node.inputs[2].is_empty() else None
    if bias is not None and not isinstance(bias, gs.Constant):
        return _NOT
    if node.op not in ("Conv", "ConvTranspose"):
        return None if bias is not None else np.zeros((1,) * len(out), np.float32)
    shape = (1, out[1]) + (1,) * (len(out) - 2)
    return bias.values.reshape(shape) if bias is not None else np.zeros(shape, np.float32)


def _full_rank(v: np.ndarray, rank: int) -> np.ndarray:
    return v.reshape((1,) * (rank - v.ndim) + v.shape) if v.ndim < rank else v


def _uniform(v: np.ndarray, shape: tuple[int, ...]) -> bool:
    """Is v, broadcast to shape, the same over batch and space for every channel (finite)? The fold's test."""
    if not np.all(np.isfinite(v)):
        return False
    v = _full_rank(v, len(shape))
    if v.shape[0] == 1 and all(d == 1 for d in v.shape[2:]):
        return True
    full = np.broadcast_to(v, shape)
    ref = full[(slice(0, 1), slice(None)) + (slice(0, 1),) * (len(shape) - 2)]
    return bool(np.array_equal(full, np.broadcast_to(ref, shape)))


def _channels(v: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A uniform value as [1, C, 1, ...]."""
    v = np.broadcast_to(_full_rank(v, len(shape)), shape)
    return np.ascontiguousarray(v[(slice(0, 1), slice(None)) + (slice(0, 1),) * (len(shape) - 2)])


def _hard_sigmoid(v, alpha=0.2, beta=0.5):
    return np.clip(alpha * v + beta, 0, 1)


_UNARY = {
    "Identity": lambda v, n: v,
    "Relu": lambda v, n: np.maximum(v, 0).astype(v.dtype),
    "Sigmoid": lambda v, n: (1 / (1 + np.exp(-v))).astype(v.dtype),
    "HardSigmoid": lambda v, n: _hard_sigmoid(v, n.attrs.get("alpha", 0.2), n.attrs.get("beta", 0.5)).astype(v.dtype),
    "HardSwish": lambda v, n: (v * _hard_sigmoid(v, 1 / 6, 0.5)).astype(v.dtype),
    "LeakyRelu": lambda v, n: np.where(v >= 0, v, n.attrs.get("alpha", 0.01) * v).astype(v.dtype),
    "Neg": lambda v, n: -v,
    "Abs": lambda v, n: np.abs(v),
    "Tanh": lambda v, n: np.tanh(v),
    "Exp": lambda v, n: np.exp(v),
}
_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}
_SHAPE_ONLY = {"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Expand", "Cast"}


def _evaluate(node: gs.Node, inputs: list) -> list:
    """Compact values of a folded node's outputs where they are cheap to know exactly; None otherwise."""
    outs = [static_shape(t) for t in node.outputs]
    none = [None] * len(node.outputs)
    shape = outs[0] if outs else None
    if node.op == "Constant":
        return [node.attrs["value"].values] if "value" in node.attrs else none
    if shape is None or any(v is None for v in inputs[:1]):
        return none
    x = inputs[0]
    if node.op in _UNARY:
        return [_UNARY[node.op](x, node)]
    if node.op == "Clip":
        lo = inputs[1] if len(inputs) > 1 and inputs[1] is not None else -np.inf
        hi = inputs[2] if len(inputs) > 2 and inputs[2] is not None else np.inf
        return [np.clip(x, lo, hi).astype(x.dtype)]
    if node.op in _BINARY and len(inputs) == 2 and inputs[1] is not None:
        return [_BINARY[node.op](x, inputs[1]).astype(np.result_type(x, inputs[1]))]
    if node.op in _SHAPE_ONLY:
        return [np.zeros((1,) * len(shape), x.dtype) if not np.any(x) else None]
    in_shape = static_shape(node.inputs[0])
    if in_shape is None or len(in_shape) < 3:
        return none
    uniform = _uniform(x, in_shape)
    if node.op == "Conv":
        return [_conv_value(node, x, uniform, in_shape, shape)]
    if not uniform:
        return none
    if node.op in ("MaxPool", "GlobalAveragePool", "GlobalMaxPool") or (
            node.op == "AveragePool" and not any(node.attrs.get("pads", [])) or (
            node.op in ("Resize", "Upsample") and _attr(node, "mode", "nearest") == "nearest")):
        return [_channels(x, in_shape)] + none[1:]
    if node.op == "Concat" and node.attrs.get("axis", 0) % len(shape) == 1:
        shapes = [static_shape(t) for t in node.inputs]
        if any(v is None or s is None or not _uniform(v, s) for v, s in zip(inputs, shapes)):
            return none
        return [np.concatenate([_channels(v, s) for v, s in zip(inputs, shapes)], axis=1)]
    if node.op in ("Split", "Slice"):
        return _split_values(node, _channels(x, in_shape), in_shape, inputs)
    return none


def _attr(node: gs.Node, key: str, default):
    v = node.attrs.get(key, default)
    return v.decode() if isinstance(v, bytes) else v


def _conv_value(node: gs.Node, x: np.ndarray, uniform: bool, in_shape, out_shape):
    """A Conv of a constant input: its bias where the input is zero; the kernel sums times the input where the
    input is uniform and no padding can make the border differ; None otherwise."""
    w = node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 and not node.inputs[2].is_empty() else None
    if not isinstance(w, gs.Constant) or (bias is not None and not isinstance(bias, gs.Constant)):
        return None
    m = out_shape[1]
    b = bias.values.astype(np.float64) if bias is not None else np.zeros(m)
    compact = (1, m) + (1,) * (len(out_shape) - 2)
    if not np.any(x):
        return b.reshape(compact).astype(w.values.dtype)
    if not uniform:
        return None
    if not _padding_free(node):
        return _padded_conv_value(node, x, in_shape, w.values, b)
    group = node.attrs.get("group", 1)
    c = _channels(x, in_shape).reshape(-1).astype(np.float64)
    kernel = w.values.astype(np.float64).reshape(m, w.shape[1], -1).sum(axis=2)  # [M, C/group]
    per = c.reshape(group, -1)  # [group, C/group]
    y = np.einsum("gmc,gc->gm", kernel.reshape(group, m // group, -1), per).reshape(-1) + b
    return y.reshape(compact).astype(w.values.dtype)


def _padded_conv_value(node: gs.Node, x: np.ndarray, in_shape, w: np.ndarray, b: np.ndarray):
    """A padded 2-D Conv of a uniform input at its full size: the zero padding makes the border differ from the
    centre, and what follows can still make it constant (a Clip or ReLU of all-negative values is all zero), which
    the fold sees because it computes every constant. None for other ranks or implicit padding."""
    if len(in_shape) != 4 or _attr(node, "auto_pad", "NOTSET") != "NOTSET":
        return None
    import torch
    import torch.nn.functional as F

    top, left, bottom, right = node.attrs.get("pads", [0, 0, 0, 0])
    full = np.broadcast_to(_channels(x, in_shape), (1, *in_shape[1:])).astype(np.float32)
    with torch.no_grad():
        y = F.conv2d(F.pad(torch.from_numpy(full), (left, right, top, bottom)), torch.from_numpy(w.astype(np.float32)),
                     torch.from_numpy(b.astype(np.float32)), stride=tuple(node.attrs.get("strides", [1, 1])),
                     dilation=tuple(node.attrs.get("dilations", [1, 1])), groups=node.attrs.get("group", 1))
    return y.numpy().astype(w.dtype)


def _split_values(node: gs.Node, x: np.ndarray, in_shape, inputs) -> list:
    """Split / Slice of a uniform value: channel ranges where they cut channels, the same value otherwise."""
    rank = len(in_shape)
    none = [None] * len(node.outputs)
    if node.op == "Split":
        axis = node.attrs.get("axis", 0) % rank
        if axis != 1:
            return [x] * len(node.outputs)
        sizes = [static_shape(t) for t in node.outputs]
        if any(s is None for s in sizes):
            return none
        bounds = np.cumsum([0] + [s[1] for s in sizes])
        return [x[:, a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    if len(inputs) < 3 or inputs[1] is None or inputs[2] is None:
        return none
    starts, ends = np.asarray(inputs[1]).reshape(-1), np.asarray(inputs[2]).reshape(-1)
    axes = np.asarray(inputs[3]).reshape(-1) if len(inputs) > 3 and inputs[3] is not None else np.arange(len(starts))
    steps = np.asarray(inputs[4]).reshape(-1) if len(inputs) > 4 and inputs[4] is not None else np.ones(len(starts))
    if len(inputs) > 3 and inputs[3] is None and not node.inputs[3].is_empty():
        return none
    index = [slice(None)] * rank
    for s, e, a, st in zip(starts, ends, axes, steps):
        if int(a) % rank == 1:
            index[1] = slice(*slice(int(s), int(e), int(st)).indices(in_shape[1]))
    return [x[tuple(index)]]


def fold_analysis_for(detector: Detector, required: bool = False, log=lambda message: None) -> FoldAnalysis | None:
    """`FoldAnalysis.of(detector)` for a PyTorch detector; None for one the ONNX export does not cover (a JAX
    model), which is an error only when `required` (the per-mac ranking)."""
    if getattr(detector, "framework", "torch") != "torch":
        if required:
            raise XpruneError(f"the per-mac ranking reads the exported ONNX graph; {detector.family} is not exported "
                              f"through torch.onnx")
        return None
    log("exporting once to measure what the fold removes per candidate layer")
    return FoldAnalysis.of(detector)


def branch_macs(detector: Detector, layers: Iterable[str] | None = None) -> dict[str, int]:
    """{layer: MACs the fold removes if that layer alone is zeroed} for `layers` (default: every conv)."""
    analysis = FoldAnalysis.of(detector)
    names = list(layers) if layers is not None else analysis.layers
    return {n: b.macs for n, b in analysis.branches(names).items()}


__all__ = ["Branch", "FoldAnalysis", "FoldOutcome", "branch_macs", "fold_analysis_for", "layer_nodes",
           "macs_by_folding"]
