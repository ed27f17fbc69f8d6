"""Images two splits share: none in the synthetic set; a trees-like calib drawn from train (the same files, also
renamed); a data.yaml without calib (its calib is train); names alone decide nothing."""

import shutil

import numpy as np
import pytest
from PIL import Image

from xprune.data.coco import CocoDetectionSet
from xprune.data.folder import DatasetWriter, ImageRecord
from xprune.data.splits import calibration_overlap, shared_images, split_files, split_overlap
from xprune.data.trees import calib_draw


def _records(prefix: str, count: int, seed: int) -> list[ImageRecord]:
    rng = np.random.default_rng(seed)
    return [ImageRecord(f"{prefix}_{i:03d}.jpg", Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)),
                        [(0, [4.0, 4.0, 20.0, 20.0])]) for i in range(count)]


@pytest.fixture
def trees_like(tmp_path):
    """The trees set's layout: calib is an evenly spaced draw from the train tiles, written again under calib/."""
    writer = DatasetWriter(tmp_path / "trees", ["tree"], "trees-like", "trees.json")
    train = _records("tile", 12, 0)
    writer.write_split("train", train)
    writer.write_split("val", _records("val", 4, 1))
    writer.write_split("calib", calib_draw(train, 5))
    return writer.finish({}, splits=("train", "val", "calib"))


def test_the_synthetic_set_shares_nothing(synth_data):
    overlap = split_overlap(synth_data, "calib", "train")
    assert overlap.images == 8 and not overlap.overlaps and overlap.describe() == ""
    assert not split_overlap(synth_data, "val", "train").overlaps
    assert not calibration_overlap(synth_data, 4).overlaps
    assert len(split_files(synth_data, "train")) == 8 and split_files(synth_data, "test") == []


def test_a_calib_drawn_from_train_is_detected(trees_like):
    overlap = split_overlap(trees_like, "calib", "train")
    assert overlap.images == 5 and len(overlap.shared) == 5
    assert overlap.describe().startswith("all 5 calib images are train images (e.g. images/calib/tile_")
    assert len(calibration_overlap(trees_like, 2).shared) == 2  # only the images scored on are looked at
    assert not split_overlap(trees_like, "val", "train").overlaps


def test_same_bytes_count_and_names_alone_do_not(trees_like, tmp_path):
    calib = CocoDetectionSet.from_folder(trees_like, "calib", 32).image_paths()
    renamed = tmp_path / "renamed.jpg"
    shutil.copyfile(calib[0], renamed)
    val = CocoDetectionSet.from_folder(trees_like, "val", 32).image_paths()
    namesake = tmp_path / calib[1].name  # a train image's name, another picture's bytes
    shutil.copyfile(val[0], namesake)
    assert shared_images([renamed, namesake, val[1]], trees_like, "train") == [renamed]


def test_a_data_yaml_without_calib_calibrates_on_train(synth_data, tmp_path):
    yaml = synth_data / "data.yaml"  # written with the dataset: train and val, no calib
    assert "calib" not in yaml.read_text()
    overlap = calibration_overlap(yaml, 3)
    assert overlap.images == 3 and len(overlap.shared) == 3 and overlap.describe().startswith("all 3 calib images")
    with_calib = tmp_path / "data.yaml"
    with_calib.write_text(yaml.read_text().replace("val: images/val\n", "val: images/val\ncalib: images/calib\n"))
    assert not calibration_overlap(with_calib, 3).overlaps


def test_a_folder_without_calib_calibrates_on_train(tmp_path):
    writer = DatasetWriter(tmp_path / "d", ["tree"], "no calib", "d.json")
    writer.write_split("train", _records("t", 3, 0))
    writer.write_split("val", _records("v", 2, 1))
    root = writer.finish({})
    overlap = calibration_overlap(root, 2)
    assert overlap.split == "train" and len(overlap.shared) == 2
    assert overlap.describe() == "the 2 calibration images are train images (the dataset has no calib split)"


def test_xprune_score_warns_in_one_line_when_it_scores_on_train_images(synth_data, tmp_path, capsys):
    from cli_helpers import run_cli

    args = ["score", "--model", "yolov8n", "--weights", "none", "--input-size", "64", "--method", "attr",
            "--calib-images", "2", "--batch-size", "2"]
    code, _, err = run_cli([*args, "--data", str(synth_data / "data.yaml"), "--out", str(tmp_path / "a.json")], capsys)
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert code == 0 and len(warnings) == 1 and "all 2 calib images" in warnings[0] and "never for measuring" in warnings[0]
    code, _, err = run_cli([*args, "--data", str(synth_data), "--out", str(tmp_path / "b.json")], capsys)
    assert code == 0 and "warning:" not in err
