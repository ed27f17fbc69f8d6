"""Reference bookkeeping: checkpoints in the package or the cache, found only when their recorded hash matches."""

import json

import pytest

import xprune.reference as reference
from xprune.errors import XpruneError
from xprune.files import file_sha256
from xprune.train.reference import dataset_stamp


def _record(folder, model, stored, sha):
    (folder / f"{model}-synth.json").write_text(json.dumps(
        {"model": model, "checkpoint": f"{model}-synth.pt", "stored": stored, "sha256": sha}))


@pytest.fixture
def package(tmp_path, monkeypatch):
    """An empty reference folder in place of the package's, and a cache folder of its own."""
    import xprune.train.reference as train_reference

    folder = tmp_path / "package"
    folder.mkdir()
    monkeypatch.setattr(reference, "HERE", folder)
    monkeypatch.setattr(train_reference, "REFERENCE_DIR", folder)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return folder


@pytest.fixture
def batch_data(tmp_path):
    """A synthetic dataset of exactly one training batch (16 images at 128 px)."""
    from xprune.data.synth import SynthConfig, generate
    return generate(tmp_path / "data", SynthConfig(image_size=128, train=16, val=4, calib=4))


def test_cached_checkpoints_are_found_by_hash(package, tmp_path):
    cache = tmp_path / "cache"
    (package / "small-synth.pt").write_bytes(b"weights")
    _record(package, "small", "package", file_sha256(package / "small-synth.pt"))
    (cache / "xprune" / "reference").mkdir(parents=True)
    big = cache / "xprune" / "reference" / "big-synth.pt"
    big.write_bytes(b"big weights")
    _record(package, "big", "cache", file_sha256(big))
    _record(package, "absent", "cache", "0" * 64)

    found = reference.reference_models()
    assert set(found) == {"small", "big"} and found["big"]["path"] == str(big)
    assert set(reference.reference_infos()) == {"small", "big", "absent"}  # what --train-missing would train
    big.write_bytes(b"other weights")  # a stale or foreign file in the cache is not the measured one
    assert set(reference.reference_models()) == {"small"}


def test_dataset_stamp_names_the_generator(tmp_path, synth_data):
    assert dataset_stamp(synth_data)[0] == "synth"
    with pytest.raises(XpruneError, match="not written by `xprune data synth`"):
        dataset_stamp(tmp_path)


@pytest.mark.slow
def test_a_jax_reference_is_trained_saved_as_msgpack_and_found(package, batch_data):
    pytest.importorskip("optax")
    import xprune.train.reference as train_reference

    info = train_reference.train_reference("tinyssd-jax", batch_data, epochs=1, size=128, train_images=16,
                                           log=lambda line: None)
    assert info["checkpoint"] == "tinyssd-jax-synth.msgpack" and info["stored"] == "package"
    assert 0.0 <= info["val_map"] <= 1.0 and info["epochs"] == 1
    assert (package / "tinyssd-jax-synth.log").read_text().startswith("epoch 1/1")
    found = reference.reference_models()
    assert found["tinyssd-jax"]["sha256"] == file_sha256(package / "tinyssd-jax-synth.msgpack")


@pytest.mark.slow
def test_an_interrupted_reference_resumes_and_its_log_keeps_every_epoch(package, batch_data):
    import xprune.train.reference as train_reference

    def stop_after_first_epoch(line: str) -> None:
        if line.startswith("epoch 1/2"):
            raise KeyboardInterrupt  # after the epoch's state was saved, as a Ctrl-C would land

    with pytest.raises(KeyboardInterrupt):
        train_reference.train_reference("ssdlite320-mbv3", batch_data, epochs=2, size=128, train_images=16,
                                        log=stop_after_first_epoch)
    assert not (package / "ssdlite320-mbv3-synth.json").exists()  # no reference from a half-trained run
    assert not (package / "ssdlite320-mbv3-synth.log").exists()  # its progress log stays in the cache
    seen: list[str] = []
    info = train_reference.train_reference("ssdlite320-mbv3", batch_data, epochs=2, size=128, train_images=16,
                                           log=seen.append)
    assert seen[0].startswith("resuming after epoch 1/2") and info["epochs"] == 2
    assert (info["augment"], info["precision"], info["lr"]) == ("flip", "fp32", 2e-3)  # the recipe is recorded
    log_lines = (package / "ssdlite320-mbv3-synth.log").read_text().splitlines()
    assert [ln.split(" loss")[0] for ln in log_lines] == ["epoch 1/2", "epoch 2/2"]


def test_missing_references_train_a_backbone_source_first():
    from xprune.train.reference import missing_references

    assert missing_references(["yolov8n", "fasterrcnn-r50-fpn", "retinanet-r50-fpn", "yolov8s"], {"yolov8n"}) == [
        "ssd-resnet50", "fasterrcnn-r50-fpn", "retinanet-r50-fpn"]  # yolov8s: no reference training
    assert missing_references(["retinanet-r50-fpn"], {"ssd-resnet50"}) == ["retinanet-r50-fpn"]
    assert missing_references(["ssd-resnet50", "retinanet-r50-fpn"], set()) == ["ssd-resnet50", "retinanet-r50-fpn"]


@pytest.mark.parametrize("target", ["retinanet-r50-fpn", "fasterrcnn-r50-fpn"])
def test_ssd_resnet50_weights_become_the_fpn_families_resnet(target):
    import torch

    from xprune.models import build_detector
    from xprune.models.torchvision_family import resnet50_state_from_ssd

    ssd = build_detector("ssd-resnet50", "none", num_classes=3, input_size=128).model.backbone.eval()
    det = build_detector(target, "none", num_classes=3, input_size=128)
    body = det.model.backbone.body.eval()
    body.load_state_dict(resnet50_state_from_ssd(ssd.state_dict()))  # strict: every ResNet-50 weight is covered
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        c5 = list(body(x).values())[-1]  # the families return different stages; layer4's output is the last
        assert torch.equal(c5, ssd.stage32(ssd.stage16(x)))  # the same network


def test_a_warm_started_family_needs_its_source_reference(package, synth_data):
    import xprune.train.reference as train_reference

    with pytest.raises(XpruneError, match="starts from the trained ResNet-50 of ssd-resnet50.*train it first"):
        train_reference.train_reference("retinanet-r50-fpn", synth_data, epochs=1, size=128, train_images=16)
    assert list(package.iterdir()) == []


@pytest.mark.slow
def test_retinanet_starts_from_the_ssd_resnet50_reference_and_records_it(package, batch_data, monkeypatch):
    import torch

    import xprune.train.reference as train_reference
    from xprune.models import build_detector, load_checkpoint, save_checkpoint

    ssd = build_detector("ssd-resnet50", "none", num_classes=3, input_size=128)
    save_checkpoint(ssd, package / "ssd-resnet50-synth.pt", half=True)
    _record(package, "ssd-resnet50", "package", file_sha256(package / "ssd-resnet50-synth.pt"))

    started: dict = {}
    real_start = train_reference.start_from_backbone

    def spy(det, *args):
        record = real_start(det, *args)
        started.update({k: v.clone() for k, v in det.model.backbone.body.state_dict().items()})  # before training
        return record

    monkeypatch.setattr(train_reference, "start_from_backbone", spy)
    info = train_reference.train_reference("retinanet-r50-fpn", batch_data, epochs=1, size=128, train_images=16,
                                           log=lambda line: None)
    assert info["backbone_from"] == {"reference": "ssd-resnet50-synth",
                                     "sha256": file_sha256(package / "ssd-resnet50-synth.pt")}
    source = load_checkpoint(package / "ssd-resnet50-synth.pt", "ssd-resnet50", 128).model.backbone
    assert torch.equal(started["layer4.2.conv3.weight"], source.stage32[2].conv3.weight.float())
    assert torch.equal(started["conv1.weight"], source.stage16[0].weight.float())
