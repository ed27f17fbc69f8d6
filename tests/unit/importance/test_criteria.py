"""Importance criteria: deterministic per seed, one finite non-negative score per conv, and what a zeroed layer
scores. YOLOv8n (random init, 64 px) for the real detector, a three-conv toy detector where a criterion is too
slow to run on every YOLO conv (gradshap)."""

import math
import sys

import pytest
import torch
from torch import nn

from xprune.data.coco import calibration_set
from xprune.errors import XpruneError
from xprune.importance.criteria import CRITERIA, Criterion, GradientShap, HRank, RandomScores, Taylor, get_criterion
from xprune.importance.scores import calibration_batches, score_layers
from xprune.models import build_detector
from xprune.models.detector import Detector
from xprune.prune.plan import zeroed

SIZE = 64
INNER = "model.4.cv1.conv"        # a conv without bias in YOLOv8n's backbone
PREDICTOR = "model.22.cv3.0.2"    # a class-logit predictor, with a (large) bias


@pytest.fixture(scope="module")
def yolo():
    return build_detector("yolov8n", "none", num_classes=6, input_size=SIZE)


@pytest.fixture(scope="module")
def batches(synth_data):
    return calibration_batches(calibration_set(synth_data, SIZE, 4), 2)


class ToyDetector(Detector):
    """Three convs; the loss of a batch is the sum of per-image losses."""

    def loss(self, x, targets):
        y = self.model(x)
        counts = torch.tensor([float(len(t["boxes"])) for t in targets])
        return ((y.mean(dim=(1, 2, 3)) - counts) ** 2).sum()

    def raw(self, x):
        y = self.model(x)
        b = x.shape[0]
        return torch.zeros(b, 1, 4), y.mean(dim=(1, 2, 3)).sigmoid().reshape(b, 1, 1)


def toy_detector() -> ToyDetector:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Tanh(), nn.Conv2d(4, 4, 1),
                          nn.Tanh(), nn.Conv2d(4, 2, 3, padding=1))
    return ToyDetector("toy", model.eval(), num_classes=1, input_size=16)


def toy_batches():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 16, 16, generator=g)
    targets = [{"boxes": torch.zeros(n, 4), "labels": torch.zeros(n, dtype=torch.int64)} for n in (1, 3)]
    return [(x, targets)]


def _check(det: Detector, scores: dict) -> None:
    assert list(scores) == list(det.conv_layers())
    assert all(math.isfinite(v) and v >= 0 for v in scores.values())
    assert any(v > 0 for v in scores.values())


def test_registry_entries():
    assert {"l1", "attr", "taylor", "hrank", "random", "gradshap"} <= set(CRITERIA)
    for name, criterion in CRITERIA.items():
        assert isinstance(criterion, Criterion) and criterion.name == name and get_criterion(name) is criterion
        assert isinstance(criterion.needs_data, bool) and isinstance(criterion.about, str)
        assert criterion.about and "\n" not in criterion.about
    assert not CRITERIA["random"].needs_data and not CRITERIA["l1"].needs_data
    assert CRITERIA["attr"].needs_data and CRITERIA["taylor"].needs_data
    assert CRITERIA["hrank"].needs_data and CRITERIA["gradshap"].needs_data
    with pytest.raises(XpruneError, match="unknown scoring method 'shapley'; choose one of: l1, attr"):
        get_criterion("shapley")


@pytest.mark.parametrize("method", ["l1", "attr", "taylor", "hrank", "random"])
def test_deterministic_and_covers_every_conv(yolo, batches, method):
    criterion = CRITERIA[method]
    a = criterion.score(yolo, batches, seed=3, total=len(batches))
    b = criterion.score(yolo, batches, seed=3, total=len(batches))
    assert a == b
    _check(yolo, a)
    assert all(not m._forward_hooks for m in yolo.model.modules())


def test_random_differs_by_seed_and_the_seed_reaches_it_through_score_layers(yolo):
    random = RandomScores()
    assert random.score(yolo, seed=1) == random.score(yolo, seed=1)
    assert random.score(yolo, seed=1) != random.score(yolo, seed=2)
    doc = score_layers(yolo, "random", seed=7)
    assert {e["layer"]: e["score"] for e in doc["layers"]} == random.score(yolo, seed=7)
    assert doc["calibration"] is None


def test_taylor_of_a_zeroed_layer_is_the_minimum_zero_and_leaves_no_grads(yolo, batches):
    dfl = yolo.conv_layers()["model.22.dfl.conv"]
    assert not dfl.weight.requires_grad
    with zeroed(yolo, [INNER, PREDICTOR]):
        scores = Taylor().score(yolo, batches)
    assert scores[INNER] == 0.0 and scores[PREDICTOR] == 0.0
    assert min(scores.values()) == 0.0
    assert all(p.grad is None for p in yolo.model.parameters())
    assert not dfl.weight.requires_grad  # restored
    assert Taylor().score(yolo, batches)[INNER] > 0  # weights restored by `zeroed`


def test_hrank_of_a_zeroed_conv_is_zero_even_with_a_bias(yolo, batches):
    assert yolo.conv_layers()[PREDICTOR].bias is not None
    with zeroed(yolo, [INNER, PREDICTOR]):
        scores = HRank().score(yolo, batches)
    assert scores[INNER] == 0.0 and scores[PREDICTOR] == 0.0
    full = HRank().score(yolo, batches)
    assert full[INNER] > 0 and full[PREDICTOR] > 0
    # ranks are bounded by the smaller side of the map (64 px input, stride 8 at the first predictor)
    assert full[PREDICTOR] <= SIZE // 8


def test_hrank_subsamples_images_deterministically(yolo, batches):
    assert HRank(max_images=2).score(yolo, batches) == HRank().score(yolo, batches[:1])
    few = HRank(max_channels=1).score(yolo, batches)
    assert few == HRank(max_channels=1).score(yolo, batches)
    _check(yolo, few)


def test_toy_detector_every_criterion_and_zeroed_layers():
    pytest.importorskip("captum")
    det, data = toy_detector(), toy_batches()
    for criterion in CRITERIA.values():
        _check(det, criterion.score(det, data, seed=0, total=1))
    with zeroed(det, ["2"]):
        for criterion in (Taylor(), HRank(), GradientShap()):
            assert criterion.score(det, data)["2"] == 0.0


def test_gradshap_on_yolo_is_seeded(yolo, batches):
    pytest.importorskip("captum")
    one = [(batches[0][0][:1], batches[0][1][:1])]
    layers = [INNER, PREDICTOR]
    gradshap = GradientShap(n_samples=1, layers=layers)
    a = gradshap.score(yolo, one, seed=0)
    assert a == gradshap.score(yolo, one, seed=0)
    assert a != gradshap.score(yolo, one, seed=1)
    assert list(a) == layers and all(math.isfinite(v) and v >= 0 for v in a.values()) and a[INNER] > 0
    # (the random-init predictor's output does not move off its bias in float32 between the image and the zero
    # baseline, so A(x) - A(b) = 0 and its GradientSHAP is 0: that is the attribution, not a bug)
    assert all(not m._forward_hooks for m in yolo.model.modules())


def test_gradshap_without_captum_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "captum", None)
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    with pytest.raises(XpruneError, match="needs Captum.*pip install captum=="):
        GradientShap().score(toy_detector(), toy_batches())
