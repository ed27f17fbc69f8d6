"""The synthetic dataset: deterministic, COCO-valid, reused when present."""

import json

import pytest

from xprune.data.coco import CocoDetectionSet
from xprune.data import synth
from xprune.data.synth import CLASSES, SynthConfig, generate
from xprune.errors import XpruneError


def test_deterministic_and_valid(tmp_path):
    cfg = SynthConfig(image_size=96, train=4, val=6, calib=2, seed=3)
    a = generate(tmp_path / "a", cfg)
    b = generate(tmp_path / "b", cfg)
    for split in ("train", "val", "calib"):
        ja = json.loads((a / "annotations" / f"instances_{split}.json").read_text())
        jb = json.loads((b / "annotations" / f"instances_{split}.json").read_text())
        assert ja == jb
    assert (a / "images" / "val" / "val_00000.jpg").read_bytes() == (b / "images" / "val" / "val_00000.jpg").read_bytes()
    ds = CocoDetectionSet.from_folder(a, "val", 96)
    assert len(ds) == 6 and ds.num_classes == len(CLASSES)
    s = ds.sample(0)
    assert s["image"].shape == (3, 96, 96)
    assert s["boxes"].shape[1] == 4 and float(s["boxes"].min()) >= 0 and float(s["boxes"].max()) <= 96


def test_reuse_and_refuse_foreign_folder(tmp_path):
    cfg = SynthConfig(image_size=64, train=2, val=2, calib=2)
    out = generate(tmp_path / "d", cfg)
    marker = out / "images" / "val" / "val_00000.jpg"
    mtime = marker.stat().st_mtime_ns
    generate(tmp_path / "d", cfg)
    assert marker.stat().st_mtime_ns == mtime
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(XpruneError, match="not a dataset written by this command"):
        generate(foreign, cfg)
    assert (foreign / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_object_sizes_follow_coco_and_backgrounds_are_photographs(tmp_path):
    """At the model's input size, the mix is COCO-like and every branch of a multi-scale head gets objects."""
    out = generate(tmp_path / "d", SynthConfig(train=0, val=60, calib=0))
    stats = json.loads((out / "synth.json").read_text())["size_stats"]
    assert 0.30 <= stats["fractions"]["small"] <= 0.50
    assert stats["fractions"]["large"] >= 0.15
    assert stats["max_box_side"] >= 0.6
    assert stats["objects_per_image"] >= 5
    assert stats["coco_fractions"] == {"small": 0.41, "medium": 0.34, "large": 0.24}
    assert sum(stats["histogram"]["counts"]) == stats["objects"]
    # The backgrounds are the photographs, not synthesized gradients: one of them shows through each image.
    photos = synth.photographs()
    assert len(photos) >= 10 and all(min(p.shape[:2]) >= 150 and p.std() > 10 for p in photos)


def test_every_box_is_inside_the_frame_and_annotated_objects_are_visible(tmp_path):
    cfg = SynthConfig(image_size=160, train=0, val=20, calib=0, seed=5)
    out = generate(tmp_path / "d", cfg)
    coco = json.loads((out / "annotations" / "instances_val.json").read_text())
    counts = [sum(a["image_id"] == im["id"] for a in coco["annotations"]) for im in coco["images"]]
    assert max(counts) <= cfg.max_objects and min(counts) >= 0
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 160 and y + h <= 160 and w >= 4 and h >= 4


def test_missing_photographs_is_one_clear_error(tmp_path, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skimage" else real(name, *a))
    synth.photographs.cache_clear()
    try:
        with pytest.raises(XpruneError, match="pip install scikit-image"):
            generate(tmp_path / "d", SynthConfig(image_size=64, train=1, val=1, calib=1))
        assert not (tmp_path / "d").exists() and not (tmp_path / "d.partial").exists()
    finally:
        synth.photographs.cache_clear()
