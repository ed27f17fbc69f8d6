"""Writing a detection dataset folder: COCO instances JSON per split, YOLO label files and a data.yaml for the
Ultralytics trainer, staged beside the target and renamed into place so no half-written dataset is left behind.

Layout (what `CocoDetectionSet.from_folder` and Ultralytics both read):
    OUT/images/SPLIT/*.jpg   OUT/labels/SPLIT/*.txt   OUT/annotations/instances_SPLIT.json   OUT/data.yaml   OUT/STAMP
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from xprune.errors import XpruneError

Box = list[float]  # [x0, y0, x1, y1] in image pixels


@dataclass
class ImageRecord:
    """One image and its objects: (0-based class, box) pairs."""

    name: str
    image: Image.Image
    objects: list[tuple[int, Box]] = field(default_factory=list)


class DatasetWriter:
    """Stage a dataset in OUT.partial, then `finish()` renames it to OUT (replacing an older copy).

    `stamp` names the file that identifies the dataset (e.g. synth.json); a non-empty OUT without it is refused, so a
    user's own folder is never overwritten."""

    def __init__(self, out: str | Path, classes: list[str], description: str, stamp: str, supercategory: str = "object"):
        self.out = Path(out)
        self.classes = classes
        self.description = description
        self.stamp = stamp
        self.supercategory = supercategory
        if self.out.exists() and not self.out.is_dir():
            raise XpruneError(f"{self.out} exists and is not a folder")
        if self.out.is_dir() and any(self.out.iterdir()) and not (self.out / stamp).is_file():
            raise XpruneError(f"{self.out} exists and is not a dataset written by this command ({stamp} missing); "
                              "choose an empty folder")
        self.staging = self.out.with_name(self.out.name + ".partial")
        try:
            if self.staging.exists():
                shutil.rmtree(self.staging)
            self.staging.mkdir(parents=True)
        except OSError as e:
            raise XpruneError(f"cannot write to {self.out.parent}: {e.strerror or e}") from None

    def write_split(self, split: str, records: list[ImageRecord], quality: int = 92) -> dict:
        """Write one split's images, YOLO labels and COCO JSON; return the COCO dict."""
        (self.staging / "images" / split).mkdir(parents=True, exist_ok=True)
        (self.staging / "labels" / split).mkdir(parents=True, exist_ok=True)
        (self.staging / "annotations").mkdir(exist_ok=True)
        images: list[dict] = []
        annotations: list[dict] = []
        for image_id, rec in enumerate(records, start=1):
            w_img, h_img = rec.image.size
            rec.image.convert("RGB").save(self.staging / "images" / split / rec.name, quality=quality)
            images.append({"id": image_id, "file_name": rec.name, "width": w_img, "height": h_img})
            lines = []
            for cls, (x0, y0, x1, y1) in rec.objects:
                w, h = x1 - x0, y1 - y0
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cls + 1,
                                    "bbox": [x0, y0, w, h], "area": w * h, "iscrowd": 0})
                lines.append(f"{cls} {(x0 + w / 2) / w_img:.6f} {(y0 + h / 2) / h_img:.6f} {w / w_img:.6f} {h / h_img:.6f}")
            label = (self.staging / "labels" / split / rec.name).with_suffix(".txt")
            label.write_text("\n".join(lines) + ("\n" if lines else ""))
        coco = {
            "info": {"description": self.description, "version": "1"},
            "images": images,
            "annotations": annotations,
            "categories": [{"id": i + 1, "name": n, "supercategory": self.supercategory}
                           for i, n in enumerate(self.classes)],
        }
        (self.staging / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
        return coco

    def finish(self, stamp: dict, splits: tuple[str, ...] = ("train", "val")) -> Path:
        """Write data.yaml and the stamp, then move the staged folder into place."""
        names = "\n".join(f"  {i}: {n}" for i, n in enumerate(self.classes))
        split_lines = "".join(f"{s}: images/{s}\n" for s in splits if s in ("train", "val", "test"))
        (self.staging / "data.yaml").write_text(f"path: {self.out.resolve()}\n{split_lines}names:\n{names}\n")
        (self.staging / self.stamp).write_text(json.dumps(stamp, indent=2) + "\n")
        if self.out.exists():
            shutil.rmtree(self.out)
        self.staging.rename(self.out)
        return self.out

    def abandon(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
