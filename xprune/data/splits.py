"""Which images two splits of a dataset share: a calib split drawn from train (the trees set's), a data.yaml without
`calib` (its calib is the start of train), or folders that hold copies of the same files.

An image is shared when it is the same file (the same resolved path) or a file with the same bytes (SHA-256, hashed
only where the sizes agree, so listing a large train split costs one stat a file). Names alone decide nothing: two
folders' `000001.jpg` need not be the same picture, and a renamed copy still is.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from xprune.errors import XpruneError
from xprune.files import file_sha256


@dataclass(frozen=True)
class SplitOverlap:
    """The images of `split` that are also images of `other`."""

    split: str
    other: str
    images: int  # images of `split`
    shared: list[str]  # those also in `other`, as paths

    @property
    def overlaps(self) -> bool:
        return bool(self.shared)

    def describe(self) -> str:
        """'8 of the 64 calib images are train images (e.g. images/calib/a.jpg)'; '' without overlap."""
        if not self.shared:
            return ""
        if self.split == self.other:
            return f"the {self.images} calibration images are {self.other} images (the dataset has no calib split)"
        every = "all" if len(self.shared) == self.images else f"{len(self.shared)} of the"
        return f"{every} {self.images} {self.split} images are {self.other} images (e.g. {self.shared[0]})"


def split_files(root: str | Path, split: str) -> list[Path]:
    """Every image file of ROOT's SPLIT, [] when it has none: a data.yaml's images of the split (its calib falls back
    to train); a COCO folder's image folder of the split, searched recursively: every image there counts, annotated
    or not, since a model may have been trained on the whole folder."""
    from xprune.data import yolo_format
    from xprune.data.coco import split_image_folder

    if yolo_format.is_data_yaml(root):
        data = yolo_format.read_data_yaml(root)
        return yolo_format.split_images(data, split) if split in data.splits() else []
    try:
        folder = split_image_folder(root, split)
    except XpruneError:
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in yolo_format.IMAGE_SUFFIXES and p.is_file())


def shared_images(images: Sequence[Path], root: str | Path, split: str) -> list[Path]:
    """Those of `images` that are images of ROOT's SPLIT too (the same file, or the same bytes), in order."""
    others = split_files(root, split)
    if not others:
        return []
    same_file = {p.resolve() for p in others}
    by_size: dict[int, list[Path]] = defaultdict(list)
    for p in others:
        by_size[_size(p)].append(p)
    digests: dict[int, set[str]] = {}  # file size -> the SHA-256 of the split's files of that size, on demand
    shared = []
    for image in images:
        size = _size(image)
        if image.resolve() in same_file:
            shared.append(image)
        elif size in by_size:
            if size not in digests:
                digests[size] = {file_sha256(p) for p in by_size[size]}
            if file_sha256(image) in digests[size]:
                shared.append(image)
    return shared


def split_overlap(root: str | Path, split: str, other: str = "train", limit: int | None = None) -> SplitOverlap:
    """The images of ROOT's SPLIT (as its annotations list them; the first `limit` ones) that are also images of
    OTHER."""
    from xprune.data.coco import CocoDetectionSet

    images = CocoDetectionSet.from_folder(root, split, 32, limit=limit).image_paths()
    shared = shared_images(images, root, other)
    return SplitOverlap(split, other, len(images), [_shown(p, root) for p in shared])


def calibration_overlap(root: str | Path, images: int) -> SplitOverlap:
    """The first `images` calibration images (those `calibration_set` reads) that are train images too: all of
    them for a data.yaml without 'calib' or a folder without a calib split, the drawn ones for the trees set."""
    from xprune.data.coco import first_annotated_split

    split = first_annotated_split(root, ("calib", "train", "val"))
    return split_overlap(root, split, "train", limit=images)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as e:
        raise XpruneError(f"cannot read image {path}: {e.strerror or e}") from None


def _shown(path: Path, root: str | Path) -> str:
    """The path from the dataset folder (a data.yaml's folder) when it is inside it."""
    base, path = Path(root).resolve(), path.resolve()
    base = base.parent if base.is_file() else base
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


__all__ = ["SplitOverlap", "calibration_overlap", "shared_images", "split_files", "split_overlap"]
