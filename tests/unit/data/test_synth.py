"""The synthetic dataset: deterministic, COCO-valid, reused when present."""

import json

import pytest

from xprune.data.coco import CocoDetectionSet
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
    with pytest.raises(XpruneError, match="not an xprune synthetic dataset"):
        generate(foreign, cfg)
    assert (foreign / "keep.txt").read_text() == "mine"
