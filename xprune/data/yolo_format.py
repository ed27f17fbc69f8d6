"""Ultralytics' YOLO dataset layout (a data.yaml), read in memory as the COCO structures the rest of xprune uses, so
`--data data.yaml` works wherever a COCO dataset folder does (see `xprune.data.coco`, which dispatches here).

data.yaml keys:
- `path`: the dataset root. Relative paths are taken from the yaml's folder, else from the working directory;
  without `path` the root is the yaml's folder. Ultralytics' `download` and `test` keys are ignored.
- `train`, `val`, optionally `calib`: relative to the root, each an image folder (searched recursively), a list
  file (one image path a line; relative lines are relative to the list file's folder) or a list of those.
- `names`: a list, or a {index: name} dict with indices 0..N-1; `nc`, when present, must agree.

Labels: image .../images/.../x.jpg has its label file at .../labels/.../x.txt (the last `images` folder swapped for
`labels`, as Ultralytics does), one `class cx cy w h` line per object, normalized to [0, 1]. An image without a
label file has no objects, as in Ultralytics. Polygon (segment) lines are refused, not converted.

Splits: xprune's `train` and `val` are the yaml's. `calib` is the yaml's `calib` when it has one; otherwise it is
`train`, of which callers take the first N images (sorted by path), so calibration images were seen in training:
fine for scoring layers, never for measuring what pruning costs (the budget search measures on val, and refuses
held-out images that are train images, `xprune.data.splits`). Image ids are 1.. in sorted path order, so `limit` keeps the same images as it does for a COCO folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from xprune.errors import XpruneError

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "calib")


def is_data_yaml(path: str | os.PathLike) -> bool:
    """Whether a --data argument names a data.yaml (by suffix, so a missing one gets a yaml-specific message)."""
    return str(path).lower().endswith((".yaml", ".yml"))


@dataclass(frozen=True)
class YoloDataset:
    """A parsed data.yaml: the root, the class names and each split's sources (folders or list files)."""

    yaml: Path
    root: Path
    names: list[str]
    sources: dict[str, list[Path]]

    def splits(self) -> list[str]:
        """xprune's splits this dataset has: calib falls back to train."""
        have = [s for s in SPLITS if s in self.sources]
        return have + ["calib"] if "train" in self.sources and "calib" not in have else have


def _names(raw, nc, yaml_path: Path) -> list[str]:
    if isinstance(raw, list) and raw:
        names = [str(n) for n in raw]
    elif isinstance(raw, dict) and raw:
        try:
            by_index = {int(k): str(v) for k, v in raw.items()}
        except (TypeError, ValueError):
            raise XpruneError(f"{yaml_path}: 'names' keys must be class indices 0..N-1") from None
        if sorted(by_index) != list(range(len(by_index))):
            raise XpruneError(f"{yaml_path}: 'names' keys must be class indices 0..{len(by_index) - 1}, got "
                              f"{sorted(by_index)}")
        names = [by_index[i] for i in range(len(by_index))]
    else:
        raise XpruneError(f"{yaml_path}: 'names' must be a non-empty list or {{index: name}} mapping")
    if nc is not None and nc != len(names):
        raise XpruneError(f"{yaml_path}: nc is {nc} but 'names' has {len(names)} classes")
    return names


def _root(cfg: dict, yaml_path: Path) -> Path:
    raw = cfg.get("path")
    if raw is None:
        return yaml_path.parent
    if not isinstance(raw, str):
        raise XpruneError(f"{yaml_path}: 'path' must be a folder path, got {raw!r}")
    root = Path(raw).expanduser()
    if root.is_absolute():
        candidates = [root]
    else:
        candidates = [yaml_path.parent / root, Path.cwd() / root]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    raise XpruneError(f"{yaml_path}: dataset folder not found: {raw}")


def read_data_yaml(path: str | os.PathLike) -> YoloDataset:
    """Parse and check a data.yaml (not its images or labels, which are read per split)."""
    import yaml  # PyYAML, which Ultralytics depends on

    yaml_path = Path(path)
    if not yaml_path.is_file():
        raise XpruneError(f"data.yaml not found: {yaml_path}")
    try:
        cfg = yaml.safe_load(yaml_path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise XpruneError(f"{yaml_path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(cfg, dict):
        raise XpruneError(f"{yaml_path} is not an Ultralytics data.yaml (needs path, train, val, names)")
    if "names" not in cfg:
        raise XpruneError(f"{yaml_path} has no 'names' (the class names)")
    names = _names(cfg["names"], cfg.get("nc"), yaml_path)
    if "train" not in cfg and "val" not in cfg:
        raise XpruneError(f"{yaml_path} has neither 'train' nor 'val'")
    root = _root(cfg, yaml_path)
    sources: dict[str, list[Path]] = {}
    for split in SPLITS:
        raw = cfg.get(split)
        if raw is None:
            continue
        items = raw if isinstance(raw, list) else [raw]
        if not items or not all(isinstance(i, str) and i for i in items):
            raise XpruneError(f"{yaml_path}: '{split}' must be a path or a list of paths, got {raw!r}")
        sources[split] = [root / Path(i).expanduser() for i in items]
    return YoloDataset(yaml_path, root, names, sources)


def _listed_images(list_file: Path) -> list[Path]:
    try:
        lines = list_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise XpruneError(f"cannot read image list {list_file}: {e}") from None
    return [list_file.parent / Path(line.strip()) for line in lines if line.strip()]


def split_images(data: YoloDataset, split: str) -> list[Path]:
    """Every image of a split, sorted by path (duplicates dropped)."""
    if split == "calib" and "calib" not in data.sources and "train" in data.sources:
        split = "train"
    if split not in data.sources:
        raise XpruneError(f"{data.yaml} has no '{split}' split")
    images: set[Path] = set()
    for source in data.sources[split]:
        if source.is_dir():
            images.update(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif source.is_file() and source.suffix.lower() == ".txt":
            images.update(_listed_images(source))
        elif source.is_file() and source.suffix.lower() in IMAGE_SUFFIXES:
            images.add(source)
        else:
            raise XpruneError(f"{data.yaml}: '{split}' source not found: {source}")
    if not images:
        raise XpruneError(f"{data.yaml}: the '{split}' split has no images")
    return sorted(images)


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last `images` folder of the path becomes `labels`, the suffix `.txt`."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def read_labels(path: Path, num_classes: int) -> list[tuple[int, float, float, float, float]]:
    """(class, cx, cy, w, h) per non-empty line; [] when the file does not exist. Bad lines: file and line named."""
    if not path.is_file():
        return []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise XpruneError(f"cannot read label file {path}: {e}") from None
    out = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{number}"
        if len(fields) != 5:
            raise XpruneError(f"{where}: expected 'class cx cy w h' (5 fields), got {len(fields)}")
        try:
            cls = int(fields[0])
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError:
            raise XpruneError(f"{where}: non-numeric field in '{line.strip()}'") from None
        if not 0 <= cls < num_classes:
            raise XpruneError(f"{where}: class {cls} is outside 0..{num_classes - 1}")
        if not all(0.0 <= v <= 1.0 for v in (cx, cy, w, h)):
            raise XpruneError(f"{where}: coordinates must be normalized to [0, 1], got '{line.strip()}'")
        out.append((cls, cx, cy, w, h))
    return out


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:  # reads the header only
            return im.size
    # ImportError: Ultralytics patches Image.open to try optional HEIF support on failure.
    except (FileNotFoundError, UnidentifiedImageError, OSError, ImportError) as e:
        raise XpruneError(f"cannot read image {path}: {e}") from None


def coco_dict(data: YoloDataset, split: str, limit: int | None = None) -> dict:
    """The split as a COCO instances dict: category id = class index + 1, boxes in image pixels. `limit` reads only
    the first images (file names are relative to the root when under it)."""
    images: list[dict] = []
    annotations: list[dict] = []
    for image_id, path in enumerate(split_images(data, split)[:limit], start=1):
        width, height = _image_size(path)
        name = path.relative_to(data.root) if path.is_relative_to(data.root) else path
        images.append({"id": image_id, "file_name": str(name), "width": width, "height": height})
        for cls, cx, cy, w, h in read_labels(label_path(path), len(data.names)):
            bw, bh = w * width, h * height
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cls + 1,
                                "bbox": [(cx - w / 2) * width, (cy - h / 2) * height, bw, bh], "area": bw * bh,
                                "iscrowd": 0})
    categories = [{"id": i + 1, "name": n, "supercategory": "object"} for i, n in enumerate(data.names)]
    return {"info": {"description": f"{data.yaml} ({split})"}, "images": images, "annotations": annotations,
            "categories": categories}


def coco_set(path: str | os.PathLike, split: str, size: int, limit: int | None = None):
    """A `CocoDetectionSet` over one split of a data.yaml."""
    from xprune.data.coco import CocoDetectionSet

    data = read_data_yaml(path)
    return CocoDetectionSet(data.root, coco_dict(data, split, limit), size, source=f"{data.yaml} ({split})")
