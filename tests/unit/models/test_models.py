"""Every family builds, computes its training loss and predictions at a small input size with random weights."""

import pytest
import torch

from xprune.errors import XpruneError
from xprune.models import build_detector, load_checkpoint, save_checkpoint
from xprune.models.zoo import FAMILIES

FAMILY_NAMES = ["ssd-mobilenetv2", "ssd-resnet50", "ssd-shufflenetv2", "ssdlite320-mbv3", "retinanet-r50-fpn",
                "fasterrcnn-r50-fpn", "yolov8n", "yolo11n"]
SIZE = 128


def _targets():
    return [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 50.0]]), "labels": torch.tensor([2])},
            {"boxes": torch.tensor([[30.0, 20.0, 90.0, 100.0], [5.0, 5.0, 40.0, 40.0]]), "labels": torch.tensor([0, 5])}]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if "50" in n else n for n in FAMILY_NAMES])
def test_family_loss_raw_and_predict(name):
    det = build_detector(name, "none", num_classes=6, input_size=SIZE)
    x = torch.rand(2, 3, SIZE, SIZE)
    loss = det.loss(x, _targets())
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in det.model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)

    det.model.eval()
    with torch.no_grad():
        boxes, scores = det.raw(x)
    assert scores.shape[0] == 2 and scores.shape[-1] == 6
    assert boxes.shape[-1] == 4 and boxes.shape[1] == scores.shape[1]
    assert float(scores.min()) >= 0.0 and float(scores.max()) <= 1.0
    preds = det.predict(x)
    assert len(preds) == 2
    for p in preds:
        assert p["boxes"].shape[1] == 4 and len(p["scores"]) == len(p["labels"]) <= 100
        if len(p["labels"]):
            assert int(p["labels"].max()) < 6
    assert set(det.predictor_layers) <= set(det.conv_layers())
    assert det.predictor_layers


def test_all_listed_families_are_registered():
    # every registered PyTorch family (one size stands for each YOLO version); the JAX ones: tests/unit/models/test_tinyssd_jax.py
    torch_families = {n for n, f in FAMILIES.items() if f.framework == "torch"}
    one_per_version = {n for n in torch_families if not n.startswith(("yolov8", "yolo11")) or n in ("yolov8n", "yolo11n")}
    assert one_per_version == set(FAMILY_NAMES)


def test_loss_leaves_batchnorm_statistics_alone():
    det = build_detector("ssd-mobilenetv2", "none", num_classes=6, input_size=SIZE)
    before = {k: v.clone() for k, v in det.model.state_dict().items() if "running" in k}
    det.loss(torch.rand(2, 3, SIZE, SIZE), _targets())
    after = det.model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_checkpoint_roundtrip(tmp_path):
    det = build_detector("yolov8n", "none", num_classes=6, input_size=SIZE)
    path = tmp_path / "m.pt"
    save_checkpoint(det, path)
    again = load_checkpoint(path, "yolov8n")
    assert again.input_size == SIZE and again.num_classes == 6
    x = torch.rand(1, 3, SIZE, SIZE)
    det.model.eval()
    with torch.no_grad():
        assert torch.equal(det.raw(x)[1], again.raw(x)[1])


def test_checkpoint_of_another_family_is_refused(tmp_path):
    det = build_detector("yolov8n", "none", num_classes=6, input_size=SIZE)
    save_checkpoint(det, tmp_path / "m.pt")
    with pytest.raises(XpruneError, match="holds a yolov8n model"):
        load_checkpoint(tmp_path / "m.pt", "ssd-mobilenetv2")


@pytest.mark.parametrize("name", ["ssd-mobilenetv2", "ssd-resnet50", "ssd-shufflenetv2"])
def test_default_weights_do_not_exist_for_custom_ssd(name):
    with pytest.raises(XpruneError, match="no official pretrained weights"):
        build_detector(name, "default")


@pytest.mark.parametrize("name", ["ssdlite320-mbv3", "yolov8n"])
def test_default_weights_fail_clearly_offline(name):
    with pytest.raises(XpruneError, match="offline"):
        build_detector(name, "default", input_size=SIZE)


def test_input_size_must_be_multiple_of_32():
    with pytest.raises(XpruneError, match="multiple of 32"):
        build_detector("yolov8n", "none", input_size=100)
