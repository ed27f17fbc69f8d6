"""Fold-removed MACs: the graph analysis gives what the real fold (and `export_onnx`) leaves, conv by conv, on
generated graphs (residual branches, Concat slices under 1x1 and padded 3x3 convs, squeeze-excite gates) and on
YOLOv8n and SSDlite; a bypassed branch goes whole, a conv on the only path takes everything."""

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from xprune.errors import XpruneError
from xprune.export.onnx_export import export_onnx
from xprune.models import build_detector
from xprune.export.fold.analysis import FoldAnalysis, layer_nodes, macs_by_folding

OPSET, IR = 17, 8


class Net:
    """A random small CNN on [1, C, 8, 8] tensors whose convs are named like torch's exporter names them."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.k = [], [], 0
        self.shape = {"x": (1, 4, 8, 8)}
        self.weights: dict[str, tuple[int, ...]] = {}

    def _name(self, prefix: str) -> str:
        self.k += 1
        return f"{prefix}{self.k}"

    def const(self, value) -> str:
        name = self._name("w")
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def op(self, op: str, inputs: list, shape, node_name: str | None = None, **attrs) -> str:
        out = self._name("t")
        self.nodes.append(helper.make_node(op, inputs, [out], name=node_name or out, **attrs))
        self.shape[out] = tuple(shape)
        return out

    def conv(self, x: str, out_ch: int, k: int = 1, bias: str = "random") -> str:
        c = self.shape[x][1]
        layer = f"conv{len(self.weights)}"
        weight = self.rng.normal(0, 0.5, (out_ch, c, k, k))
        self.weights[layer] = weight.shape
        ins = [x, self.const(weight)]
        if bias != "none":
            ins.append(self.const(self.rng.normal(0, 0.5, out_ch) if bias == "random" else np.zeros(out_ch)))
        h = self.shape[x][2]
        return self.op("Conv", ins, (1, out_ch, h, h), node_name=f"/{layer}/Conv", kernel_shape=[k, k],
                       pads=[k // 2] * 4)

    def act(self, x: str, kind: str) -> str:
        s = self.shape[x]
        if kind == "silu":
            return self.op("Mul", [x, self.op("Sigmoid", [x], s)], s)
        if kind == "relu6":
            return self.op("Clip", [x, self.const(0.0), self.const(6.0)], s)
        return self.op(kind, [x], s)

    def se(self, x: str) -> str:
        c, s = self.shape[x][1], self.shape[x]
        pooled = self.op("GlobalAveragePool", [x], (1, c, 1, 1))
        squeezed = self.op("Relu", [self.conv(pooled, 2)], (1, 2, 1, 1))
        gate = self.op("HardSigmoid", [self.conv(squeezed, c)], (1, c, 1, 1))
        return self.op("Mul", [x, gate], s)

    def model(self, outputs: list[str]) -> onnx.ModelProto:
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, list(self.shape[o])) for o in outputs]
        graph = helper.make_graph(self.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                  list(self.shape["x"]))],
                                  outs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR)
        onnx.checker.check_model(model)
        return model


def random_net(seed: int) -> tuple[onnx.ModelProto, dict]:
    """Blocks drawn at random: residual branches, Concat into a 1x1 or 3x3 conv, squeeze-excite, max-pool."""
    net = Net(seed)
    rng = net.rng
    acts = ["Relu", "Sigmoid", "silu", "HardSwish", "relu6"]
    biases = ["random", "random", "zero", "none"]
    x = net.act(net.conv("x", 4, 3, "random"), "silu")
    outputs = []
    for _ in range(int(rng.integers(2, 5))):
        kind = rng.choice(["residual", "concat", "se", "pool", "head"])
        bias = str(rng.choice(biases))
        if kind == "residual":
            y = net.act(net.conv(x, 4, int(rng.choice([1, 3])), bias), str(rng.choice(acts)))
            y = net.conv(y, 4, int(rng.choice([1, 3])), str(rng.choice(biases)))
            x = net.op("Add", [x, y], net.shape[x])
        elif kind == "concat":
            a = net.act(net.conv(x, 2, int(rng.choice([1, 3])), bias), str(rng.choice(acts)))
            b = net.act(net.conv(a, 2, int(rng.choice([1, 3])), str(rng.choice(biases))), str(rng.choice(acts)))
            cat = net.op("Concat", [x, a, b], (1, 8, 8, 8), axis=1)
            x = net.act(net.conv(cat, 4, int(rng.choice([1, 3])), "random"), "silu")
        elif kind == "se":
            x = net.se(x)
        elif kind == "pool":
            x = net.op("MaxPool", [x], net.shape[x], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        else:
            outputs.append(net.conv(x, 3, 1, bias))
    outputs.append(net.conv(x, 3, 1, "random"))
    return net.model(outputs), dict(net.weights)


def assert_matches_the_fold(analysis: FoldAnalysis, layers, pairs: int = 1, seed: int = 0) -> None:
    base = macs_by_folding(analysis)
    assert analysis.macs_after() == base
    for layer in layers:
        assert analysis.removed_macs(layer) == base - macs_by_folding(analysis, [layer]), layer
    rng = np.random.default_rng(seed)
    for _ in range(pairs):  # marginal MACs given a layer already zeroed
        a, b = rng.choice(list(layers), 2, replace=False)
        assert analysis.removed_macs(b, [a]) == macs_by_folding(analysis, [a]) - macs_by_folding(analysis, [a, b]), \
            (a, b)


def _check_random_net(seed: int) -> None:
    model, weights = random_net(seed)
    analysis = FoldAnalysis(model, weights)
    assert all(analysis.nodes_of_layer[n] for n in weights)
    assert_matches_the_fold(analysis, list(weights), pairs=1, seed=seed)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**31 - 1))
@example(seed=32656764)  # a ReLU6 zeroes a padded conv's constant output everywhere: the fold absorbs that slice
def test_analysis_matches_the_fold_on_random_graphs(seed):
    _check_random_net(seed)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**31 - 1))
def test_analysis_matches_the_fold_on_many_random_graphs(seed):
    _check_random_net(seed)


def test_residual_branch_goes_whole_and_the_only_path_takes_everything():
    net = Net(0)
    stem = net.conv("x", 4, 3)
    inner = net.conv(net.act(net.conv(stem, 4, 3), "Relu"), 4, 3)  # conv1 -> relu -> conv2, bypassed by the Add
    out = net.conv(net.op("Add", [stem, inner], (1, 4, 8, 8)), 3)
    analysis = FoldAnalysis(net.model([out]), net.weights)
    per_conv = 8 * 8 * 4 * 4 * 9
    for layer in ("conv1", "conv2"):
        branch = analysis.branch(layer)
        assert branch.macs == 2 * per_conv and set(branch.layers) == {"conv1", "conv2"}
        assert not analysis.outcome([layer]).dead_outputs
    assert analysis.branch("conv0").macs == analysis.macs_before  # the stem: the output no longer depends on x
    assert analysis.outcome(["conv0"]).dead_outputs
    assert analysis.removed_macs("conv2", ["conv1"]) == 0  # already gone with conv1
    assert_matches_the_fold(analysis, ["conv0", "conv1", "conv2", "conv3"])


@pytest.mark.parametrize("k, bias, absorbed", [(1, "random", True), (3, "random", False), (3, "zero", True)])
def test_concat_slice_rule(k, bias, absorbed):
    """A zeroed conv's uniform output leaves the following 1x1 conv's input channels; under a padded 3x3 conv only
    an all-zero slice does."""
    net = Net(1)
    stem = net.conv("x", 4, 3)
    side = net.conv(stem, 2, 1, bias)
    out = net.conv(net.op("Concat", [stem, side], (1, 6, 8, 8), axis=1), 3, k)
    analysis = FoldAnalysis(net.model([out]), net.weights)
    own = 8 * 8 * 2 * 4
    slice_macs = 8 * 8 * 3 * 2 * k * k
    assert analysis.removed_macs("conv1") == own + (slice_macs if absorbed else 0)
    assert analysis.outcome(["conv1"]).absorbed_concat_inputs == int(absorbed)
    assert_matches_the_fold(analysis, ["conv1"], pairs=0)


def test_layer_nodes_follow_torch_scope_names_and_check_shapes():
    net = Net(2)
    a = net.conv("x", 4, 3)
    net.nodes[-1].name = "/model/model.22/cv2.2/cv2.2.1/conv/Conv"
    b = net.conv(a, 4, 1)
    net.nodes[-1].name = "/head/conv.0.0_2/Conv"  # a module run a second time
    model = net.model([b])
    from xprune.export.fold import static_graph
    graph = static_graph(model)
    found = layer_nodes(graph, {"model.22.cv2.2.1.conv": (4, 4, 3, 3), "head.conv.0.0": (4, 4, 1, 1),
                                "other": (4, 4, 1, 1)})
    assert found == {"model.22.cv2.2.1.conv": ["/model/model.22/cv2.2/cv2.2.1/conv/Conv"],
                     "head.conv.0.0": ["/head/conv.0.0_2/Conv"], "other": []}
    assert layer_nodes(graph, {"model.22.cv2.2.1.conv": (4, 4, 1, 1)}) == {"model.22.cv2.2.1.conv": []}
    analysis = FoldAnalysis(model, {"head.conv.0.0": (4, 4, 1, 1), "other": (4, 4, 1, 1)})
    with pytest.raises(XpruneError, match="no node"):
        analysis.branches(["other"])


# --- the real detectors ------------------------------------------------------------------------------------------

def _with_random_batchnorm(det, seed: int = 1):
    """Random init leaves every BatchNorm at beta = mean = 0, so every fused bias is 0 and every zeroed branch
    outputs zeros; random statistics give the nonzero biases a trained model has."""
    g = torch.Generator().manual_seed(seed)
    for m in det.model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return det


@pytest.fixture(scope="module")
def yolo():
    return _with_random_batchnorm(build_detector("yolov8n", "none", num_classes=6, input_size=64))


@pytest.fixture(scope="module")
def yolo_analysis(yolo):
    return FoldAnalysis.of(yolo)


# one conv of each kind: a backbone bottleneck (bypassed), a neck bottleneck's two convs (its uniform output leaves
# the C2f's 1x1 conv, the 3x3 one does not), a downsampling conv into a Concat, a head branch
YOLO_LAYERS = ["model.2.m.0.cv1.conv", "model.12.m.0.cv1.conv", "model.12.m.0.cv2.conv", "model.16.conv",
               "model.22.cv2.0.0.conv"]


def test_every_yolo_conv_maps_to_its_node(yolo, yolo_analysis):
    assert set(yolo_analysis.layers) == set(yolo.conv_layers())
    assert all(len(nodes) == 1 for nodes in yolo_analysis.nodes_of_layer.values())


@pytest.mark.slow
def test_yolo_branches_match_the_fold(yolo_analysis):
    assert_matches_the_fold(yolo_analysis, YOLO_LAYERS, pairs=1)
    bottleneck = yolo_analysis.branch("model.2.m.0.cv1.conv")
    assert set(bottleneck.layers) == {"model.2.m.0.cv1.conv", "model.2.m.0.cv2.conv"}
    assert yolo_analysis.branch("model.0.conv").macs == yolo_analysis.macs_before


@pytest.mark.slow
def test_every_yolo_and_ssdlite_conv_matches_the_fold(yolo_analysis):
    assert_matches_the_fold(yolo_analysis, yolo_analysis.layers, pairs=5)
    ssd = _with_random_batchnorm(build_detector("ssdlite320-mbv3", "none", num_classes=6, input_size=128))
    analysis = FoldAnalysis.of(ssd)
    assert set(analysis.layers) == set(ssd.conv_layers())
    assert_matches_the_fold(analysis, analysis.layers, pairs=5)


@pytest.mark.slow
def test_ssdlite_squeeze_excite_and_expansion_branches_match_the_fold():
    ssd = _with_random_batchnorm(build_detector("ssdlite320-mbv3", "none", num_classes=6, input_size=128))
    analysis = FoldAnalysis.of(ssd)
    se = "backbone.features.0.4.block.2.fc1"  # the squeeze-excite gate: x * constant once it is zeroed
    assert se in analysis.layers
    assert set(analysis.branch(se).layers) == {se, "backbone.features.0.4.block.2.fc2"}
    assert_matches_the_fold(analysis, [se, "backbone.features.0.4.block.0.0", "head.regression_head.module_list.0.0.0"],
                            pairs=0)


@pytest.mark.slow
def test_export_onnx_removes_what_the_analysis_says(tmp_path, yolo, yolo_analysis):
    """Zeroed in PyTorch, exported and folded by `export_onnx`: the same MACs as the analysis."""
    layer = "model.12.m.0.cv2.conv"
    base = export_onnx(yolo, tmp_path / "base.onnx")
    convs = yolo.conv_layers()
    saved = convs[layer].weight.detach().clone()
    try:
        with torch.no_grad():
            convs[layer].weight.zero_()
        pruned = export_onnx(yolo, tmp_path / "pruned.onnx")
    finally:
        with torch.no_grad():
            convs[layer].weight.copy_(saved)
    assert base["macs_after"] == yolo_analysis.macs_after()
    assert base["macs_after"] - pruned["macs_after"] == yolo_analysis.removed_macs(layer) > convs[layer].weight.numel()


# every PyTorch family of the zoo, small inputs; the JAX family is exported by jax2onnx, whose node names carry no
# module scopes, so its layers cannot be mapped (the per-mac ranking says so in one line)
ZOO = [("yolov8n", 64), ("yolo11n", 64), ("ssdlite320-mbv3", 128), ("ssd-mobilenetv2", 128),
       ("ssd-shufflenetv2", 128), ("ssd-resnet50", 128), ("retinanet-r50-fpn", 128), ("fasterrcnn-r50-fpn", 128)]


@pytest.mark.slow
@pytest.mark.parametrize("family,size", ZOO, ids=[f for f, _ in ZOO])
def test_the_analysis_is_the_fold_on_every_zoo_family(family, size):
    """Plans of 1 layer, 5 % and 20 % of the candidates (drawn at random, so some kill an output: the fold still
    says what is left): the analysis gives exactly the MACs of the folded graph, and on the light families it
    decides them by itself (no fall-back to the real fold)."""
    det = _with_random_batchnorm(build_detector(family, "none", num_classes=6, input_size=size))
    analysis = FoldAnalysis.of(det)
    assert not analysis.unmapped(det.conv_layers())
    candidates = sorted(set(analysis.layers) - set(det.predictor_layers))
    rng = np.random.default_rng(0)
    for k in (1, max(2, len(candidates) // 20), len(candidates) // 5):
        layers = list(rng.choice(candidates, k, replace=False))
        outcome = analysis.outcome(layers)
        assert outcome.macs == macs_by_folding(analysis, layers), (family, layers)
        if family in ("yolov8n", "ssdlite320-mbv3", "ssd-mobilenetv2", "ssd-shufflenetv2"):
            assert not outcome.by_fold, outcome.by_fold
