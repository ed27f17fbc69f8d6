"""Graph utilities shared by the folding passes: attributes, subgraph reads, constant values, fresh names."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _static(shapes: dict, name: str) -> tuple[int, ...] | None:
    dims = shapes.get(name)
    return tuple(dims) if dims is not None and all(d is not None for d in dims) else None


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _subgraphs(node: onnx.NodeProto):
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def _reads(node: onnx.NodeProto) -> set[str]:
    """Every tensor name the node reads, outer-scope names used inside its subgraphs included."""
    names = {i for i in node.input if i}
    for sg in _subgraphs(node):
        for n in sg.node:
            names |= _reads(n)
    return names


def _subgraph_reads(g: onnx.GraphProto) -> set[str]:
    return {i for n in g.node for sg in _subgraphs(n) for m in sg.node for i in _reads(m)}


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in ("value_float", "value_floats"):
            return np.array(helper.get_attribute_value(a), dtype=np.float32)
        if a.name in ("value_int", "value_ints"):
            return np.array(helper.get_attribute_value(a), dtype=np.int64)
    return None


class _Constants:
    """Values of initializers and Constant nodes, converted to numpy on first use."""

    def __init__(self, g: onnx.GraphProto):
        self.protos = {t.name: t for t in g.initializer}
        self.nodes = {n.output[0]: n for n in g.node if n.op_type == "Constant" and n.output}
        self.cache: dict[str, np.ndarray | None] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.protos or name in self.nodes

    def get(self, name: str) -> np.ndarray | None:
        if name not in self.cache:
            self.cache[name] = (numpy_helper.to_array(self.protos[name]) if name in self.protos else
                                _constant_value(self.nodes[name]) if name in self.nodes else None)
        return self.cache[name]


def _fresh(g: onnx.GraphProto, base: str) -> str:
    taken = {t.name for t in g.initializer} | {o for n in g.node for o in n.output} | {i.name for i in g.input}
    k = 0
    while f"{base}__xf{k}" in taken:
        k += 1
    return f"{base}__xf{k}"


def _delete(part, indices: list[int]) -> None:
    """Delete in place, by index: no copies of (possibly large) initializers."""
    for k in sorted(indices, reverse=True):
        del part[k]
