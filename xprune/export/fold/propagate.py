"""Constant propagation: find the tensors that no longer depend on the input, evaluate them once, and drop the
nodes that only fed them (dead-node elimination)."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from xprune.errors import XpruneError
from xprune.export.fold.graph import (_attr, _Constants, _delete, _first_line, _fresh, _reads, _static, _subgraph_reads,
                                      _subgraphs)
from xprune.export.fold.rewrite import _compact

_SEED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
_NEVER_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
               "Bernoulli", "If", "Loop", "Scan"}


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
