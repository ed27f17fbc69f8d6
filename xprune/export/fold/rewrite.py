"""Exact rewrites of a folded graph: neutral ops vanish, constant Concat slices move into the next Conv's bias."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from xprune.export.fold.graph import fresh_name, is_default_domain, names_read_in_subgraphs, replace_input, static_shape
from xprune.export.fold.rules import absorbing_convs, channels, slice_absorbable

NEUTRAL = {"Add": (0, True), "Sub": (0, False), "Mul": (1, True), "Div": (1, False)}  # op: (neutral, commutes)


def drop_neutral_ops(graph: gs.Graph) -> int:
    """Identity(x), x+0, 0+x, x-0, x*1, 1*x, x/1 become x, where the constant does not broadcast x to a larger
    shape. Returns how many ops were bypassed (cleanup() removes them)."""
    sub_reads = names_read_in_subgraphs(graph)
    return sum(1 for node in list(graph.nodes) if (x := neutral_operand(node)) is not None
               and _bypass(graph, node, x, sub_reads))


def neutral_operand(node: gs.Node) -> gs.Tensor | None:
    """The x of a neutral op on a computed tensor x, or None."""
    if not is_default_domain(node) or len(node.outputs) != 1:
        return None
    if node.op == "Identity":
        return node.inputs[0] if isinstance(node.inputs[0], gs.Variable) else None
    if node.op not in NEUTRAL or len(node.inputs) != 2:
        return None
    neutral, commutes = NEUTRAL[node.op]
    for x, c in (node.inputs, node.inputs[::-1]) if commutes else (node.inputs,):
        shape = static_shape(x)
        if (isinstance(c, gs.Constant) and isinstance(x, gs.Variable) and shape is not None
                and np.all(c.values == neutral) and np.broadcast_shapes(shape, c.shape) == shape):
            return x
    return None


def _bypass(graph: gs.Graph, node: gs.Node, x: gs.Tensor, sub_reads: set[str]) -> bool:
    """Make the readers of node's output read x instead. False where names forbid it."""
    out = node.outputs[0]
    if out.name in sub_reads or x.name in sub_reads:
        return False
    if out not in graph.outputs:
        replace_input(out.outputs, out, x)
        node.outputs.clear()
        return True
    if not x.inputs or x in graph.outputs:  # x is a graph input, or both names must stay
        return False
    # out is a graph output: its name stays, so x's producer writes out instead
    node.outputs.clear()
    node.inputs.clear()
    producer = x.inputs[0]
    replace_input(x.outputs, x, out)
    producer.outputs[producer.outputs.index(x)] = out
    return True


def absorb_constant_concat_slices(graph: gs.Graph) -> int:
    """Concat (axis 1) whose every reader is a group-1 Conv reading it as data: a constant input of the Concat is
    dropped, and the Convs lose those input channels, where `rules.slice_absorbable` says so (all zero, or uniform
    per channel while no Conv pads). Returns how many Concat inputs were absorbed."""
    sub_reads = names_read_in_subgraphs(graph)
    absorbed = 0
    for cat in [n for n in graph.nodes if n.op == "Concat" and is_default_domain(n)]:
        out = cat.outputs[0]
        if out in graph.outputs or out.name in sub_reads:
            continue
        convs = absorbing_convs(cat, list(out.outputs))
        if convs is None:
            continue
        in_shapes = [static_shape(t) for t in cat.inputs]
        drop, offset = {}, 0  # Concat input index -> (first channel, per-channel value)
        for k, (t, s) in enumerate(zip(cat.inputs, in_shapes)):
            if isinstance(t, gs.Constant) and slice_absorbable(t.values, s, convs):
                drop[k] = (offset, channels(t.values, s))
            offset += s[1]
        if not drop or len(drop) == len(cat.inputs):
            continue
        for conv in convs:
            _drop_input_channels(graph, conv, list(drop.values()))
        keep = [t for k, t in enumerate(cat.inputs) if k not in drop]
        if len(keep) == 1:  # the Concat is gone: the Convs read its remaining input
            replace_input(convs, out, keep[0])
        else:  # a new tensor: the old one has the old channel count
            shape = [in_shapes[0][0], sum(static_shape(t)[1] for t in keep), *in_shapes[0][2:]]
            new_out = gs.Variable(fresh_name(graph, out.name), dtype=out.dtype, shape=shape)
            replace_input(convs, out, new_out)
            cat.inputs.clear()
            cat.inputs.extend(keep)
            cat.outputs[0] = new_out
        absorbed += len(drop)
    return absorbed


def _drop_input_channels(graph: gs.Graph, conv: gs.Node, slices: list[tuple[int, np.ndarray]]) -> None:
    """Remove the input channels of constant slices [(first channel, per-channel value)] from conv, moving their
    contribution into the bias. Without padding every output pixel sees sum(W[:, slice] * c) exactly."""
    w = conv.inputs[1].values
    gone = np.zeros(w.shape[1], bool)
    contrib = np.zeros(w.shape[0], np.float64)
    for first, v in slices:
        gone[first:first + v.size] = True
        part = w[:, first:first + v.size].astype(np.float64).reshape(w.shape[0], v.size, -1)
        contrib += part.sum(axis=2) @ v.astype(np.float64)
    # fresh tensors: the old weight and bias may be shared with another node
    conv.inputs[1] = gs.Constant(fresh_name(graph, conv.inputs[1].name), np.ascontiguousarray(w[:, ~gone]))
    if np.any(contrib):
        bias = conv.inputs[2] if len(conv.inputs) > 2 and not conv.inputs[2].is_empty() else None
        old = bias.values.astype(np.float64) if bias is not None else 0.0
        base = (conv.inputs[1] if bias is None else bias).name + "_bias"
        new = gs.Constant(fresh_name(graph, base), (old + contrib).astype(w.dtype))
        if len(conv.inputs) > 2:
            conv.inputs[2] = new
        else:
            conv.inputs.append(new)
