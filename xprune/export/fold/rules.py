"""The fold's decisions, written once: which ops may be folded, when a linear op's output is a constant, and when a
constant Concat slice can leave the Convs that read it.

The fold (`propagate`, `rewrite`) applies these rules to a graph whose constants hold full values; the analysis
(`analysis.FoldAnalysis`) applies the same rules to compact values to predict, without rewriting anything, what the
fold removes. A rule that changes here changes both, so the MACs pruning ranks by are the MACs of the graph that
ships.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from xprune.export.fold.graph import LINEAR_OPS, is_default_domain, static_shape

NEVER_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


def never_folded(node: gs.Node) -> bool:
    """Random ops, other domains and control flow stay as they are, even on constant inputs."""
    return node.op in NEVER_FOLD or not is_default_domain(node) or any(True for _ in node.subgraphs())


def weight_operands(node: gs.Node) -> list[gs.Tensor]:
    """The operands whose all-zero value makes a linear op's output its bias: the weight of a Conv, either factor of
    a Gemm or MatMul. Empty for other ops, or where the output shape is not static."""
    if node.op not in LINEAR_OPS or not is_default_domain(node) or len(node.inputs) < 2 or not node.outputs \
            or static_shape(node.outputs[0]) is None:
        return []
    return list(node.inputs[1:2] if node.op in ("Conv", "ConvTranspose") else node.inputs[:2])


def constant_bias(node: gs.Node) -> tuple[bool, gs.Constant | None]:
    """(usable, bias): a linear op's output can be stored as a constant only if its bias is absent or constant."""
    bias = node.inputs[2] if len(node.inputs) > 2 and not node.inputs[2].is_empty() else None
    return bias is None or isinstance(bias, gs.Constant), bias


def full_rank(v: np.ndarray, rank: int) -> np.ndarray:
    return v.reshape((1,) * (rank - v.ndim) + v.shape) if v.ndim < rank else v


def uniform(v: np.ndarray, shape: tuple[int, ...]) -> bool:
    """Is v, broadcast to shape, the same over batch and space for every channel (and finite)?"""
    if not np.all(np.isfinite(v)):
        return False
    v = full_rank(v, len(shape))
    if v.shape[0] == 1 and all(d == 1 for d in v.shape[2:]):
        return True
    full = np.broadcast_to(v, shape)
    ref = full[(slice(0, 1), slice(None)) + (slice(0, 1),) * (len(shape) - 2)]
    return bool(np.array_equal(full, np.broadcast_to(ref, shape)))


def channels(v: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A uniform value as its per-channel vector [C]."""
    v = np.broadcast_to(full_rank(v, len(shape)), shape)
    return np.ascontiguousarray(v[(slice(0, 1), slice(None)) + (slice(0, 1),) * (len(shape) - 2)]).reshape(-1)


def padding_free(conv: gs.Node) -> bool:
    auto = conv.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto == "VALID":
        return True
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return all(k == 1 for k in conv.inputs[1].shape[2:])
    return not any(conv.attrs.get("pads", []))


def plain_conv(node: gs.Node, data: gs.Tensor, rank: int, channel_count: int) -> bool:
    """A group-1 Conv reading `data` only as its data input, with a constant float weight (and bias)."""
    if node.op != "Conv" or not is_default_domain(node) or len(node.inputs) < 2:
        return False
    w, bias = node.inputs[1], node.inputs[2] if len(node.inputs) > 2 else None
    return (node.inputs[0] is data and sum(t is data for t in node.inputs) == 1 and node.attrs.get("group", 1) == 1
            and isinstance(w, gs.Constant) and w.values.dtype.kind == "f" and w.values.ndim == rank
            and w.shape[1] == channel_count and (bias is None or bias.is_empty() or isinstance(bias, gs.Constant)))


def absorbing_convs(cat: gs.Node, readers: list[gs.Node]) -> list[gs.Node] | None:
    """The Convs a Concat's constant slices may move into: the Concat joins rank >= 3 tensors of static shape on
    axis 1 and every reader is a plain Conv of its output. None when the rule does not apply."""
    if cat.op != "Concat" or not is_default_domain(cat):
        return None
    shapes = [static_shape(t) for t in cat.inputs]
    if any(s is None or len(s) < 3 for s in shapes):
        return None
    rank, total = len(shapes[0]), sum(s[1] for s in shapes)
    out = cat.outputs[0]
    if cat.attrs.get("axis", 0) % rank != 1 or not readers or not all(
            plain_conv(c, out, rank, total) for c in readers):
        return None
    return readers


def slice_absorbable(value: np.ndarray, shape: tuple[int, ...], convs: list[gs.Node]) -> bool:
    """A constant slice leaves its Convs when it is all zero (any kernel and padding), or uniform per channel while
    no Conv pads: then it adds the same amount at every output pixel, which goes into the bias. Under a padded
    kernel > 1 a uniform slice differs at the border and stays."""
    if value.dtype != convs[0].inputs[1].values.dtype:
        return False
    return not np.any(value) or (uniform(value, shape) and all(padding_free(c) for c in convs))
