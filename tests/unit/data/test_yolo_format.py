"""Ultralytics data.yaml datasets: converted in memory to the COCO structures, they must give the same mAP as their
COCO twin; malformed labels and yaml files fail with one line naming the file (and line)."""

import json
import shutil

import pytest

from cli_helpers import one_line_error, run_cli
from xprune.data.coco import CocoDetectionSet, calibration_set, dataset_num_classes
from xprune.data.yolo_format import label_path, read_labels
from xprune.errors import XpruneError
from xprune.evaluate.coco_map import evaluate_map
from xprune.models import build_detector
from xprune.reference import reference_models


def _write_yolo_twin(coco_root, out, names_as_dict=True, calib=False):
    """The COCO dataset at `coco_root` rewritten in Ultralytics' layout: train as a folder, val as a list file."""
    for split in ("train", "val", "calib"):
        coco = json.loads((coco_root / "annotations" / f"instances_{split}.json").read_text())
        (out / "images" / split).mkdir(parents=True)
        (out / "labels" / split).mkdir(parents=True)
        for info in coco["images"]:
            shutil.copy(coco_root / "images" / split / info["file_name"], out / "images" / split / info["file_name"])
            w_img, h_img = info["width"], info["height"]
            lines = [f"{a['category_id'] - 1} {(a['bbox'][0] + a['bbox'][2] / 2) / w_img:.12f} "
                     f"{(a['bbox'][1] + a['bbox'][3] / 2) / h_img:.12f} {a['bbox'][2] / w_img:.12f} "
                     f"{a['bbox'][3] / h_img:.12f}" for a in coco["annotations"] if a["image_id"] == info["id"]]
            if lines:  # an image without objects gets no label file, as Ultralytics' own exports do
                (out / "labels" / split / info["file_name"]).with_suffix(".txt").write_text("\n".join(lines) + "\n")
        names = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
    (out / "val.txt").write_text("".join(f"./images/val/{p.name}\n" for p in sorted((out / "images/val").iterdir())))
    names_yaml = "".join(f"\n  {i}: {n}" for i, n in enumerate(names)) if names_as_dict else f" {names}"
    calib_line = "calib: images/calib\n" if calib else ""
    (out / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: val.txt\n{calib_line}names:{names_yaml}\n")
    return out / "data.yaml"


@pytest.fixture(scope="module")
def yolo_yaml(synth_data, tmp_path_factory):
    return _write_yolo_twin(synth_data, tmp_path_factory.mktemp("yolo"))


def test_twin_has_the_same_images_and_boxes(synth_data, yolo_yaml):
    coco = CocoDetectionSet.from_folder(synth_data, "val", 64)
    yolo = CocoDetectionSet.from_folder(yolo_yaml, "val", 64)
    assert len(coco) == len(yolo) and coco.class_names == yolo.class_names
    for i in range(len(coco)):
        a, b = coco.sample(i), yolo.sample(i)
        assert (a["labels"] == b["labels"]).all()
        assert a["boxes"].sub(b["boxes"]).abs().max().item() < 1e-4 if len(a["boxes"]) else len(b["boxes"]) == 0


def test_same_map_as_the_coco_twin(synth_data, yolo_yaml):
    ref = reference_models()["yolov8n"]
    det = build_detector("yolov8n", ref["path"], input_size=320)
    coco = evaluate_map(det, CocoDetectionSet.from_folder(synth_data, "val", 320))
    yolo = evaluate_map(det, CocoDetectionSet.from_folder(yolo_yaml, "val", 320))
    assert coco["map"] > 0.05, "the reference model should find the synthetic objects"
    assert yolo["map"] == pytest.approx(coco["map"], abs=1e-9)
    assert yolo["map50"] == pytest.approx(coco["map50"], abs=1e-9)


def test_splits_classes_and_calibration(synth_data, yolo_yaml, tmp_path):
    assert dataset_num_classes(yolo_yaml) == dataset_num_classes(synth_data)
    train = CocoDetectionSet.from_folder(yolo_yaml, "train", 64)
    calib = calibration_set(yolo_yaml, 64, 3)  # no calib key: the first 3 of train
    assert [calib.coco.imgs[i]["file_name"] for i in calib.image_ids] == \
        [train.coco.imgs[i]["file_name"] for i in train.image_ids[:3]]
    with_calib = _write_yolo_twin(synth_data, tmp_path / "c", names_as_dict=False, calib=True)
    calib = calibration_set(with_calib, 64, 3)
    assert all(calib.coco.imgs[i]["file_name"].startswith("images/calib/") for i in calib.image_ids)


def test_image_without_label_file_has_no_objects(yolo_yaml):
    ds = CocoDetectionSet.from_folder(yolo_yaml, "train", 64)
    first = yolo_yaml.parent / ds.coco.imgs[ds.image_ids[0]]["file_name"]
    label = label_path(first)
    assert label.parent.name == "train" and label.parent.parent.name == "labels"
    saved = label.read_text()
    try:
        label.unlink()
        again = CocoDetectionSet.from_folder(yolo_yaml, "train", 64)
        assert len(again.sample(0)["labels"]) == 0 and len(again) == len(ds)
    finally:
        label.write_text(saved)


@pytest.mark.parametrize("line, message", [
    ("7 0.5 0.5 0.1 0.1", "class 7 is outside 0..5"),
    ("-1 0.5 0.5 0.1 0.1", "class -1 is outside"),
    ("1 0.5 1.2 0.1 0.1", "coordinates must be normalized to \\[0, 1\\]"),
    ("1 0.5 0.5 0.1", "5 fields\\), got 4"),
    ("1 0.5 0.5 0.1 0.1 0.2 0.3", "got 7"),
    ("1 0.5 abc 0.1 0.1", "non-numeric"),
    ("car 0.5 0.5 0.1 0.1", "non-numeric"),
])
def test_malformed_label_names_file_and_line(tmp_path, line, message):
    label = tmp_path / "x.txt"
    label.write_text(f"0 0.5 0.5 0.2 0.2\n\n{line}\n")
    with pytest.raises(XpruneError, match=f"x.txt:3: .*{message}"):
        read_labels(label, 6)


def test_malformed_label_fails_the_dataset(yolo_yaml, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(yolo_yaml.parent, root)
    label = sorted((root / "labels" / "val").iterdir())[0]
    label.write_text("0 0.5 0.5 0.2 0.2\n9 0.5 0.5 0.2 0.2\n")
    with pytest.raises(XpruneError, match=f"{label.name}:2: class 9 is outside"):
        CocoDetectionSet.from_folder(root / "data.yaml", "val", 64)


@pytest.mark.parametrize("text, message", [
    ("train: images/train\nval: images/val\n", "no 'names'"),
    ("path: .\ntrain: images/train\nnames: {0: a, 2: b}\n", "indices 0..1"),
    ("path: .\ntrain: images/train\nnc: 3\nnames: [a, b]\n", "nc is 3"),
    ("path: missing\ntrain: images/train\nnames: [a]\n", "dataset folder not found: missing"),
    ("path: .\nnames: [a]\n", "neither 'train' nor 'val'"),
    ("[a, b", "not valid YAML"),
    ("- a\n- b\n", "not an Ultralytics data.yaml"),
])
def test_bad_yaml_is_one_line(tmp_path, text, message):
    (tmp_path / "data.yaml").write_text(text)
    with pytest.raises(XpruneError, match=message):
        dataset_num_classes(tmp_path / "data.yaml")


def test_missing_split_and_sources(tmp_path):
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "data.yaml").write_text("train: images/train\nval: images/nowhere\nnames: [a]\n")
    with pytest.raises(XpruneError, match="'train' split has no images"):
        CocoDetectionSet.from_folder(tmp_path / "data.yaml", "train", 64)
    with pytest.raises(XpruneError, match="'val' source not found: .*nowhere"):
        CocoDetectionSet.from_folder(tmp_path / "data.yaml", "val", 64)
    (tmp_path / "only-train.yaml").write_text("train: images/train\nnames: [a]\n")
    with pytest.raises(XpruneError, match="has no 'val' split"):
        CocoDetectionSet.from_folder(tmp_path / "only-train.yaml", "val", 64)


def test_cli_bad_yaml_exits_2_with_one_line(tmp_path, capsys):
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images/train\nnames: {0: a, 2: b}\n")
    code, _, err = run_cli(["evaluate", "--model", "yolov8n", "--weights", "none", "--input-size", "64",
                            "--data", str(tmp_path / "data.yaml")], capsys)
    assert code == 2 and "data.yaml: 'names' keys" in one_line_error(err)
    code, _, err = run_cli(["evaluate", "--model", "yolov8n", "--weights", "none", "--input-size", "64",
                            "--data", str(tmp_path / "missing.yml")], capsys)
    assert code == 2 and "data.yaml not found" in one_line_error(err)


@pytest.mark.slow
def test_cli_evaluates_a_data_yaml(yolo_yaml, tmp_path, capsys):
    code, out, _ = run_cli(["evaluate", "--model", "yolov8n", "--weights", "none", "--input-size", "64",
                            "--data", str(yolo_yaml), "--limit", "2", "--latency-runs", "1",
                            "--out", str(tmp_path / "m.json")], capsys)
    assert code == 0 and json.loads((tmp_path / "m.json").read_text())[0]["map"] >= 0


def test_the_budget_search_holds_out_the_calib_images_scored_on_a_data_yaml(yolo_yaml, synth_data, tmp_path):
    from xprune.data.coco import calibration_set
    from xprune.files import display_path
    from xprune.prune.budget import held_out_split, scored_images

    with_calib = _write_yolo_twin(synth_data, tmp_path / "c", calib=True)
    for root in (with_calib, synth_data):  # the same rule for both layouts
        calib = calibration_set(root, 64, 3)
        scores = {"calibration": {"annotations": display_path(calib.annotations), "images": 3}}
        assert scored_images(scores, root, "calib") == 3 and scored_images(scores, root, "val") == 0
        held = held_out_split(root, 64, 8, skip=3, split="calib")
        assert not set(held.data.image_ids) & set(calib.image_ids)


def test_a_data_yaml_without_calib_searches_on_val_never_on_its_train_images(yolo_yaml):
    """Its calib split is the start of train: scoring there is allowed, measuring the budget there is refused."""
    from xprune.prune.budget import held_out_split

    with pytest.raises(XpruneError, match="'calib' images the budget search would measure on are train images"):
        held_out_split(yolo_yaml, 64, 4, split="calib")
    held = held_out_split(yolo_yaml, 64, 4)
    assert held.split == "val" and len(held.data) == 4
    val = CocoDetectionSet.from_folder(yolo_yaml, "val", 64)
    assert held.data.image_ids == val.image_ids[:4]
