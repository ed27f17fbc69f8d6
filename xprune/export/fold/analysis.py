"""What the fold removes when conv layers are zeroed, predicted on one exported graph without rewriting it.

A zeroed conv pays only through the fold: its output becomes a constant, so does everything computed only from it,
every op that only fed those dies, and constant Concat slices read by plain convs leave those convs' input channels.
A conv on a branch that ends in an Add with a bypass takes the whole branch with it; a conv whose output feeds a 3x3
conv through a Concat may remove little more than itself. The zeroed conv's own MACs are the wrong currency.

`FoldAnalysis` exports the detector once (the graph `export_onnx` folds) and, for a set of zeroed layers, applies the
fold's own rules (`rules`: what folds, what a zero weight makes constant, which Concat slices leave their convs) to
compact values (`values`), then finds the ops no output needs any more. One replay takes milliseconds, so every
candidate's branch, and the marginal branch given layers already zeroed, cost one export in all. Where a rule needs a
value the compact form does not hold (a computed weight, a Concat slice that is not uniform per channel, a neutral op
the fold would drop first), the replay does not guess: that set of layers is answered by running the real fold
(`macs_by_folding`). Either way the MACs are the fold's.
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
from xprune.export.fold.graph import (is_default_domain, names_read_in_subgraphs, node_macs, static_shape,
                                      with_static_inputs)
from xprune.export.fold.propagate import static_graph
from xprune.export.fold.rewrite import neutral_operand
from xprune.export.fold.rules import absorbing_convs, never_folded, slice_absorbable, weight_operands
from xprune.export.fold.values import NOT_A_SEED, evaluate, zero_weight_value
from xprune.models.detector import Detector

CACHE_SIZE = 1024  # outcomes kept (sets of zeroed layers)


@dataclass(frozen=True)
class FoldOutcome:
    """The folded graph's MACs with a set of layers zeroed, which nodes the fold removes, and which graph outputs
    no longer depend on the input (then the zeroing killed a whole output)."""

    macs: int
    removed_nodes: frozenset[str]
    absorbed_concat_inputs: int
    dead_outputs: tuple[str, ...] = ()
    by_fold: str = ""  # why the replay could not decide and the real fold was run ("" where it decided)


@dataclass(frozen=True)
class Branch:
    """What zeroing `layer` removes (given the layers already zeroed): `macs` of the folded graph, and the conv
    layers whose every node goes with it (the layer itself included)."""

    layer: str
    macs: int
    layers: tuple[str, ...]


def scope_layer(node_name: str) -> str:
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
        name = scope_layer(node.name)
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
        # outer tensors a node's If/Loop/Scan bodies read: needed while that node is (the fold never folds bodies)
        self._read_inside = {id(n): names_read_in_subgraphs(gs.Graph(nodes=[n])) for n in self.nodes
                             if any(True for _ in n.subgraphs())}
        self._all_read_inside = set().union(*self._read_inside.values())

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

    def node_macs(self, names: Iterable[str]) -> int:
        """The MACs of the named nodes of the exported graph (before any fold)."""
        wanted = set(names)
        return sum(self._macs[id(n)] for n in self.nodes if n.name in wanted)

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
            replayed = self._replay(seeds)
            self._cache[key] = replayed if isinstance(replayed, FoldOutcome) else self._folded(key, replayed)
        return self._cache[key]

    def _replay(self, seeds: set[int]) -> FoldOutcome | str:
        """The fold's rules on compact values; where a rule needs a value they do not hold, what it was."""
        known: dict[str, object] = {}  # computed tensor -> compact value (or None): it became a constant
        folded: set[int] = set()

        def is_constant(t: gs.Tensor) -> bool:
            return t.is_empty() or isinstance(t, gs.Constant) or t.name in known

        def value(t: gs.Tensor):
            return t.values if isinstance(t, gs.Constant) else known.get(t.name)

        with np.errstate(all="ignore"):
            for node in self.nodes:
                if never_folded(node):
                    continue
                operands = [value(t) if is_constant(t) else None for t in weight_operands(node)]
                seed = zero_weight_value(node, id(node) in seeds, operands)
                if seed is not NOT_A_SEED:
                    known[node.outputs[0].name] = seed
                elif node.op in ("Shape", "Size") and static_shape(node.inputs[0]) is not None:
                    for out in node.outputs:
                        known[out.name] = None
                elif node.inputs and all(is_constant(t) for t in node.inputs) or node.op == "Constant":
                    for out, v in zip(node.outputs, evaluate(node, [value(t) for t in node.inputs])):
                        known[out.name] = v
                elif any(is_constant(t) and value(t) is None for t in weight_operands(node)):
                    # a computed weight of unknown value: the fold may find it zero in a later round
                    return f"{node.name}: a computed weight of unknown value"
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
            needed.update(name for name in self._read_inside.get(id(node), ()) if name not in known)

        slices = self._concat_slices(live, known)
        if isinstance(slices, str):
            return slices
        saved, absorbed = slices
        macs = sum(self._macs[id(n)] for n in self.nodes if id(n) in live)
        removed = frozenset(n.name for n in self.nodes if id(n) not in live)
        dead = tuple(t.name for t in self.graph.outputs if t.name in known)
        return FoldOutcome(macs - saved, removed, absorbed, dead)

    def _concat_slices(self, live: set[int], known: dict) -> tuple[int, int] | str:
        """`absorb_constant_concat_slices` on the replayed graph: the MACs its readers lose, and how many inputs;
        where it needs a value the replay does not hold, which."""
        saved = absorbed = 0
        for cat in self.nodes:
            if id(cat) not in live or cat.op != "Concat" or not is_default_domain(cat):
                continue
            out = cat.outputs[0]
            constant = [(t, static_shape(t)) for t in cat.inputs if isinstance(t, gs.Constant) or t.name in known]
            if out.name in self._outputs or out.name in self._all_read_inside or not constant:
                continue
            readers = [c for c in out.outputs if id(c) in live]
            convs = absorbing_convs(cat, readers)
            if convs is None:
                if any(neutral_operand(r) is not None for r in readers):  # the fold drops it, then may absorb
                    return f"{cat.name}: a constant slice read through a neutral op"
                continue
            total = sum(static_shape(t)[1] for t in cat.inputs)
            drop = dropped = 0
            for t, s in constant:
                v = t.values if isinstance(t, gs.Constant) else known[t.name]
                if v is None:
                    return f"{cat.name}: a constant slice of unknown value"
                if slice_absorbable(v, s, convs):
                    drop += s[1]
                    dropped += 1
            if not dropped or dropped == len(cat.inputs):
                continue
            saved += sum(self._macs[id(c)] * drop // total for c in convs)
            absorbed += dropped
        return saved, absorbed

    def _folded(self, zeroed: frozenset[str], why: str) -> FoldOutcome:
        """The outcome by running the real fold (and onnxruntime) on the analysed export: slow, never wrong."""
        folded, report = fold_with_zeroed(self, zeroed)
        names = {n.name for n in folded.graph.node}
        removed = frozenset(n.name for n in self.nodes if n.name not in names)
        return FoldOutcome(count_macs_slimmed(folded), removed, report.absorbed_concat_inputs,
                           tuple(report.dead_outputs), by_fold=why)


def fold_with_zeroed(analysis: FoldAnalysis, zeroed: Iterable[str] = ()):
    """The real fold of the analysed export with `zeroed` layers' weights replaced by zeros: (model, FoldReport)."""
    from xprune.export.fold import fold_model

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
        return fold_model(model)


def count_macs_slimmed(folded: onnx.ModelProto) -> int:
    """MACs as `export_onnx` counts them: after the second onnxslim."""
    from xprune.export.fold import count_macs
    from xprune.export.onnx_export import slim

    with contextlib.redirect_stdout(io.StringIO()):
        return count_macs(slim(folded))


def macs_by_folding(analysis: FoldAnalysis, zeroed: Iterable[str] = ()) -> int:
    """The MACs `export_onnx` leaves with `zeroed` layers zeroed, by the real fold and onnxslim: the reference."""
    return count_macs_slimmed(fold_with_zeroed(analysis, zeroed)[0])


def fold_analysis_for(detector: Detector, needed_by: str | None = None,
                      log=lambda message: None) -> FoldAnalysis | None:
    """`FoldAnalysis.of(detector)` for a PyTorch detector; None for one the ONNX export does not cover (a JAX
    model), which is an error when `needed_by` names what cannot do without it ("--target-macs")."""
    if detector.framework != "torch":
        if needed_by:
            raise XpruneError(f"{needed_by} reads the exported ONNX graph; {detector.family} is not exported "
                              f"through torch.onnx")
        return None
    log("exporting once to measure what the fold removes per candidate layer")
    return FoldAnalysis.of(detector)


__all__ = ["Branch", "FoldAnalysis", "FoldOutcome", "fold_analysis_for", "fold_with_zeroed",
           "layer_nodes", "macs_by_folding"]
