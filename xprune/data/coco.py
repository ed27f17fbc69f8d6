"""COCO-format datasets (an image folder plus an instances JSON) read through pycocotools."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Iterator

import torch
from torchvision.ops import box_convert
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO

from xprune.data.transforms import collate_targets, hflip, letterbox
from xprune.errors import XpruneError


def _read_json(path: Path):
    if not path.is_file():
        raise XpruneError(f"annotations file not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise XpruneError(f"annotations file {path} is not valid JSON: {e}") from None


class CocoDetectionSet:
    """Images letterboxed to `size`; targets in input pixels with 0-based labels (index into `category_ids`)."""

    def __init__(self, images_dir: str | Path, annotations: str | Path | dict, size: int, limit: int | None = None,
                 source: str | None = None):
        """`annotations`: a COCO instances JSON file, or the parsed dict itself (e.g. a converted data.yaml split),
        which `source` then names in messages."""
        self.images_dir = Path(images_dir)
        self.size = size
        if isinstance(annotations, dict):
            self.annotations, data = Path(source or "annotations"), annotations
        else:
            self.annotations = Path(annotations)
            data = _read_json(self.annotations)
        if not self.images_dir.is_dir():
            raise XpruneError(f"image folder not found: {self.images_dir}")
        if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
                data.get("categories"), list) or not isinstance(data.get("annotations", []), list):
            raise XpruneError(f"{self.annotations} is not a COCO instances file (needs images, annotations, categories)")
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
                self.coco = COCO()
                self.coco.dataset = data
                self.coco.createIndex()
        except (KeyError, TypeError) as e:
            raise XpruneError(f"{self.annotations} is malformed: missing {e}") from None
        self.image_ids = sorted(self.coco.getImgIds())[:limit]
        if not self.image_ids:
            raise XpruneError(f"dataset {self.annotations} has no images")
        self.category_ids = sorted(self.coco.getCatIds())
        if not self.category_ids:
            raise XpruneError(f"dataset {self.annotations} has no categories")
        self._label = {c: i for i, c in enumerate(self.category_ids)}

    @classmethod
    def from_folder(cls, root: str | Path, split: str, size: int, limit: int | None = None) -> "CocoDetectionSet":
        """Layouts: ROOT/annotations/instances_SPLIT.json with images in ROOT/images/SPLIT or ROOT/SPLIT; or ROOT is
        an Ultralytics data.yaml (see `xprune.data.yolo_format`)."""
        from xprune.data import yolo_format
        if yolo_format.is_data_yaml(root):
            return yolo_format.coco_set(root, split, size, limit)
        root = Path(root)
        if not root.is_dir():
            raise XpruneError(f"dataset folder not found: {root}")
        return cls(split_image_folder(root, split), root / "annotations" / f"instances_{split}.json", size, limit)

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    @property
    def class_names(self) -> list[str]:
        return [self.coco.cats[c]["name"] for c in self.category_ids]

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_paths(self) -> list[Path]:
        """The image file of each of `image_ids`, in order."""
        return [self.images_dir / self.coco.imgs[i]["file_name"] for i in self.image_ids]

    def sample(self, index: int, augment: bool = False, generator: torch.Generator | None = None) -> dict:
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        path = self.images_dir / info["file_name"]
        try:
            with Image.open(path) as im:
                x, scale = letterbox(im, self.size)
                width = im.size[0]
        # ImportError: Ultralytics patches Image.open to try optional HEIF support on failure.
        except (FileNotFoundError, UnidentifiedImageError, OSError, ImportError) as e:
            raise XpruneError(f"cannot read image {path}: {e}") from None
        anns = [a for a in self.coco.imgToAnns[image_id] if not a.get("iscrowd", 0)]
        boxes = box_convert(torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4),
                            "xywh", "xyxy") * scale
        labels = torch.tensor([self._label[a["category_id"]] for a in anns], dtype=torch.int64)
        if augment and torch.rand(1, generator=generator).item() < 0.5:
            x, boxes = hflip(x, boxes, width * scale)
        return {"image": x, "boxes": boxes, "labels": labels, "image_id": image_id, "scale": scale}

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[tuple[torch.Tensor, list[dict], list[dict]]]:
        """Yield (images, targets, samples) in order; `limit` caps the number of images."""
        n = len(self) if limit is None else min(limit, len(self))
        for start in range(0, n, batch_size):
            samples = [self.sample(i) for i in range(start, min(start + batch_size, n))]
            x, targets = collate_targets(samples)
            yield x, targets, samples


def split_image_folder(root: str | Path, split: str) -> Path:
    """The image folder of a COCO dataset folder's split: ROOT/images/SPLIT, else ROOT/SPLIT."""
    root = Path(root)
    for images in (root / "images" / split, root / split):
        if images.is_dir():
            return images
    raise XpruneError(f"no image folder for split '{split}' in {root} (expected images/{split}/ or {split}/)")


def first_annotated_split(root: str | Path, splits: tuple[str, ...]) -> str:
    """The first of `splits` that has ROOT/annotations/instances_SPLIT.json (or that a data.yaml ROOT provides)."""
    from xprune.data import yolo_format
    if yolo_format.is_data_yaml(root):
        have = yolo_format.read_data_yaml(root).splits()
        for split in splits:
            if split in have:
                return split
        raise XpruneError(f"{root} has none of the splits {', '.join(splits)}")
    root = Path(root)
    for split in splits:
        if (root / "annotations" / f"instances_{split}.json").is_file():
            return split
    raise XpruneError(f"no annotations/instances_{{{','.join(splits)}}}.json in {root}")


def has_split(root: str | Path, split: str) -> bool:
    """Whether a dataset folder has annotations for `split`, or a data.yaml lists it (calib: or falls back)."""
    from xprune.data import yolo_format
    if yolo_format.is_data_yaml(root):
        return Path(root).is_file() and split in yolo_format.read_data_yaml(root).splits()
    return (Path(root) / "annotations" / f"instances_{split}.json").is_file()


def dataset_exists(root: str | Path) -> bool:
    """A dataset folder or a data.yaml file is there."""
    from xprune.data import yolo_format
    return Path(root).is_file() if yolo_format.is_data_yaml(root) else Path(root).is_dir()


def calibration_set(root: str | Path, size: int, images: int) -> CocoDetectionSet:
    """Calibration images: the 'calib' split when the dataset has one, else the start of 'train', else 'val'. They
    may be train images (`xprune.data.splits.calibration_overlap` says): fine for scoring layers, not for measuring
    what pruning costs."""
    split = first_annotated_split(root, ("calib", "train", "val"))
    return CocoDetectionSet.from_folder(root, split, size, limit=images)


def dataset_num_classes(root: str | Path, split: str = "val") -> int:
    """Number of categories of a dataset folder, read from its 'calib', 'train' or else `split` annotations (or of
    a data.yaml, read from its names)."""
    from xprune.data import yolo_format
    if yolo_format.is_data_yaml(root):
        return len(yolo_format.read_data_yaml(root).names)
    if not Path(root).is_dir():
        raise XpruneError(f"dataset folder not found: {root}")
    split = first_annotated_split(root, ("calib", "train", split))
    return CocoDetectionSet.from_folder(root, split, 32, limit=1).num_classes
