"""Exact rewrites of the folded graph: compact constants, drop neutral ops, absorb constant Concat slices into Convs."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from xprune.export.fold.graph import _attr, _Constants, _fresh, _static, _subgraph_reads

_NEUTRAL = {"Add": (0, True), "Sub": (0, False), "Mul": (1, True), "Div": (1, False)}  # op: (neutral, commutes)


def _compact(value: np.ndarray, name: str, users: list, sub_reads: set, shapes: dict) -> np.ndarray:
    """Store a constant at its smallest exact broadcast shape when every reader broadcasts it anyway."""
    if not users or name in sub_reads or value.ndim == 0:
        return value
    for u in users:
        if u.op_type not in _NEUTRAL or len(u.input) != 2 or u.input[0] == u.input[1]:
            return value
        other = _static(shapes, u.input[1] if u.input[0] == name else u.input[0])
        if other is None or other != _static(shapes, u.output[0]):
            return value
    for axis in range(value.ndim):
        first = value.take([0], axis=axis)
        if value.shape[axis] > 1 and np.array_equal(value, np.broadcast_to(first, value.shape)):
            value = first
    return np.ascontiguousarray(value)


def _rename_uses(g: onnx.GraphProto, old: str, new: str) -> None:
    for n in g.node:
        for k, i in enumerate(n.input):
            if i == old:
                n.input[k] = new


def _bypass(g: onnx.GraphProto, node: onnx.NodeProto, x: str, sub_reads: set) -> bool:
    """Make readers of node's output read x instead; the node becomes dead. False where names forbid it."""
    out = node.output[0]
    outputs = {o.name for o in g.output}
    if out in sub_reads or x in sub_reads:
        return False
    if out not in outputs:
        _rename_uses(g, out, x)
        return True
    # out is a graph output: its name must stay, so x's producer takes that name instead
    producer = next((n for n in g.node if x in n.output), None)
    if producer is None or x in outputs:
        return False
    _rename_uses(g, x, out)
    producer.output[list(producer.output).index(x)] = out
    node.output[0] = _fresh(g, out)
    return True


def _drop_neutral(g: onnx.GraphProto, shapes: dict) -> int:
    """x+0, x-0, x*1, x/1 -> x, where the constant does not broadcast x to a larger shape."""
    consts = _Constants(g)
    sub_reads = _subgraph_reads(g)
    done = 0
    for node in list(g.node):
        if node.op_type not in _NEUTRAL or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        neutral, commutes = _NEUTRAL[node.op_type]
        for xi, ci in ((0, 1), (1, 0)) if commutes else ((0, 1),):
            x, c = node.input[xi], consts.get(node.input[ci])
            xs = _static(shapes, x)
            if c is None or x in consts or xs is None or not np.all(c == neutral):
                continue
            if np.broadcast_shapes(xs, c.shape) == xs and _bypass(g, node, x, sub_reads):
                done += 1
                break
    return done


def _padding_free(conv: onnx.NodeProto, kernel: tuple[int, ...]) -> bool:
    auto = _attr(conv, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto == "VALID":
        return True
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return all(k == 1 for k in kernel)
    return not any(_attr(conv, "pads", []))


def _absorb_concat_slices(g: onnx.GraphProto, shapes: dict) -> int:
    """Drop constant Concat inputs whose contribution through every consuming Conv is a per-channel constant."""
    consts = _Constants(g)
    outputs = {o.name for o in g.output}
    sub_reads = _subgraph_reads(g)
    absorbed = 0
    for cat in [n for n in g.node if n.op_type == "Concat" and n.domain in ("", "ai.onnx")]:
        out = cat.output[0]
        in_shapes = [_static(shapes, i) for i in cat.input]
        if out in outputs or out in sub_reads or any(s is None or len(s) < 3 for s in in_shapes):
            continue
        rank, total = len(in_shapes[0]), sum(s[1] for s in in_shapes)
        users = [n for n in g.node if out in n.input]
        if _attr(cat, "axis", 0) % rank != 1 or not users or not all(
                _plain_conv(u, out, rank, total, consts) for u in users):
            continue
        drop, offset = [], 0  # (input index, first channel, per-channel value)
        for k, (name, s) in enumerate(zip(cat.input, in_shapes)):
            v = consts.get(name)
            if v is not None and v.dtype == consts.get(users[0].input[1]).dtype:
                ref = v[(slice(0, 1), slice(None)) + (slice(0, 1),) * (rank - 2)]
                uniform = np.all(np.isfinite(v)) and np.array_equal(v, np.broadcast_to(ref, v.shape))
                if not np.any(v) or (uniform and all(
                        _padding_free(u, consts.get(u.input[1]).shape[2:]) for u in users)):
                    drop.append((k, offset, ref.reshape(-1)))
            offset += s[1]
        if not drop or len(drop) == len(cat.input):
            continue
        for u in users:
            _drop_input_channels(g, u, [(first, v) for _, first, v in drop], consts)
        keep = [i for k, i in enumerate(cat.input) if k not in {d[0] for d in drop}]
        if len(keep) == 1:  # the Concat is gone: the Convs read its remaining input
            _rename_uses(g, out, keep[0])
        else:  # a new name: the old one may carry value_info with the old channel count
            new_out = _fresh(g, out)
            _rename_uses(g, out, new_out)
            del cat.input[:]
            cat.input.extend(keep)
            cat.output[0] = new_out
            shapes[new_out] = [in_shapes[0][0], total - sum(v.size for _, _, v in drop)] + list(in_shapes[0][2:])
        absorbed += len(drop)
    return absorbed


def _plain_conv(u: onnx.NodeProto, data: str, rank: int, channels: int, consts: _Constants) -> bool:
    """A group-1 Conv reading `data` only as its data input, with constant float weight (and bias)."""
    if u.op_type != "Conv" or u.domain not in ("", "ai.onnx") or list(u.input).count(data) != 1:
        return False
    w = consts.get(u.input[1]) if len(u.input) > 1 else None
    bias = u.input[2] if len(u.input) > 2 and u.input[2] else None
    return (u.input[0] == data and _attr(u, "group", 1) == 1 and w is not None and w.dtype.kind == "f"
            and w.ndim == rank and w.shape[1] == channels and (bias is None or consts.get(bias) is not None))


def _drop_input_channels(g: onnx.GraphProto, conv: onnx.NodeProto, slices: list, consts: _Constants) -> None:
    """Remove the input channels of constant slices [(first channel, per-channel value)] from conv, moving
    their contribution into the bias. With pads 0 every output pixel sees sum(W[:, slice] * c) exactly."""
    w = consts.get(conv.input[1])
    gone = np.zeros(w.shape[1], bool)
    contrib = np.zeros(w.shape[0], np.float64)
    for first, v in slices:
        gone[first:first + v.size] = True
        part = w[:, first:first + v.size].astype(np.float64).reshape(w.shape[0], v.size, -1)
        contrib += part.sum(axis=2) @ v.astype(np.float64)
    name = _fresh(g, conv.input[1])  # fresh names: the old weight may be shared with another node
    g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w[:, ~gone]), name))
    conv.input[1] = name
    if np.any(contrib):
        has_bias = len(conv.input) > 2 and conv.input[2]
        old = consts.get(conv.input[2]).astype(np.float64) if has_bias else 0.0
        name = _fresh(g, (conv.input[2] if has_bias else conv.input[1]) + "_bias")
        g.initializer.append(numpy_helper.from_array((old + contrib).astype(w.dtype), name))
        if len(conv.input) > 2:
            conv.input[2] = name
        else:
            conv.input.append(name)
