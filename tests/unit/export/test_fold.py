"""Exact folding: random small graphs fold to the same function with no more nodes or MACs; targeted edge cases."""

import warnings

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from xprune.errors import XpruneError
from xprune.export.fold import (DeadOutputWarning, absorb_constant_concat_slices, compact_broadcast_constants,
                                constant_outputs_of_zero_weights, constant_shapes, count_macs, drop_neutral_ops,
                                fold_constants, fold_file, fold_input_independent, fold_model, parse_input_shape,
                                static_graph)

OPSET, IR = 17, 8


class Builder:
    """A graph on [1, C, H, W] tensors that knows its own shapes and MACs (an oracle for count_macs)."""

    def __init__(self, seed: int, c: int, h: int):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.k = [], [], 0
        self.macs, self.zero_macs = 0, 0
        self.shape = {"x": (1, c, h, h)}

    def name(self, prefix: str) -> str:
        self.k += 1
        return f"{prefix}{self.k}"

    def const(self, value) -> str:
        n = self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.float32), n))
        return n

    def op(self, op: str, inputs: list, shape, **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        self.shape[out] = shape
        return out

    def conv(self, x, out_ch, k=1, stride=1, group=1, pad=None, bias=True, zero=False) -> str:
        _, c, h, w = self.shape[x]
        pad = k // 2 if pad is None else pad
        weight = np.zeros((out_ch, c // group, k, k)) if zero else self.rng.normal(0, 0.5, (out_ch, c // group, k, k))
        ins = [x, self.const(weight)] + ([self.const(self.rng.normal(0, 0.5, out_ch))] if bias else [])
        ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        y = self.op("Conv", ins, (1, out_ch, ho, wo), kernel_shape=[k, k], strides=[stride, stride],
                    pads=[pad] * 4, group=group)
        macs = out_ch * ho * wo * (c // group) * k * k
        self.macs += macs
        self.zero_macs += macs if zero else 0
        return y

    def act(self, x, kind: str) -> str:
        if kind == "relu":
            return self.op("Relu", [x], self.shape[x])
        if kind == "sigmoid":
            return self.op("Sigmoid", [x], self.shape[x])
        if kind == "silu":
            return self.op("Mul", [x, self.op("Sigmoid", [x], self.shape[x])], self.shape[x])
        return x

    def model(self, outputs: list[str], extra_output: str | None = None) -> onnx.ModelProto:
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, list(self.shape[o])) for o in outputs]
        graph = helper.make_graph(self.nodes, "g", [helper.make_tensor_value_info(
            "x", TensorProto.FLOAT, list(self.shape["x"]))], outs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR)
        onnx.checker.check_model(model)
        return model


ACTS = st.sampled_from(["none", "relu", "sigmoid", "silu"])
ZERO = st.sampled_from([False, False, True])


def _conv_block(b: Builder, x: str, draw) -> str:
    _, c, h, _ = b.shape[x]
    kind = draw(st.sampled_from(["plain", "depthwise", "grouped"]))
    group, out_ch = 1, draw(st.integers(2, 8))
    if kind == "depthwise":
        group = out_ch = c
    elif kind == "grouped" and c % 2 == 0:
        group, out_ch = 2, 2 * draw(st.integers(1, 4))
    stride = draw(st.sampled_from([1, 2])) if h >= 8 else 1
    y = b.conv(x, out_ch, draw(st.sampled_from([1, 3])), stride, group, bias=draw(st.booleans()), zero=draw(ZERO))
    return b.act(y, draw(ACTS))


def _residual_block(b: Builder, x: str, draw) -> str:
    c = b.shape[x][1]
    y = b.conv(x, draw(st.integers(2, 8)), draw(st.sampled_from([1, 3])), bias=draw(st.booleans()), zero=draw(ZERO))
    y = b.act(y, draw(ACTS))
    if draw(st.booleans()):  # depthwise then pointwise, MobileNet style
        y = b.conv(y, b.shape[y][1], 3, group=b.shape[y][1], zero=draw(ZERO))
    y = b.conv(y, c, 1, bias=draw(st.booleans()), zero=draw(ZERO))
    return b.op("Add", [x, y] if draw(st.booleans()) else [y, x], b.shape[x])


def _concat_block(b: Builder, x: str, draw) -> str:
    _, c, h, w = b.shape[x]
    parts = [x]
    for _ in range(draw(st.integers(1, 2))):
        y = b.conv(x, draw(st.integers(1, 4)), draw(st.sampled_from([1, 3])), bias=draw(st.booleans()),
                   zero=draw(ZERO))
        y = b.act(y, draw(ACTS))
        if draw(st.booleans()):  # a padded 3x3 after a zeroed conv makes a constant that differs at the border
            y = b.conv(y, b.shape[y][1], 3, bias=draw(st.booleans()))
        parts.append(y)
    parts = draw(st.permutations(parts))
    cat = b.op("Concat", parts, (1, sum(b.shape[p][1] for p in parts), h, w), axis=1)
    k = draw(st.sampled_from([1, 3]))
    return b.conv(cat, draw(st.integers(2, 8)), k, pad=draw(st.sampled_from([0, 1])) if k == 3 else 0,
                  bias=draw(st.booleans()))


def _neutral_block(b: Builder, x: str, draw) -> str:
    c = b.shape[x][1]
    op, value = draw(st.sampled_from([("Add", 0.0), ("Sub", 0.0), ("Mul", 1.0), ("Div", 1.0)]))
    if draw(st.integers(0, 3)) == 0:  # the neutral constant broadcasts a pooled x back up: not removable
        pooled = b.op("GlobalAveragePool", [x], (1, c, 1, 1))
        return b.op(op, [pooled, b.const(np.full(b.shape[x], value))], b.shape[x])
    shape = draw(st.sampled_from([(1,), (1, c, 1, 1), b.shape[x]]))
    return b.op(op, [x, b.const(np.full(shape, value))], b.shape[x])


def _gate_block(b: Builder, x: str, draw) -> str:
    """Squeeze-excite-like gate: x * sigmoid(conv1x1(x)); a zero conv leaves x * sigmoid(bias)."""
    g = b.conv(x, b.shape[x][1], 1, bias=True, zero=draw(ZERO))
    return b.op("Mul", [x, b.op("Sigmoid", [g], b.shape[g])], b.shape[x])


@st.composite
def graphs(draw):
    b = Builder(draw(st.integers(0, 2**31 - 1)), draw(st.integers(2, 4)), draw(st.sampled_from([8, 12, 16])))
    x, extra = "x", None
    blocks = [_conv_block, _residual_block, _concat_block, _neutral_block, _gate_block]
    for _ in range(draw(st.integers(1, 4))):
        x = draw(st.sampled_from(blocks))(b, x, draw)
        if extra is None and draw(st.integers(0, 4)) == 0:
            extra = x  # an intermediate output, also read further on
    tail = draw(st.sampled_from(["none", "gemm", "matmul"]))
    if tail != "none":
        c = b.shape[x][1]
        flat = b.op("Flatten", [b.op("GlobalAveragePool", [x], (1, c, 1, 1))], (1, c), axis=1)
        zero, n = draw(ZERO), draw(st.integers(1, 5))
        w = np.zeros((n, c)) if zero else b.rng.normal(0, 0.5, (n, c))
        if tail == "gemm":
            x = b.op("Gemm", [flat, b.const(w), b.const(b.rng.normal(0, 0.5, n))], (1, n), transB=1)
        else:
            x = b.op("MatMul", [flat, b.const(w.T)], (1, n))
        b.macs += c * n
        b.zero_macs += c * n if zero else 0
    outputs = [x] + ([extra] if extra not in (None, x) else [])
    return b, b.model(outputs)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _assert_same(a: onnx.ModelProto, b: onnx.ModelProto, seeds=(0, 1)) -> None:
    sa, sb = _session(a), _session(b)
    for seed in seeds:
        rng = np.random.default_rng(seed)
        feeds = {i.name: rng.normal(0, 1, [d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
                 for i in a.graph.input}
        for name, x, y in zip([o.name for o in a.graph.output], sa.run(None, feeds), sb.run(None, feeds)):
            assert x.shape == y.shape, name
            assert np.max(np.abs(x - y), initial=0.0) <= 1e-5 * max(1.0, np.max(np.abs(x), initial=0.0)), name


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(graphs())
def test_folding_is_exact_and_never_adds_work(case):
    b, model = case
    assert count_macs(model) == b.macs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeadOutputWarning)
        folded, report = fold_model(model)
    _assert_same(model, folded)
    assert report.nodes_before == len(model.graph.node) and report.nodes_after == len(folded.graph.node)
    assert report.nodes_after <= report.nodes_before
    assert report.macs_before == b.macs and report.macs_after == count_macs(folded)
    # every zeroed layer is gone, whether on a bypassed branch or not
    assert report.macs_after <= report.macs_before - b.zero_macs
    assert [o.name for o in folded.graph.output] == [o.name for o in model.graph.output]
    assert [i.name for i in folded.graph.input] == [i.name for i in model.graph.input]
    _, again = fold_model(folded)  # a fixed point: nothing left to fold
    assert (again.folded_tensors, again.absorbed_concat_inputs, again.nodes_after) == (0, 0, len(folded.graph.node))


# ------------------------------------------------------------------------------------------------ targeted cases

def _chain(zero_first: bool, dynamic_batch: bool = False) -> onnx.ModelProto:
    b = Builder(0, 3, 8)
    y = b.act(b.conv("x", 4, 3, zero=zero_first), "relu")
    y = b.conv(y, 2, 1)
    model = b.model([y])
    if dynamic_batch:
        for v in (model.graph.input[0], model.graph.output[0]):
            v.type.tensor_type.shape.dim[0].dim_param = "batch"
    return model


def test_zeroing_the_only_path_makes_a_dead_output_and_warns():
    model = _chain(zero_first=True)
    out = model.graph.output[0].name
    with pytest.warns(DeadOutputWarning, match=f"output '{out}' no longer depends on the input"):
        folded, report = fold_model(model)
    assert report.dead_outputs == [out]
    assert report.macs_after == 0 and report.removed_mac_fraction == 1.0
    assert [n.op_type for n in folded.graph.node] == ["Constant"]
    _assert_same(model, folded)


def test_a_live_model_folds_to_itself_without_warning():
    model = _chain(zero_first=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        folded, report = fold_model(model)
    assert report.dead_outputs == [] and report.folded_tensors == 0
    assert report.nodes_after == report.nodes_before and report.macs_after == report.macs_before


def test_zeroed_residual_branch_becomes_x_plus_bias_map():
    b = Builder(1, 4, 8)
    y = b.conv(b.conv("x", 4, 3), 4, 1, zero=True, bias=True)  # branch: dense conv then zeroed 1x1 with bias
    model = b.model([b.op("Add", ["x", y], b.shape["x"])])
    folded, report = fold_model(model)
    _assert_same(model, folded)
    assert [n.op_type for n in folded.graph.node] == ["Add"]
    assert report.macs_after == 0 and report.folded_tensors == 1
    bias_map = [numpy_helper.to_array(t) for t in folded.graph.initializer]
    assert [m.shape for m in bias_map] == [(1, 4, 1, 1)]  # stored at its smallest exact broadcast shape


def test_zeroed_branch_without_bias_disappears():
    b = Builder(2, 4, 8)
    y = b.act(b.conv("x", 4, 3, zero=True, bias=False), "relu")
    model = b.model([b.conv(b.op("Add", [y, "x"], b.shape["x"]), 2, 1)])
    folded, _ = fold_model(model)
    _assert_same(model, folded)
    assert [n.op_type for n in folded.graph.node] == ["Conv"] and folded.graph.node[0].input[0] == "x"


@pytest.mark.parametrize("bias", [True, False])
def test_constant_concat_slice_is_absorbed_into_a_1x1_conv(bias):
    b = Builder(3, 3, 8)
    const = b.act(b.conv("x", 2, 3, zero=True, bias=bias), "silu")  # uniform per channel (zero without bias)
    cat = b.op("Concat", ["x", const], (1, 5, 8, 8), axis=1)
    model = b.model([b.conv(cat, 4, 1, stride=2)])
    folded, report = fold_model(model)
    _assert_same(model, folded)
    assert report.absorbed_concat_inputs == 1
    assert [n.op_type for n in folded.graph.node] == ["Conv"]
    conv = folded.graph.node[0]
    weight = {t.name: numpy_helper.to_array(t) for t in folded.graph.initializer}[conv.input[1]]
    assert conv.input[0] == "x" and weight.shape == (4, 3, 1, 1)  # lost the two constant channels


def test_uniform_slice_under_a_padded_3x3_conv_is_left_alone():
    b = Builder(4, 3, 8)
    const = b.conv("x", 2, 1, zero=True, bias=True)
    cat = b.op("Concat", ["x", const], (1, 5, 8, 8), axis=1)
    model = b.model([b.conv(cat, 4, 3, pad=1)])
    folded, report = fold_model(model)
    _assert_same(model, folded)
    assert report.absorbed_concat_inputs == 0
    assert sorted(n.op_type for n in folded.graph.node) == ["Concat", "Conv"]


def test_zero_slice_is_absorbed_even_under_a_padded_3x3_conv():
    b = Builder(5, 3, 8)
    zero = b.act(b.conv("x", 2, 1, zero=True, bias=False), "relu")
    cat = b.op("Concat", [zero, "x"], (1, 5, 8, 8), axis=1)
    model = b.model([b.conv(cat, 4, 3, pad=1)])
    folded, report = fold_model(model)
    _assert_same(model, folded)
    assert report.absorbed_concat_inputs == 1 and [n.op_type for n in folded.graph.node] == ["Conv"]


def test_shape_computations_are_resolved_for_macs_and_folded():
    """Raw torch exports compute Reshape targets from Shape ops; plain shape inference gives up on this chain."""
    b = Builder(7, 3, 8)
    y = b.conv("x", 4, 3)
    size = b.op("Cast", [b.op("Shape", [y], (4,))], (4,), to=TensorProto.FLOAT)
    size = b.op("Cast", [b.op("Mul", [size, b.const(np.ones(4))], (4,))], (4,), to=TensorProto.INT64)
    model = b.model([b.conv(b.op("Reshape", [y, size], b.shape[y]), 2, 1)])
    assert count_macs(model) == b.macs
    folded, report = fold_model(model)
    _assert_same(model, folded)
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Reshape", "Conv"] and report.macs_after == b.macs


def test_zero_weight_and_bias_behind_identity_are_found():
    """torch.onnx dedups equal initializers through Identity nodes: a zeroed conv's weight or bias may be one."""
    b = Builder(8, 4, 8)
    first = b.conv("x", 4, 3, zero=True)  # its weight and bias are initializers
    w, bias = b.nodes[-1].input[1:]
    second = b.op("Conv", ["x", b.op("Identity", [w], (4, 4, 3, 3)), b.op("Identity", [bias], (4,))],
                  (1, 4, 8, 8), kernel_shape=[3, 3], pads=[1, 1, 1, 1])  # the same zero weight, via Identity
    y = b.op("Add", ["x", first], (1, 4, 8, 8))
    model = b.model([b.op("Add", [y, b.op("Sigmoid", [second], (1, 4, 8, 8))], (1, 4, 8, 8))])
    folded, report = fold_model(model)
    _assert_same(model, folded)
    assert [n.op_type for n in folded.graph.node] == ["Add", "Add"] and report.macs_after == 0


def test_dynamic_batch_needs_an_input_shape():
    model = _chain(zero_first=False, dynamic_batch=True)
    with pytest.raises(XpruneError, match=r"input 'x' has dynamic dims \[batch, 3, 8, 8\].*--input-shape x:1x3x8x8"):
        fold_model(model)
    with pytest.raises(XpruneError, match="no model input named y"):
        fold_model(model, {"y": [1, 3, 8, 8]})
    with pytest.raises(XpruneError, match="does not fit"):
        fold_model(model, {"x": [1, 3, 9, 8]})
    folded, report = fold_model(model, {"x": [2, 3, 8, 8]})
    assert [d.dim_value for d in folded.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 8, 8]
    assert report.macs_before == count_macs(model, {"x": [2, 3, 8, 8]}) == 2 * count_macs(_chain(False))
    sa, sb = _session(model), _session(folded)
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(sa.run(None, {"x": x})[0], sb.run(None, {"x": x})[0], rtol=0, atol=1e-5)


def test_parse_input_shape():
    assert parse_input_shape("images:1x3x320x320") == {"images": [1, 3, 320, 320]}
    assert parse_input_shape("a:1x3, b:2") == {"a": [1, 3], "b": [2]}
    assert parse_input_shape("ns:x:1X4") == {"ns:x": [1, 4]}
    for bad in ["", "images", "images:", ":1x3", "images:1x0", "images:1xa", "a:1,a:2", "images:1x-3"]:
        with pytest.raises(XpruneError):
            parse_input_shape(bad)


def test_metadata_opsets_and_names_are_kept(tmp_path):
    b = Builder(6, 3, 8)
    y = b.conv("x", 3, 1, zero=True)
    model = b.model([b.op("Add", ["x", y], b.shape["x"])])
    model.metadata_props.add(key="xprune.family", value='"ssd"')
    model.producer_name = "test"
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, str(src))
    report = fold_file(src, dst)
    folded = onnx.load(str(dst))
    assert {p.key: p.value for p in folded.metadata_props} == {"xprune.family": '"ssd"'}
    assert list(folded.opset_import) == list(model.opset_import) and folded.producer_name == "test"
    assert report.as_dict()["removed_mac_fraction"] == 1.0 and report.as_dict()["nodes_after"] == 1


def test_fold_file_rejects_bad_sources_and_writes_nothing(tmp_path):
    dst = tmp_path / "out.onnx"
    good = tmp_path / "good.onnx"
    onnx.save(_chain(zero_first=False), str(good))
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n" * 20)
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for src, what in [(tmp_path / "missing.onnx", "not found"), (text, "not a valid ONNX"),
                      (cut, "not a valid ONNX"), (tmp_path, "not found")]:
        with pytest.raises(XpruneError, match=what) as e:
            fold_file(src, dst)
        assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.onnx", "good.onnx", "notes.onnx"]


def test_unwritable_destination_leaves_nothing_behind(tmp_path):
    src = tmp_path / "in.onnx"
    onnx.save(_chain(zero_first=False), str(src))
    (tmp_path / "afile").write_text("a regular file")
    with pytest.raises(XpruneError, match="cannot write"):
        fold_file(src, tmp_path / "afile" / "out.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "in.onnx"]


# ------------------------------------------------------------------------------- each pass alone, on a tiny graph

def _var(name: str, shape, dtype=np.float32) -> gs.Variable:
    return gs.Variable(name, dtype, shape)


def _const(name: str, value) -> gs.Constant:
    return gs.Constant(name, np.ascontiguousarray(value, dtype=np.asarray(value).dtype))


def _gs_graph(nodes, inputs, outputs) -> gs.Graph:
    return gs.Graph(nodes=nodes, inputs=inputs, outputs=outputs, opset=OPSET, ir_version=IR)


def _gs_model(graph: gs.Graph) -> onnx.ModelProto:
    return gs.export_onnx(graph)


def test_pass_constant_outputs_of_zero_weights():
    x, a = _var("x", (1, 3, 4, 4)), _var("a", (2, 3))
    y, z, g = _var("y", (1, 2, 4, 4)), _var("z", (1, 2, 4, 4)), _var("g", (2, 4))
    bias, c = np.array([0.5, -1.0], np.float32), np.arange(4, dtype=np.float32)
    zeroed = gs.Node("Conv", inputs=[x, _const("w0", np.zeros((2, 3, 1, 1), np.float32)), _const("b", bias)],
                     outputs=[y])
    live = gs.Node("Conv", inputs=[x, _const("w1", np.ones((2, 3, 1, 1), np.float32))], outputs=[z])
    gemm = gs.Node("Gemm", inputs=[a, _const("w2", np.zeros((3, 4), np.float32)), _const("c", c)], outputs=[g],
                   attrs={"beta": 2.0})
    graph = _gs_graph([zeroed, live, gemm], [x, a], [y, z, g])
    assert constant_outputs_of_zero_weights(graph) == 2
    assert isinstance(y, gs.Constant) and isinstance(g, gs.Constant) and isinstance(z, gs.Variable)
    np.testing.assert_array_equal(y.values, np.broadcast_to(bias.reshape(1, 2, 1, 1), (1, 2, 4, 4)))
    np.testing.assert_array_equal(g.values, np.broadcast_to(2 * c, (2, 4)))
    assert zeroed.outputs == [] and gemm.outputs == [] and live.outputs == [z]


def test_pass_constant_shapes():
    x, dynamic = _var("x", (1, 3, 4, 5)), _var("d", ("N", 3))
    tail, size, kept = _var("tail", (2,), np.int64), _var("size", (), np.int64), _var("kept", (2,), np.int64)
    graph = _gs_graph([gs.Node("Shape", inputs=[x], outputs=[tail], attrs={"start": -2}),
                       gs.Node("Size", inputs=[x], outputs=[size]), gs.Node("Shape", inputs=[dynamic], outputs=[kept])],
                      [x, dynamic], [tail, size, kept])
    assert constant_shapes(graph) == 2
    assert tail.values.tolist() == [4, 5] and int(size.values) == 60 and isinstance(kept, gs.Variable)


def test_pass_fold_constants_evaluates_what_only_constants_feed_but_no_random_op():
    x, r, noise, y, z = (_var(n, (2,)) for n in ("x", "r", "noise", "y", "z"))
    graph = _gs_graph([gs.Node("Relu", inputs=[_const("c", np.array([-1.0, 2.0], np.float32))], outputs=[r]),
                       gs.Node("RandomNormal", outputs=[noise], attrs={"shape": [2], "dtype": TensorProto.FLOAT}),
                       gs.Node("Add", inputs=[x, r], outputs=[y]), gs.Node("Add", inputs=[y, noise], outputs=[z])],
                      [x], [z])
    fold_constants(graph)
    assert isinstance(r, gs.Constant) and r.values.tolist() == [0.0, 2.0]
    assert sorted(n.op for n in graph.nodes) == ["Add", "Add", "RandomNormal"]


def test_pass_fold_constants_reports_what_onnxruntime_cannot_evaluate():
    y, x, z = _var("y", (3,)), _var("x", (3,)), _var("z", (3,))
    bad = gs.Node("Reshape", inputs=[_const("c", np.ones(2, np.float32)), _const("s", np.array([3]))], outputs=[y])
    graph = _gs_graph([bad, gs.Node("Add", inputs=[x, y], outputs=[z])], [x], [z])
    with pytest.raises(XpruneError, match="onnxruntime could not evaluate the input-independent part") as e:
        fold_constants(graph)
    assert "\n" not in str(e.value)


def test_pass_compact_broadcast_constants():
    x, pooled, y, z = _var("x", (1, 2, 3, 3)), _var("p", (1, 2, 1, 1)), _var("y", (1, 2, 3, 3)), _var("z", (1, 2, 3, 3))
    per_channel = np.broadcast_to(np.array([1.0, 2.0], np.float32).reshape(1, 2, 1, 1), (1, 2, 3, 3))
    bias_map, widening = _const("m", per_channel), _const("k", per_channel)
    graph = _gs_graph([gs.Node("Add", inputs=[x, bias_map], outputs=[y]),
                       gs.Node("GlobalAveragePool", inputs=[x], outputs=[pooled]),
                       gs.Node("Mul", inputs=[pooled, widening], outputs=[z])], [x], [y, z])
    before = _gs_model(graph)
    assert compact_broadcast_constants(graph) == 1
    assert bias_map.shape == (1, 2, 1, 1) and widening.shape == (1, 2, 3, 3)  # k broadcasts p up: it stays
    _assert_same(before, _gs_model(graph))


def test_pass_drop_neutral_ops():
    x, a, b, c = _var("x", (1, 2, 3, 3)), _var("a", (1, 2, 3, 3)), _var("b", (1, 2, 3, 3)), _var("c", (1, 2, 3, 3))
    out, pooled, widened = _var("out", (1, 2, 3, 3)), _var("p", (1, 2, 1, 1)), _var("w", (1, 2, 3, 3))
    graph = _gs_graph([gs.Node("Relu", inputs=[x], outputs=[a]),
                       gs.Node("Mul", inputs=[_const("one", np.ones((1, 2, 1, 1), np.float32)), a], outputs=[b]),
                       gs.Node("Identity", inputs=[b], outputs=[c]),
                       gs.Node("Sub", inputs=[c, _const("zero", np.zeros(1, np.float32))], outputs=[out]),
                       gs.Node("GlobalAveragePool", inputs=[x], outputs=[pooled]),
                       gs.Node("Add", inputs=[pooled, _const("zeros", np.zeros((1, 2, 3, 3), np.float32))],
                               outputs=[widened])], [x], [out, widened])
    before = _gs_model(graph)
    assert drop_neutral_ops(graph) == 3  # Mul, Identity, Sub; the Add broadcasts p up and stays
    graph.cleanup()
    assert sorted(n.op for n in graph.nodes) == ["Add", "GlobalAveragePool", "Relu"]
    relu = next(n for n in graph.nodes if n.op == "Relu")
    assert relu.outputs[0].name == "out"  # a graph output keeps its name
    _assert_same(before, _gs_model(graph))


def test_pass_absorb_constant_concat_slices():
    x, cat, y = _var("x", (1, 3, 4, 4)), _var("cat", (1, 5, 4, 4)), _var("y", (1, 4, 4, 4))
    uniform = np.broadcast_to(np.array([2.0, -1.0], np.float32).reshape(1, 2, 1, 1), (1, 2, 4, 4))
    rng = np.random.default_rng(0)
    conv = gs.Node("Conv", inputs=[cat, _const("w", rng.normal(size=(4, 5, 1, 1)).astype(np.float32)),
                                   _const("b", rng.normal(size=4).astype(np.float32))], outputs=[y])
    graph = _gs_graph([gs.Node("Concat", inputs=[x, _const("k", uniform)], outputs=[cat], attrs={"axis": 1}), conv],
                      [x], [y])
    before = _gs_model(graph)
    assert absorb_constant_concat_slices(graph) == 1
    graph.cleanup()
    assert [n.op for n in graph.nodes] == ["Conv"] and conv.inputs[0] is x and conv.inputs[1].shape == (4, 3, 1, 1)
    _assert_same(before, _gs_model(graph))


def test_pass_fold_input_independent_keeps_a_dead_output_name():
    x, y = _var("x", (1, 3, 4, 4)), _var("y", (1, 2, 4, 4))
    conv = gs.Node("Conv", inputs=[x, _const("w", np.zeros((2, 3, 1, 1), np.float32)),
                                   _const("b", np.ones(2, np.float32))], outputs=[y])
    graph = _gs_graph([conv], [x], [y])
    assert fold_input_independent(graph) == (1, ["y"])
    assert [n.op for n in graph.nodes] == ["Constant"] and graph.outputs[0].name == "y"
    assert fold_input_independent(graph) == (0, [])  # a fixed point


def test_static_graph_resolves_shapes_computed_from_shape_ops():
    b = Builder(9, 3, 8)
    y = b.conv("x", 4, 3)
    size = b.op("Cast", [b.op("Shape", [y], (4,))], (4,), to=TensorProto.FLOAT)
    size = b.op("Cast", [b.op("Mul", [size, b.const(np.ones(4))], (4,))], (4,), to=TensorProto.INT64)
    reshaped = b.op("Reshape", [y, size], b.shape[y])
    model = b.model([b.conv(reshaped, 2, 1)])
    assert static_graph(model).tensors()[reshaped].shape == [1, 4, 8, 8]
