"""Input-independence propagation: for a fixed input shape, find the tensors that no longer depend on the input,
compute them once, store them as constants and drop the nodes that only fed them."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.logger import G_LOGGER

from xprune.errors import XpruneError
from xprune.export.fold.graph import (first_line, fresh_name, import_with_shapes, is_default_domain,
                                      names_read_in_subgraphs, static_shape, to_model)
from xprune.export.fold.rules import constant_bias, never_folded, weight_operands

BROADCAST_OPS = ("Add", "Sub", "Mul", "Div")


def constant_shapes(graph: gs.Graph) -> int:
    """Shape and Size of a tensor whose shape is static become constants."""
    done = 0
    for node in graph.nodes:
        if node.op not in ("Shape", "Size") or not is_default_domain(node) or not node.outputs:
            continue
        shape = static_shape(node.inputs[0])
        if shape is not None:
            start, end = node.attrs.get("start", 0), node.attrs.get("end")
            _make_constant(node.outputs[0], np.array(shape[start:end] if node.op == "Shape" else math.prod(shape),
                                                     np.int64))
            done += 1
    return done


def constant_outputs_of_zero_weights(graph: gs.Graph) -> int:
    """The output of a Conv / ConvTranspose / Gemm / MatMul whose weight (either operand for Gemm and MatMul) is an
    all-zero constant, and whose output shape is static, becomes a constant: its bias broadcast (Gemm: beta*C)."""
    done = 0
    for node in graph.nodes:
        value = _zero_weight_output(node)
        if value is not None:
            _make_constant(node.outputs[0], value)
            done += 1
    return done


def _zero_weight_output(node: gs.Node) -> np.ndarray | None:
    operands = weight_operands(node)
    zero = [t.values for t in operands if isinstance(t, gs.Constant) and not np.any(t.values)]
    usable, bias = constant_bias(node)
    if not zero or not usable:
        return None
    out = static_shape(node.outputs[0])
    value = np.zeros(out, dtype=zero[0].dtype)
    if bias is not None:
        add = bias.values
        if node.op == "Gemm":
            add = np.asarray(node.attrs.get("beta", 1.0), dtype=add.dtype) * add
        else:
            add = add.reshape((1, -1) + (1,) * (len(out) - 2))
        value = value + add
    return np.ascontiguousarray(np.broadcast_to(value, out))


def _make_constant(tensor: gs.Tensor, value: np.ndarray) -> None:
    tensor.to_constant(value)
    tensor.inputs.clear()  # its producer loses the output and is left for cleanup()


def fold_constants(graph: gs.Graph) -> gs.Graph:
    """onnx-graphsurgeon's constant folding (evaluated by onnxruntime), then its cleanup. Never folded: random ops,
    control flow, other domains; onnx-graphsurgeon also keeps Q/DQ nodes (runtimes fuse them into int8 kernels)."""
    graph.toposort()
    try:
        with G_LOGGER.suppress(), _quiet_onnxruntime():
            graph.fold_constants(fold_shapes=False, recurse_subgraphs=False, flatten_subgraphs=False,
                                 recurse_functions=False, error_ok=False, should_exclude_node=never_folded)
    except Exception as e:
        raise XpruneError(f"onnxruntime could not evaluate the input-independent part: {first_line(e)}") from None
    return graph.cleanup()


@contextlib.contextmanager
def _quiet_onnxruntime():
    """onnxruntime's own constant folding warns about ops it has no CPU kernel for: not the user's concern."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    try:
        yield
    finally:
        ort.set_default_logger_severity(2)  # onnxruntime's default: warnings


def compact_broadcast_constants(graph: gs.Graph, tensors: list[gs.Constant] | None = None) -> int:
    """Store each constant (default: all) at its smallest exact broadcast shape where every reader is an Add / Sub
    / Mul / Div whose other operand already has the output's shape: a bias map [1,C,H,W] becomes [1,C,1,1]."""
    sub_reads = names_read_in_subgraphs(graph)
    done = 0
    for t in [t for t in graph.tensors().values() if isinstance(t, gs.Constant)] if tensors is None else tensors:
        value = t.values
        if (not t.outputs or value.ndim == 0 or t.name in sub_reads or t in graph.outputs
                or not all(_broadcasts_into_other(u, t) for u in t.outputs)):
            continue
        for axis in range(value.ndim):
            first = value.take([0], axis=axis)
            if value.shape[axis] > 1 and np.array_equal(value, np.broadcast_to(first, value.shape)):
                value = first
        if value.shape != t.values.shape:
            t.values = np.ascontiguousarray(value)
            done += 1
    return done


def _broadcasts_into_other(node: gs.Node, t: gs.Tensor) -> bool:
    if node.op not in BROADCAST_OPS or not is_default_domain(node) or len(node.inputs) != 2 \
            or node.inputs[0] is node.inputs[1]:
        return False
    other = static_shape(node.inputs[1] if node.inputs[0] is t else node.inputs[0])
    return other is not None and other == static_shape(node.outputs[0])


def fold_input_independent(graph: gs.Graph) -> tuple[int, list[str]]:
    """One round of propagation: constant shapes and zero-weight outputs, then everything computed only from
    constants. Returns how many computed tensors are now stored as constants, and the graph outputs among them."""
    computed = _computed_tensor_names(graph)
    outputs = {t.name for t in graph.outputs if isinstance(t, gs.Variable)}
    constant_shapes(graph)
    constant_outputs_of_zero_weights(graph)
    fold_constants(graph)
    folded = [t for t in graph.tensors().values() if isinstance(t, gs.Constant) and t.name in computed]
    compact_broadcast_constants(graph, folded)
    dead = [t.name for t in graph.outputs if isinstance(t, gs.Constant) and t.name in computed]
    for t in graph.outputs:  # an output keeps its name: a Constant node produces it
        if isinstance(t, gs.Constant) and t.name in outputs:
            value = gs.Constant(t.name, t.values)
            t.to_variable(dtype=value.values.dtype, shape=list(value.shape))
            graph.nodes.append(gs.Node("Constant", name=fresh_name(graph, t.name), attrs={"value": value},
                                       outputs=[t]))
    graph.toposort()
    return len(folded), dead


def _computed_tensor_names(graph: gs.Graph) -> set[str]:
    """Tensors some node computes (Constant nodes excepted: onnx-graphsurgeon stores those as constants anyway)."""
    return {name for name, t in graph.tensors().items()
            if isinstance(t, gs.Variable) and t.inputs and t.inputs[0].op != "Constant"}


def static_graph(model: onnx.ModelProto) -> gs.Graph:
    """The model as a graph with shapes. Where shape inference stops at a Reshape / Expand whose target is computed
    from Shape ops (raw torch exports), those shape computations are folded in a copy and shapes inferred again,
    until nothing changes; only the shapes found go back into the graph."""
    graph = import_with_shapes(model)
    scratch = graph
    for _ in range(len(graph.nodes)):
        unknown = {t.name: t for n in graph.nodes for t in n.outputs if not t.is_empty() and static_shape(t) is None}
        if not unknown:
            break
        scratch = graph.copy() if scratch is graph else scratch
        computed = _computed_tensor_names(scratch)
        constant_shapes(scratch)
        if computed == _computed_tensor_names(fold_constants(scratch)):
            break
        scratch = import_with_shapes(to_model(scratch, model))
        found = scratch.tensors()
        for name, t in unknown.items():
            if name in found and isinstance(found[name], gs.Variable) and static_shape(found[name]) is not None:
                t.shape = found[name].shape
                t.dtype = found[name].dtype if t.dtype is None else t.dtype
    return graph
