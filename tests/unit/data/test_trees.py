"""The trees dataset: tiling and the box rule, a split without leakage, COCO output, reuse, where the sample files
come from and the one-line errors of `xprune data trees`."""

import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cli_helpers import one_line_error, run_cli
from xprune.data import deepforest_data
from xprune.data.coco import CocoDetectionSet, calibration_set
from xprune.data.deepforest_data import FolderData, WheelData, locate_sample_data
from xprune.data.trees import (SOURCES, SourceImage, TreesConfig, TreeSource, build_trees, clip_box, tile_source,
                               tile_starts)
from xprune.errors import XpruneError

TILE = TreesConfig(tile=64, overlap=0.25, calib=5)  # stride 48

# Per source: image size, background colour, (label, box) objects. Backgrounds differ so a tile shows its source.
FAKE = {
    "2019_YELL_2_528000_4978000_image_crop2": ((160, 130), (200, 30, 30),
                                               [("Tree", [5, 5, 25, 25]), ("Tree", [54, 40, 74, 60]),
                                                ("Tree", [120, 90, 150, 125])]),
    "OSBS_029": ((70, 70), (30, 200, 30), [("Tree", [10, 10, 30, 30])]),
    "SOAP_061": ((70, 70), (30, 30, 200), [("Dead", [40, 40, 60, 60]), ("Alive", [2, 40, 16, 60])]),
    "2019_YELL_2_541000_4977000_image_crop": ((120, 90), (200, 200, 30), [("Tree", [30, 20, 50, 45])]),
}
BOX_COLOUR = (255, 255, 255)


def voc_xml(filename: str, size: tuple[int, int], objects) -> str:
    objs = "".join(f"<object><name>{label}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
                   f"<ymax>{b[3]}</ymax></bndbox></object>" for label, b in objects)
    return (f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
            f"<depth>3</depth></size>{objs}</annotation>")


def fake_files() -> dict[str, bytes]:
    files = {}
    for stem, (size, colour, objects) in FAKE.items():
        im = Image.new("RGB", size, colour)
        draw = ImageDraw.Draw(im)
        for _, (x0, y0, x1, y1) in objects:
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=BOX_COLOUR)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        files[f"{stem}.png"] = buf.getvalue()
        files[f"{stem}.xml"] = voc_xml(f"{stem}.png", size, objects).encode()
    return files


@pytest.fixture
def fake_folder(tmp_path) -> Path:
    root = tmp_path / "deepforest_data"
    root.mkdir()
    for name, data in fake_files().items():
        (root / name).write_bytes(data)
    return root


def write_wheel(path: Path, files: dict[str, bytes], version: str = "2.1.0") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(f"deepforest/data/{name}", data)
        zf.writestr(f"deepforest-{version}.dist-info/METADATA", f"Metadata-Version: 2.4\nName: deepforest\nVersion: {version}\n")
    return path


def coco(out: Path, split: str) -> dict:
    return json.loads((out / "annotations" / f"instances_{split}.json").read_text())


# -------------------------------------------------------------------------------------------- tiling and boxes


def test_tile_starts_cover_the_image_and_end_flush():
    assert tile_starts(100, 40, 30) == [0, 30, 60]
    assert tile_starts(110, 40, 30) == [0, 30, 60, 70]
    assert tile_starts(40, 40, 30) == [0]
    assert tile_starts(25, 40, 30) == [0]


def test_clip_box_keeps_boxes_at_least_half_inside():
    window = (0, 0, 60, 60)
    assert clip_box([10, 10, 30, 30], window, 0.5) == [10, 10, 30, 30]
    assert clip_box([50, 10, 70, 30], window, 0.5) == [50, 10, 60, 30]  # exactly half inside
    assert clip_box([55, 10, 75, 30], window, 0.5) is None  # a quarter inside
    assert clip_box([70, 10, 90, 30], window, 0.5) is None
    assert clip_box([50, 50, 70, 70], (40, 40, 100, 100), 0.5) == [10, 10, 30, 30]  # in window coordinates


def test_tile_source_clips_and_drops_per_tile():
    image = Image.new("RGB", (100, 100))
    src = SourceImage(TreeSource("a.png", "a.xml", "train"), image, [[50, 10, 70, 30], [55, 70, 75, 90]])
    tiles = tile_source(src, TreesConfig(tile=60, overlap=0.0))
    by_name = {t.name: [b for _, b in t.objects] for t in tiles}
    assert sorted(by_name) == ["a_x0000_y0000.jpg", "a_x0000_y0040.jpg", "a_x0040_y0000.jpg", "a_x0040_y0040.jpg"]
    assert by_name["a_x0000_y0000.jpg"] == [[50, 10, 60, 30]]
    assert by_name["a_x0040_y0000.jpg"] == [[10, 10, 30, 30]]
    assert by_name["a_x0000_y0040.jpg"] == []  # second box only a quarter inside
    assert by_name["a_x0040_y0040.jpg"] == [[15, 30, 35, 50]]
    assert all(t.image.size == (60, 60) for t in tiles)


# -------------------------------------------------------------------------------------------- the dataset


def test_dataset_split_by_source_without_leakage(tmp_path, fake_folder):
    out = tmp_path / "trees"
    result = build_trees(out, TILE, data=FolderData(fake_folder))
    assert not result.reused and not (tmp_path / "trees.partial").exists()
    stamp = json.loads((out / "trees.json").read_text())
    val_sources = [s.image for s in SOURCES if s.split == "val"]
    assert stamp["splits"]["val"]["sources"] == val_sources
    assert stamp["assignment"] == {s.image: s.split for s in SOURCES}

    # A tile's median colour is its source's background: val tiles come from the val image only, train tiles never.
    val_colour = np.array(FAKE[Path(val_sources[0]).stem][1])
    for split in ("train", "val"):
        for img in coco(out, split)["images"]:
            pixels = np.asarray(Image.open(out / "images" / split / img["file_name"]), dtype=float).reshape(-1, 3)
            from_val = bool(np.abs(np.median(pixels, axis=0) - val_colour).max() < 20)
            assert from_val == (split == "val"), (split, img["file_name"])

    # Tile counts: 160x130 -> 3x3 tiles, 70x70 -> 2x2 each, 120x90 -> 3x2 (stride 48, last tile flush).
    assert stamp["splits"]["train"]["images"] == 9 + 4 + 4 and stamp["splits"]["val"]["images"] == 6
    for split in ("train", "val", "calib"):
        ds = CocoDetectionSet.from_folder(out, split, 64)
        assert ds.num_classes == 1 and ds.class_names == ["tree"]
        doc = coco(out, split)
        assert len(doc["annotations"]) == stamp["splits"][split]["boxes"] > 0
        for a in doc["annotations"]:
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64
    labels = {s["image"]: s["labels"] for s in stamp["sources"]}
    assert labels["SOAP_061.png"] == {"Dead": 1, "Alive": 1}  # both become "tree"
    calib = coco(out, "calib")
    train_names = {i["file_name"] for i in coco(out, "train")["images"]}
    assert len(calib["images"]) == 5 and {i["file_name"] for i in calib["images"]} <= train_names
    assert calibration_set(out, 64, 100).annotations.name == "instances_calib.json"


def test_boxes_sit_on_their_pixels(tmp_path, fake_folder):
    out = build_trees(tmp_path / "trees", TILE, data=FolderData(fake_folder)).out
    doc = coco(out, "val")
    names = {i["id"]: i["file_name"] for i in doc["images"]}
    assert doc["annotations"]
    for a in doc["annotations"]:
        x, y, w, h = (int(round(v)) for v in a["bbox"])
        tile = np.asarray(Image.open(out / "images" / "val" / names[a["image_id"]]), dtype=float)
        inside = tile[y + 2:y + h - 2, x + 2:x + w - 2]
        assert inside.min() > 200  # the white box drawn at the annotated place


def test_reuse_overwrite_and_rebuild_on_change(tmp_path, fake_folder):
    data = FolderData(fake_folder)
    out = build_trees(tmp_path / "d", TILE, data=data).out
    marker = next((out / "images" / "val").iterdir())
    mtime = marker.stat().st_mtime_ns
    assert build_trees(out, TILE, data=data).reused
    assert marker.stat().st_mtime_ns == mtime
    assert not build_trees(out, TILE, data=data, overwrite=True).reused
    assert not build_trees(out, TreesConfig(tile=64, overlap=0.0, calib=5), data=data).reused  # other inputs: rebuilt
    assert json.loads((out / "trees.json").read_text())["config"]["overlap"] == 0.0
    assert build_trees(out, TreesConfig(tile=64, overlap=0.0, calib=5), data=data).reused
    im = Image.open(fake_folder / "OSBS_029.png")
    im.rotate(90).save(fake_folder / "OSBS_029.png")  # a changed sample file is a different dataset
    assert not build_trees(out, TreesConfig(tile=64, overlap=0.0, calib=5), data=data).reused


def test_refuses_foreign_folder(tmp_path, fake_folder):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(XpruneError, match="trees.json missing"):
        build_trees(foreign, TILE, data=FolderData(fake_folder))
    assert (foreign / "keep.txt").read_text() == "mine" and not (tmp_path / "mine.partial").exists()


def test_bad_settings_are_refused(tmp_path, fake_folder):
    for cfg, message in ((TreesConfig(overlap=0.95), "overlap"), (TreesConfig(tile=8), "tile size")):
        with pytest.raises(XpruneError, match=message):
            build_trees(tmp_path / "x", cfg, data=FolderData(fake_folder))


def test_mismatched_annotation_size_is_refused(tmp_path, fake_folder):
    (fake_folder / "OSBS_029.xml").write_text(voc_xml("OSBS_029.png", (400, 400), [("Tree", [1, 1, 9, 9])]))
    with pytest.raises(XpruneError, match="OSBS_029.xml is for a 400x400 image but OSBS_029.png is 70x70"):
        build_trees(tmp_path / "x", TILE, data=FolderData(fake_folder))



@pytest.mark.parametrize("xml, message", [
    ("<annotation><object><bndbox><xmin>1</xmin></bndbox></object>", "SOAP_061.xml is corrupt"),
    ("<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax></bndbox></object></annotation>",
     "SOAP_061.xml is corrupt: an object or its size lacks numeric"),
    ("<annotation><object><bndbox><xmin>80</xmin><ymin>1</ymin><xmax>90</xmax><ymax>9</ymax></bndbox></object>"
     "</annotation>", "SOAP_061.xml has no boxes inside SOAP_061.png"),
])
def test_bad_annotations_are_refused(tmp_path, fake_folder, xml, message):
    (fake_folder / "SOAP_061.xml").write_text(xml)
    with pytest.raises(XpruneError, match=message):
        build_trees(tmp_path / "x", TILE, data=FolderData(fake_folder))
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()

# -------------------------------------------------------------------------------------------- where files come from


def test_wheel_is_read_without_installing(tmp_path):
    wheel = write_wheel(tmp_path / "deepforest-2.1.0-py3-none-any.whl", fake_files())
    data = locate_sample_data(wheel=wheel)
    assert isinstance(data, WheelData) and data.version == "2.1.0"
    stamp = build_trees(tmp_path / "t", TILE, data=data).stamp
    assert stamp["source"]["version"] == "2.1.0" and str(wheel) in stamp["source"]["origin"]
    assert set(stamp["files"]) == {n for s in SOURCES for n in (s.image, s.annotations)}


def test_installed_package_is_found_not_imported(tmp_path, monkeypatch):
    package = tmp_path / "site" / "deepforest"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('deepforest needs its whole stack')\n")
    for name, data in fake_files().items():
        (package / "data" / name).write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "deepforest", raising=False)
    data = locate_sample_data()
    assert isinstance(data, FolderData) and data.root == package / "data"
    assert "deepforest" not in sys.modules
    assert build_trees(tmp_path / "t", TILE).stamp["source"]["origin"].startswith("installed deepforest")


@pytest.fixture
def no_installed_deepforest(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(deepforest_data, "find_spec", lambda name: None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "xprune"


@pytest.fixture
def served_wheel(tmp_path, monkeypatch):
    """PyPI as pooch sees it: its HTTP downloader writes a fake deepforest wheel and records the URLs it was asked
    for; the pinned hash is that wheel's, as if it were the real one."""
    import pooch

    served = write_wheel(tmp_path / "served.whl", fake_files())
    urls: list[str] = []

    def download(self, url, output_file, pooch_instance, check_only=False):
        urls.append(url)
        Path(output_file).write_bytes(served.read_bytes())

    monkeypatch.setattr(pooch.HTTPDownloader, "__call__", download)
    monkeypatch.setattr(deepforest_data, "WHEEL_SHA256", hashlib.sha256(served.read_bytes()).hexdigest())
    return urls


def test_cached_wheel_is_used_without_download(tmp_path, monkeypatch, no_installed_deepforest, served_wheel):
    locate_sample_data()
    assert len(served_wheel) == 1
    data = locate_sample_data()
    assert len(served_wheel) == 1, "the cached wheel has the pinned hash: no second download"
    assert isinstance(data, WheelData) and data.path.parent == no_installed_deepforest


def test_download_lands_in_the_cache(tmp_path, monkeypatch, no_installed_deepforest, served_wheel):
    data = locate_sample_data()
    assert served_wheel == [deepforest_data.WHEEL_URL]
    assert deepforest_data.WHEEL_URL.startswith("https://files.pythonhosted.org/")
    assert deepforest_data.WHEEL_URL.endswith("/deepforest-2.1.0-py3-none-any.whl")
    assert isinstance(data, WheelData) and data.version == "2.1.0"
    assert sorted(p.name for p in no_installed_deepforest.iterdir()) == ["deepforest-2.1.0-py3-none-any.whl"]


def test_cached_wheel_of_another_hash_is_replaced(tmp_path, monkeypatch, no_installed_deepforest, served_wheel):
    no_installed_deepforest.mkdir(parents=True)
    cached = no_installed_deepforest / "deepforest-2.1.0-py3-none-any.whl"
    cached.write_bytes(b"not the pinned file")
    data = locate_sample_data()
    assert len(served_wheel) == 1 and isinstance(data, WheelData) and data.version == "2.1.0"


def test_cli_download_of_another_file_is_one_line(tmp_path, monkeypatch, capsys, no_installed_deepforest,
                                                  served_wheel):
    monkeypatch.setattr(deepforest_data, "WHEEL_SHA256", "0" * 64)  # PyPI served something else
    code, _, err = run_cli(["data", "trees", "--out", str(tmp_path / "t")], capsys)
    line = one_line_error(err)
    assert code == 2 and "cannot download deepforest-2.1.0-py3-none-any.whl" in line and "hash" in line.lower()
    assert not (tmp_path / "t").exists() and list(no_installed_deepforest.iterdir()) == []


def test_cli_offline_download_is_one_line(tmp_path, monkeypatch, capsys, no_installed_deepforest):
    import pooch
    import requests

    def offline(self, url, output_file, pooch_instance, check_only=False):
        raise requests.exceptions.ConnectionError("Failed to resolve 'files.pythonhosted.org'")

    monkeypatch.setattr(pooch.HTTPDownloader, "__call__", offline)
    code, _, err = run_cli(["data", "trees", "--out", str(tmp_path / "t")], capsys)
    line = one_line_error(err)
    assert code == 2
    assert "cannot download deepforest-2.1.0-py3-none-any.whl from PyPI (ConnectionError: Failed to resolve" in line
    assert "--wheel" in line
    assert not (tmp_path / "t").exists() and list(no_installed_deepforest.iterdir()) == []


# -------------------------------------------------------------------------------------------- the command


def test_cli_writes_the_dataset(tmp_path, capsys):
    wheel = write_wheel(tmp_path / "df.whl", fake_files())
    argv = ["data", "trees", "--out", str(tmp_path / "t"), "--tile", "64", "--calib", "3", "--wheel", str(wheel)]
    code, out, _ = run_cli(argv, capsys)
    assert code == 0 and out.count("\n") == 1
    assert "train 17 images" in out and "val 6 images" in out and "calib 3 images" in out and "df.whl" in out
    code, out, _ = run_cli(argv, capsys)
    assert code == 0 and "reused" in out


def test_cli_missing_sample_file_is_one_line(tmp_path, capsys):
    files = fake_files()
    del files["SOAP_061.xml"]
    wheel = write_wheel(tmp_path / "df.whl", files)
    code, _, err = run_cli(["data", "trees", "--out", str(tmp_path / "t"), "--wheel", str(wheel)], capsys)
    assert code == 2 and "SOAP_061.xml" in one_line_error(err)
    assert not (tmp_path / "t").exists() and not (tmp_path / "t.partial").exists()


def test_cli_corrupt_sample_file_is_one_line(tmp_path, capsys):
    files = fake_files()
    files["OSBS_029.png"] = files["OSBS_029.png"][:16] + b"\0" * 64  # header kept, pixel data gone
    wheel = write_wheel(tmp_path / "df.whl", files)
    code, _, err = run_cli(["data", "trees", "--out", str(tmp_path / "t"), "--wheel", str(wheel)], capsys)
    line = one_line_error(err)
    assert code == 2 and "OSBS_029.png is corrupt" in line
    assert not (tmp_path / "t").exists() and not (tmp_path / "t.partial").exists()


def test_cli_bad_wheel_is_one_line(tmp_path, capsys):
    not_a_zip = tmp_path / "df.whl"
    not_a_zip.write_text("not a zip")
    code, _, err = run_cli(["data", "trees", "--out", str(tmp_path / "t"), "--wheel", str(not_a_zip)], capsys)
    assert code == 2 and "not a readable wheel" in one_line_error(err)
    code, _, err = run_cli(["data", "trees", "--out", str(tmp_path / "t"), "--wheel", str(tmp_path / "no.whl")], capsys)
    assert code == 2 and "deepforest wheel not found" in one_line_error(err)


def test_cli_unwritable_output_is_one_line(tmp_path, capsys):
    wheel = write_wheel(tmp_path / "df.whl", fake_files())
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, _, err = run_cli(["data", "trees", "--out", str(blocker / "t"), "--tile", "64", "--wheel", str(wheel)], capsys)
    assert code == 2 and "cannot write" in one_line_error(err)


def test_cli_bad_overlap_is_one_line(tmp_path, capsys):
    wheel = write_wheel(tmp_path / "df.whl", fake_files())
    code, _, err = run_cli(["data", "trees", "--out", str(tmp_path / "t"), "--overlap", "1.5", "--wheel", str(wheel)],
                           capsys)
    assert code == 2 and "overlap must be in [0, 0.9]" in one_line_error(err)


# -------------------------------------------------------------------------------------------- the real sample data


def real_sample_data():
    if deepforest_data.installed_data_folder() is not None:
        return locate_sample_data()
    pattern = f"deepforest-{deepforest_data.DEEPFOREST_VERSION}-*.whl"
    for folder in (Path("/tmp/wheels"), deepforest_data.default_cache_dir()):
        wheels = sorted(folder.glob(pattern)) if folder.is_dir() else []
        if wheels:
            return WheelData(wheels[0])
    pytest.skip("no deepforest package or wheel on this machine")


def test_real_deepforest_sample_data(tmp_path):
    data = real_sample_data()
    stamp = build_trees(tmp_path / "trees", data=data).stamp
    by_image = {s["image"]: s for s in stamp["sources"]}
    assert sum(s["boxes"] for s in stamp["sources"]) == 951
    assert by_image["2019_YELL_2_541000_4977000_image_crop.png"]["split"] == "val"
    assert stamp["splits"]["val"]["sources"] == ["2019_YELL_2_541000_4977000_image_crop.png"]
    assert stamp["splits"]["train"]["images"] == 108 and stamp["splits"]["val"]["images"] == 20
    val = CocoDetectionSet.from_folder(tmp_path / "trees", "val", 320)
    assert len(val) == 20 and val.sample(0)["boxes"].shape[0] > 0

