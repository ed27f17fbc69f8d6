"""Exact folding of zeroed layers: turn the zeros a pruning wrote into work that is really gone.

Why this pass exists: ONNX simplifiers (onnxslim, onnxsim, polygraphy fold-constants) and TensorRT do not skip
all-zero weights. A Conv whose weight is all zero still runs as a dense Conv and costs its full MACs, and so does
every layer that only fed it. For a fixed input shape, though, such a layer's output no longer depends on the data:
it is its bias broadcast (or zeros). This pass computes every tensor that became input-independent once, stores it
as a constant and removes the ops that only fed it. It changes no value the model computes (a few float32 ulps at
most, where a bias is re-summed in float64).

Cases handled, all exact (if in doubt, a pattern is left alone):
- seeds: Conv / ConvTranspose / Gemm / MatMul whose weight (either operand for Gemm/MatMul) is an all-zero
  initializer or Constant, and whose output shape is static: the output is the bias (Gemm: beta*C) or zeros;
- anything computed only from seeds, constants and static shapes (Shape/Size of a static tensor) is evaluated once
  with onnxruntime and becomes an initializer (a graph output becomes a Constant node, its name kept). Never folded:
  random ops, control flow (If/Loop/Scan), non-default domains, and Q/DQ of a weight (QDQ patterns stay intact);
- dead-node and unused-initializer elimination;
- a folded constant feeding only Add/Sub/Mul/Div whose other operand already has the output shape is stored at its
  smallest exact broadcast shape (e.g. a bias map [1,C,H,W] becomes [1,C,1,1]);
- x+0, 0+x, x-0, x*1, 1*x, x/1 become x when the constant does not broadcast x to a larger shape;
- Concat (axis 1) whose every consumer is a group-1 Conv reading it as data: a constant input of the Concat is
  dropped, and the Conv weight loses those input channels, when the slice is all zero (any kernel, padding) or
  when it is uniform per channel over batch and space and the Conv has no padding (pads 0, auto_pad VALID, or
  SAME with a 1x... kernel): then the slice's contribution is the same at every output pixel and goes into the bias.
  A uniform slice under a padded kernel > 1 differs at the border and is left alone.

Caveat: a zero weight times inf/NaN is NaN, so a model fed non-finite inputs may differ from its folded version.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from xprune.errors import XpruneError
from xprune.files import atomic_path

_SEED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
_NEVER_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
               "Bernoulli", "If", "Loop", "Scan"}
_NEUTRAL = {"Add": (0, True), "Sub": (0, False), "Mul": (1, True), "Div": (1, False)}  # op: (neutral, commutes)


class DeadOutputWarning(UserWarning):
    """A graph output became a constant: the pruning removed every path from the input to it."""


@dataclass
class FoldReport:
    nodes_before: int
    nodes_after: int
    macs_before: int
    macs_after: int
    folded_tensors: int = 0
    absorbed_concat_inputs: int = 0
    dead_outputs: list[str] = field(default_factory=list)

    @property
    def removed_mac_fraction(self) -> float:
        return 1.0 - self.macs_after / self.macs_before if self.macs_before else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "removed_mac_fraction": self.removed_mac_fraction}


def parse_input_shape(text: str) -> dict[str, list[int]]:
    """'images:1x3x320x320' (several: comma-separated) -> {'images': [1, 3, 320, 320]}."""
    out: dict[str, list[int]] = {}
    for part in (text or "").split(","):
        name, sep, dims = part.strip().rpartition(":")
        try:
            shape = [int(d) for d in dims.lower().split("x")] if sep and name else []
        except ValueError:
            shape = []
        if not shape or any(d <= 0 for d in shape):
            raise XpruneError(f"bad input shape {part.strip()!r}: expected NAME:DxDx..., e.g. images:1x3x320x320")
        if name in out:
            raise XpruneError(f"input shape for {name!r} given twice")
        out[name] = shape
    return out


def fold_file(src, dst, input_shapes: dict[str, list[int]] | None = None) -> FoldReport:
    """Fold src into dst; dst appears only once it is complete."""
    folded, report = fold_model(_load(src), input_shapes)
    with atomic_path(dst) as tmp:
        onnx.save(folded, str(tmp), format="protobuf")
    return report


def count_macs(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None) -> int:
    """MACs of Conv, ConvTranspose, Gemm and MatMul (zero weights count in full: the runtime does the work)."""
    model = _with_static_inputs(model, input_shapes)
    return _total_macs(model.graph, _resolve_shapes(model)[0])


def fold_model(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None
               ) -> tuple[onnx.ModelProto, FoldReport]:
    """Return an equivalent model (for the fixed input shapes) without the work zero weights made pointless."""
    model = _with_static_inputs(model, input_shapes)
    shapes, dtypes = _resolve_shapes(model)
    g = model.graph
    report = FoldReport(len(g.node), 0, _total_macs(g, shapes), 0)
    while True:  # again while it finds more: a weight or bias may only become a plain constant in the last round
        folded, dead = _fold_constants(model, shapes, dtypes)  # (torch dedups equal initializers with Identity)
        if not folded:
            break
        report.folded_tensors += folded
        report.dead_outputs += dead
        _eliminate_dead(g)
    for _ in range(len(g.node) + 1):  # each round removes a node or a Concat input; stops when none does
        dropped = _drop_neutral(g, shapes)
        absorbed = _absorb_concat_slices(g, shapes)
        report.absorbed_concat_inputs += absorbed
        if not dropped + absorbed:
            break
        _eliminate_dead(g)
    report.nodes_after, report.macs_after = len(g.node), _total_macs(g, _resolve_shapes(model)[0])
    for name in report.dead_outputs:
        warnings.warn(f"output '{name}' no longer depends on the input: the pruning removed every path to it",
                      DeadOutputWarning, stacklevel=2)
    onnx.checker.check_model(model)
    return model, report


# ---------------------------------------------------------------------------------------------- shapes and loading

def _load(src) -> onnx.ModelProto:
    path = Path(src)
    if not path.is_file():
        raise XpruneError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:  # protobuf DecodeError, onnx ValidationError, external data missing, ...
        raise XpruneError(f"{path} is not a valid ONNX model: {_first_line(e)}") from None
    return model


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


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


def _static(shapes: dict, name: str) -> tuple[int, ...] | None:
    dims = shapes.get(name)
    return tuple(dims) if dims is not None and all(d is not None for d in dims) else None


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


# ------------------------------------------------------------------------------------------------ graph utilities

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


def _foldable(node: onnx.NodeProto, consts: _Constants) -> bool:
    if node.domain not in ("", "ai.onnx") or node.op_type in _NEVER_FOLD or any(True for _ in _subgraphs(node)):
        return False
    # keep QDQ weight patterns (DequantizeLinear(int8 weight)) as they are: runtimes fuse them into int8 kernels
    return not (node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[0] in consts)


def _seed_value(node: onnx.NodeProto, consts: _Constants, shapes: dict) -> np.ndarray | None:
    """The output of a linear op with an all-zero weight: its bias broadcast (Gemm: beta*C), or zeros."""
    out = _static(shapes, node.output[0])
    if node.op_type not in _SEED_OPS or out is None or len(node.input) < 2:
        return None
    operands = node.input[1:2] if node.op_type in ("Conv", "ConvTranspose") else node.input[:2]
    zero = [v for v in (consts.get(n) for n in operands) if v is not None and not np.any(v)]
    if not zero:
        return None
    value = np.zeros(out, dtype=zero[0].dtype)
    extra = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if extra is not None:
        add = consts.get(extra)
        if add is None:
            return None
        if node.op_type == "Gemm":
            add = (np.asarray(_attr(node, "beta", 1.0), dtype=add.dtype) * add)
        else:
            add = add.reshape((1, -1) + (1,) * (len(out) - 2))
        value = value + add
    return np.ascontiguousarray(np.broadcast_to(value, out))


def _fresh(g: onnx.GraphProto, base: str) -> str:
    taken = {t.name for t in g.initializer} | {o for n in g.node for o in n.output} | {i.name for i in g.input}
    k = 0
    while f"{base}__xf{k}" in taken:
        k += 1
    return f"{base}__xf{k}"


def _eliminate_dead(g: onnx.GraphProto) -> None:
    """Keep only nodes some graph output needs; drop unused initializers and stale value_info."""
    nodes = list(g.node)
    producer = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    live: set[int] = set()
    needed = {o.name for o in g.output}
    stack = list(needed)
    while stack:
        k = producer.get(stack.pop())
        if k is not None and k not in live:
            live.add(k)
            new = _reads(nodes[k]) - needed
            needed |= new
            stack.extend(new)
    needed |= {i.name for i in g.input}  # an initializer that is also a graph input stays: input names are kept
    outputs = {o for k in live for o in nodes[k].output}
    _delete(g.node, [k for k in range(len(nodes)) if k not in live])
    _delete(g.initializer, [k for k, t in enumerate(g.initializer) if t.name not in needed])
    _delete(g.value_info, [k for k, v in enumerate(g.value_info) if v.name not in outputs])


def _delete(part, indices: list[int]) -> None:
    """Delete in place, by index: no copies of (possibly large) initializers."""
    for k in sorted(indices, reverse=True):
        del part[k]


# ------------------------------------------------------------------------------------------- constant propagation

def _fold_constants(model: onnx.ModelProto, shapes: dict, dtypes: dict, seeds: bool = True) -> tuple[int, list[str]]:
    """Replace every input-independent tensor that input-dependent work (or a graph output) reads by a constant.
    seeds=False folds only what was constant before any pruning (shape computations)."""
    g = model.graph
    consts = _Constants(g)
    nodes = list(g.node)
    indep: dict[str, int] = {}  # input-independent tensor -> index of its producer
    direct: dict[str, np.ndarray] = {}  # values known without running anything
    for k, node in enumerate(nodes):
        if not _foldable(node, consts):
            continue
        seed = _seed_value(node, consts, shapes) if seeds else None
        static_in = _static(shapes, node.input[0]) if node.input else None
        if seed is not None:
            direct[node.output[0]] = seed
        elif node.op_type == "Shape" and static_in is not None:  # Shape(x) of a static x is a constant
            direct[node.output[0]] = np.array(static_in[_attr(node, "start", 0):_attr(node, "end", None)], np.int64)
        elif node.op_type == "Size" and static_in is not None:
            direct[node.output[0]] = np.array(math.prod(static_in), np.int64)
        elif not all(i in consts.protos or i in indep for i in node.input if i):
            continue
        indep.update({o: k for o in node.output if o})
    folded_nodes = {k for k in indep.values() if nodes[k].op_type != "Constant"}

    read_by_dependent: set[str] = set()
    for k, node in enumerate(nodes):
        if k not in folded_nodes:
            read_by_dependent |= _reads(node)
    graph_outputs = [o.name for o in g.output]
    frontier = [t for t, k in indep.items() if k in folded_nodes and (t in read_by_dependent or t in graph_outputs)]
    if not frontier:
        return 0, []
    values = _evaluate(model, nodes, [t for t in frontier if t not in direct], indep, direct, consts, dtypes)
    values.update({t: direct[t] for t in frontier if t in direct})

    consumers: dict[str, list[onnx.NodeProto]] = {}
    for k, node in enumerate(nodes):
        for i in node.input:
            if k not in folded_nodes:
                consumers.setdefault(i, []).append(node)
    sub_reads = _subgraph_reads(g)
    dead = [t for t in graph_outputs if t in frontier]
    consts_for_outputs = [helper.make_node("Constant", [], [t], name=_fresh(g, t), value=numpy_helper.from_array(
        values[t], t)) for t in dead]
    for t in frontier:
        if t not in graph_outputs:
            value = _compact(values[t], t, consumers.get(t, []), sub_reads, shapes)
            g.initializer.append(numpy_helper.from_array(value, t))
            shapes[t] = list(value.shape)
    _delete(g.node, list(folded_nodes))
    if consts_for_outputs:  # Constant nodes go first: graph order must stay topological
        kept = [onnx.NodeProto.FromString(n.SerializeToString()) for n in g.node]
        del g.node[:]
        g.node.extend(consts_for_outputs + kept)
    return len(frontier), dead


def _evaluate(model: onnx.ModelProto, nodes: list, names: list[str], indep: dict, direct: dict,
              consts: _Constants, dtypes: dict) -> dict[str, np.ndarray]:
    """Run the input-independent part once with onnxruntime (no data input is read: seeds are given as values)."""
    if not names:
        return {}
    import onnxruntime as ort

    chosen: set[int] = set()
    stack, seen = list(names), set()
    while stack:
        t = stack.pop()
        if t in seen or t in direct or t not in indep:
            continue
        seen.add(t)
        chosen.add(indep[t])
        stack.extend(i for i in nodes[indep[t]].input if i)
    nodes = [nodes[k] for k in sorted(chosen)]  # graph order is topological
    read = {i for n in nodes for i in _reads(n)}
    inits = [consts.protos[i] for i in read if i in consts.protos]
    inits += [numpy_helper.from_array(v, t) for t, v in direct.items() if t in read]
    outputs = [helper.make_tensor_value_info(t, dtypes[t], None) if dtypes.get(t) else onnx.ValueInfoProto(name=t)
               for t in names]
    sub = helper.make_model(helper.make_graph(nodes, "xprune_fold", [], outputs, inits),
                            opset_imports=model.opset_import, ir_version=max(model.ir_version, 4))
    sub.functions.extend(model.functions)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        sess = ort.InferenceSession(sub.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return dict(zip(names, sess.run(names, {})))
    except Exception as e:
        raise XpruneError(f"onnxruntime could not evaluate the input-independent part: {_first_line(e)}") from None


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


# ------------------------------------------------------------------------------------------------ exact rewrites

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
