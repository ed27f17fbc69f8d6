"""Compact values of the tensors a fold makes constant, for predicting the fold without running it.

A tensor that becomes constant is kept as a value that broadcasts to its shape where that is cheap to know exactly:
per channel ([1, C, 1, ...]) where it is the same over batch and space, as a zeroed conv's bias is; the full value
where a padded conv makes the border differ; None where the value is not followed. A decision that needs a None
value is left to the real fold (`analysis.FoldAnalysis`).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from xprune.export.fold.graph import static_shape
from xprune.export.fold.rules import constant_bias, full_rank, padding_free, uniform, weight_operands

NOT_A_SEED = object()  # `zero_weight_value`: the op's output is not a zero-weight constant


def channel_map(v: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A uniform value as [1, C, 1, ...]."""
    v = np.broadcast_to(full_rank(v, len(shape)), shape)
    return np.ascontiguousarray(v[(slice(0, 1), slice(None)) + (slice(0, 1),) * (len(shape) - 2)])


def zero_weight_value(node: gs.Node, seeded: bool, operand_values: list) -> object:
    """A linear op's output when its weight is (or is taken as: `seeded`) all zero, by `rules.weight_operands`:
    the bias as [1, M, 1, ...], zeros without one; None for a Gemm/MatMul with a bias (not followed); NOT_A_SEED
    when the op is not a zero-weight output. `operand_values`: the weight operands' values (None: not known)."""
    operands = weight_operands(node)
    usable, bias = constant_bias(node)
    if not operands or not usable:
        return NOT_A_SEED
    zero = seeded and node.op == "Conv" or any(v is not None and not np.any(v) for v in operand_values)
    if not zero:
        return NOT_A_SEED
    out = static_shape(node.outputs[0])
    if node.op not in ("Conv", "ConvTranspose"):
        return None if bias is not None else np.zeros((1,) * len(out), np.float32)
    shape = (1, out[1]) + (1,) * (len(out) - 2)
    return bias.values.reshape(shape) if bias is not None else np.zeros(shape, np.float32)


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


def evaluate(node: gs.Node, inputs: list) -> list:
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
    if node.op == "Concat":
        return [_concat_value(node, inputs, shape)]
    is_uniform = uniform(x, in_shape)
    if node.op == "Conv":
        return [_conv_value(node, x, is_uniform, in_shape, shape)]
    nearest = node.op in ("Resize", "Upsample") and _attr(node, "mode", "nearest") == "nearest"
    if not is_uniform:
        if nearest:
            return [_upsampled_value(x, in_shape, shape)] + none[1:]
        if node.op == "MaxPool":
            return [_max_pool_value(node, x, in_shape)] + none[1:]
        return none
    if node.op in ("MaxPool", "GlobalAveragePool", "GlobalMaxPool") or nearest or (
            node.op == "AveragePool" and not any(node.attrs.get("pads", []))):
        return [channel_map(x, in_shape)] + none[1:]
    if node.op in ("Split", "Slice"):
        return _split_values(node, channel_map(x, in_shape), in_shape, inputs)
    return none


def _attr(node: gs.Node, key: str, default):
    v = node.attrs.get(key, default)
    return v.decode() if isinstance(v, bytes) else v


def _conv_value(node: gs.Node, x: np.ndarray, is_uniform: bool, in_shape, out_shape):
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
    if not is_uniform or not padding_free(node):
        return _full_conv_value(node, x, in_shape, w.values, b)
    group = node.attrs.get("group", 1)
    c = channel_map(x, in_shape).reshape(-1).astype(np.float64)
    kernel = w.values.astype(np.float64).reshape(m, w.shape[1], -1).sum(axis=2)  # [M, C/group]
    per = c.reshape(group, -1)  # [group, C/group]
    y = np.einsum("gmc,gc->gm", kernel.reshape(group, m // group, -1), per).reshape(-1) + b
    return y.reshape(compact).astype(w.values.dtype)


def _full_conv_value(node: gs.Node, x: np.ndarray, in_shape, w: np.ndarray, b: np.ndarray):
    """A 2-D Conv of a constant input at its full size, where the input varies over space or the zero padding
    makes the border differ from the centre: what follows can still make it constant (a Clip or ReLU of
    all-negative values is all zero), which the fold sees because it computes every constant. None for other
    ranks or implicit padding."""
    if len(in_shape) != 4 or _attr(node, "auto_pad", "NOTSET") != "NOTSET":
        return None
    import torch
    import torch.nn.functional as F

    top, left, bottom, right = node.attrs.get("pads", [0, 0, 0, 0])
    full = np.array(np.broadcast_to(full_rank(x, 4), in_shape), dtype=np.float32)
    with torch.no_grad():
        y = F.conv2d(F.pad(torch.from_numpy(full), (left, right, top, bottom)), torch.from_numpy(w.astype(np.float32)),
                     torch.from_numpy(b.astype(np.float32)), stride=tuple(node.attrs.get("strides", [1, 1])),
                     dilation=tuple(node.attrs.get("dilations", [1, 1])), groups=node.attrs.get("group", 1))
    return y.numpy().astype(w.dtype)


def _upsampled_value(x: np.ndarray, in_shape, out_shape) -> np.ndarray | None:
    """Nearest upsampling by whole factors repeats each pixel (for the default and asymmetric coordinate modes
    alike, since (i + 0.5) / s - 0.5 rounds to i // s)."""
    if len(in_shape) != len(out_shape) or any(o % i for i, o in zip(in_shape, out_shape)):
        return None
    full = np.broadcast_to(full_rank(x, len(in_shape)), in_shape)
    for axis, (i, o) in enumerate(zip(in_shape, out_shape)):
        if o != i:
            full = np.repeat(full, o // i, axis=axis)
    return np.ascontiguousarray(full)


def _max_pool_value(node: gs.Node, x: np.ndarray, in_shape) -> np.ndarray | None:
    """A 2-D MaxPool of a constant that varies over space, by torch (explicit symmetric pads only)."""
    pads = node.attrs.get("pads", [0, 0, 0, 0])
    if len(in_shape) != 4 or _attr(node, "auto_pad", "NOTSET") != "NOTSET" or node.attrs.get("ceil_mode", 0) \
            or pads[:2] != pads[2:] or len(node.outputs) > 1:
        return None
    import torch
    import torch.nn.functional as F

    full = torch.from_numpy(np.array(np.broadcast_to(full_rank(x, 4), in_shape), dtype=np.float32))
    y = F.max_pool2d(full, tuple(node.attrs["kernel_shape"]), tuple(node.attrs.get("strides", [1, 1])),
                     tuple(pads[:2]), tuple(node.attrs.get("dilations", [1, 1])))
    return y.numpy().astype(x.dtype)


def _concat_value(node: gs.Node, inputs: list, shape: tuple[int, ...]) -> np.ndarray | None:
    """A Concat of known values: per channel where every input is uniform on the channel axis, in full otherwise."""
    shapes = [static_shape(t) for t in node.inputs]
    if any(v is None or s is None or len(s) != len(shape) for v, s in zip(inputs, shapes)):
        return None
    axis = node.attrs.get("axis", 0) % len(shape)
    if axis == 1 and all(len(s) >= 3 and uniform(v, s) for v, s in zip(inputs, shapes)):
        return np.concatenate([channel_map(v, s) for v, s in zip(inputs, shapes)], axis=1)
    return np.concatenate([np.broadcast_to(full_rank(v, len(s)), s) for v, s in zip(inputs, shapes)], axis=axis)


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
