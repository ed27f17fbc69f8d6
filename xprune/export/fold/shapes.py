"""Static input shapes, shape inference (completed through Shape->Reshape computations) and MAC counting."""

from __future__ import annotations

import math

import onnx
from onnx import shape_inference

from xprune.errors import XpruneError
from xprune.export.fold.graph import _attr, _first_line, _static
from xprune.export.fold.propagate import _SEED_OPS, _fold_constants


def _with_static_inputs(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None) -> onnx.ModelProto:
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


def _infer(model: onnx.ModelProto) -> tuple[dict[str, list | None], dict[str, int]]:
    """name -> dims (None where unknown) and name -> elem_type, from onnx shape inference."""
    try:
        inferred = shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception as e:
        raise XpruneError(f"ONNX shape inference failed: {_first_line(e)}") from None
    shapes: dict[str, list | None] = {}
    dtypes: dict[str, int] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type"):
            dtypes[vi.name] = tt.elem_type
            shapes[vi.name] = ([d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
                               if tt.HasField("shape") else None)
    for t in g.initializer:
        shapes[t.name], dtypes[t.name] = list(t.dims), t.data_type
    return shapes, dtypes


def _resolve_shapes(model: onnx.ModelProto) -> tuple[dict[str, list | None], dict[str, int]]:
    """Shape inference, completed where it stops at a Reshape/Expand whose target is computed from Shape ops
    (raw torch exports): fold those shape computations in a scratch copy and infer again, until nothing changes."""
    shapes, dtypes = _infer(model)
    scratch = None
    for _ in range(len(model.graph.node)):
        if all(_static(shapes, o) is not None for n in model.graph.node for o in n.output if o):
            break
        if scratch is None:
            scratch = onnx.ModelProto()
            scratch.CopyFrom(model)
        if not _fold_constants(scratch, dict(shapes), dtypes, seeds=False)[0]:
            break
        more, more_types = _infer(scratch)
        stored = {t.name for t in scratch.graph.initializer}  # may be stored compacted: not the tensor's shape
        shapes.update({k: v for k, v in more.items() if _static(shapes, k) is None and k not in stored})
        dtypes.update({k: v for k, v in more_types.items() if k not in dtypes})
    return shapes, dtypes


def _total_macs(g: onnx.GraphProto, shapes: dict) -> int:
    return sum(_node_macs(n, shapes) for n in g.node)


def _node_macs(node: onnx.NodeProto, shapes: dict) -> int:
    op = node.op_type
    if op not in _SEED_OPS or len(node.input) < 2:
        return 0
    out, a, w = (_static(shapes, n) for n in (node.output[0], node.input[0], node.input[1]))
    if op == "Conv" and out and w:  # each output element: C/group x kernel MACs = prod(W.shape[1:])
        return math.prod(out) * math.prod(w[1:])
    if op == "ConvTranspose" and a and w:  # each input element scatters into M/group x kernel outputs
        return math.prod(a) * math.prod(w[1:])
    if op == "Gemm" and out and a:
        return math.prod(out) * a[0 if _attr(node, "transA", 0) else 1]
    if op == "MatMul" and out and a:
        return math.prod(out) * a[-1]
    return 0
