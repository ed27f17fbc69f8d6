"""The folding passes' view of a model: an onnx-graphsurgeon graph whose data inputs have one fixed shape and whose
tensors carry every shape that shape inference can find."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import shape_inference
from onnx_graphsurgeon.logger import G_LOGGER

from xprune.errors import XpruneError

LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def static_shape(tensor: gs.Tensor) -> tuple[int, ...] | None:
    shape = tensor.shape
    if shape is None or not all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape):
        return None
    return tuple(int(d) for d in shape)


def is_default_domain(node: gs.Node) -> bool:
    return node.domain in (None, "", "ai.onnx")


def names_read_in_subgraphs(graph: gs.Graph) -> set[str]:
    """Outer tensors that If/Loop/Scan bodies read: they keep their names and values."""
    names: set[str] = set()
    for node in graph.nodes:
        for sub in node.subgraphs():
            names |= {t.name for n in sub.nodes for t in n.inputs} | names_read_in_subgraphs(sub)
    return names


def fresh_name(graph: gs.Graph, base: str) -> str:
    taken = set(graph.tensors())
    k = 0
    while f"{base}__xf{k}" in taken:
        k += 1
    return f"{base}__xf{k}"


def replace_input(consumers, old: gs.Tensor, new: gs.Tensor) -> None:
    """Make every node in consumers read `new` where it read `old`."""
    for node in list(consumers):
        for k, t in enumerate(node.inputs):
            if t is old:
                node.inputs[k] = new


def to_model(graph: gs.Graph, template: onnx.ModelProto) -> onnx.ModelProto:
    """The graph in a copy of template: opsets, metadata, producer and functions stay as they were."""
    model = onnx.ModelProto()
    model.CopyFrom(template)
    with G_LOGGER.suppress():
        model.graph.CopyFrom(gs.export_onnx(graph, do_type_check=False).graph)
    return model


def with_static_inputs(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None) -> onnx.ModelProto:
    """A copy whose data inputs all have static dims (the folded constants are only valid for one shape)."""
    model, original = onnx.ModelProto(), model
    model.CopyFrom(original)
    given = dict(input_shapes or {})
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    unknown = sorted(set(given) - {i.name for i in inputs})
    if unknown:
        raise XpruneError(f"no model input named {', '.join(unknown)}; inputs are: {', '.join(i.name for i in inputs)}")
    for inp in inputs:
        if not inp.type.HasField("tensor_type"):
            raise XpruneError(f"input '{inp.name}' is not a tensor; only tensor inputs can be folded")
        tt = inp.type.tensor_type
        dims = list(tt.shape.dim) if tt.HasField("shape") else None
        if inp.name in given:
            want = given[inp.name]
            if dims is not None and (len(dims) != len(want) or any(
                    d.HasField("dim_value") and d.dim_value != w for d, w in zip(dims, want))):
                raise XpruneError(f"input '{inp.name}' has shape [{_dims_text(dims)}]; "
                                  f"the given shape {'x'.join(map(str, want))} does not fit it")
            tt.shape.ClearField("dim")
            for w in want:
                tt.shape.dim.add().dim_value = w
        elif dims is None or any(not d.HasField("dim_value") for d in dims):
            hint = "x".join(str(d.dim_value) if d.HasField("dim_value") else ("1" if k == 0 else d.dim_param or "N")
                            for k, d in enumerate(dims or []))
            raise XpruneError(f"input '{inp.name}' has dynamic dims [{_dims_text(dims)}]; "
                              f"pass --input-shape {inp.name}:{hint or '...'}")
    return model


def _dims_text(dims) -> str:
    if dims is None:
        return "unknown rank"
    return ", ".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)


def import_with_shapes(model: onnx.ModelProto) -> gs.Graph:
    try:
        inferred = shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception as e:
        raise XpruneError(f"ONNX shape inference failed: {first_line(e)}") from None
    try:
        with G_LOGGER.suppress():
            return gs.import_onnx(inferred)
    except Exception as e:
        raise XpruneError(f"onnx-graphsurgeon cannot read the model: {first_line(e)}") from None


def graph_macs(graph: gs.Graph) -> int:
    """MACs of Conv, ConvTranspose, Gemm and MatMul (zero weights count in full: the runtime does the work)."""
    return sum(node_macs(n) for n in graph.nodes)


def node_macs(node: gs.Node) -> int:
    if node.op not in LINEAR_OPS or len(node.inputs) < 2:
        return 0
    out, a, w = static_shape(node.outputs[0]), static_shape(node.inputs[0]), static_shape(node.inputs[1])
    if node.op == "Conv" and out and w:  # each output element: C/group x kernel MACs = prod(W.shape[1:])
        return math.prod(out) * math.prod(w[1:])
    if node.op == "ConvTranspose" and a and w:  # each input element scatters into M/group x kernel outputs
        return math.prod(a) * math.prod(w[1:])
    if node.op == "Gemm" and out and a:
        return math.prod(out) * a[0 if node.attrs.get("transA", 0) else 1]
    if node.op == "MatMul" and out and a:
        return math.prod(out) * a[-1]
    return 0
