"""A COCO-format tree-crown dataset from the NEON aerial images and boxes that the `deepforest` package ships.

The files are read without importing deepforest (`xprune.data.deepforest_data` says from where).

Each annotated source image is cut into `tile` x `tile` windows overlapping by `overlap` (the last window of a row
or column is moved back to end flush with the image). A box is kept in a tile when at least `min_visible` (50 %) of
its area lies inside the tile, clipped to the tile; less visible boxes are dropped. Tiles without boxes are kept, as
negatives. Every source image goes whole to one split (SOURCES says which), so no pixel of a val image is in train;
'calib' is an evenly spaced draw from the train tiles that have boxes. All labels (Tree, and SOAP_061's Dead/Alive)
become the one class "tree".
"""

from __future__ import annotations

import hashlib
import io
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from xprune.data.deepforest_data import SampleData, locate_sample_data
from xprune.data.folder import Box, DatasetWriter, ImageRecord
from xprune.errors import XpruneError
from xprune.resume import Stamp, first_difference, plain

GENERATOR = "xprune-trees-1"
CLASSES = ["tree"]
STAMP = "trees.json"


@dataclass(frozen=True)
class TreeSource:
    """One annotated image of deepforest/data and the split it goes to whole."""

    image: str
    annotations: str  # Pascal VOC xml
    split: str


# The four annotated images of deepforest 2.1.0, 951 boxes. SOAP_031.png and the bird photo have no boxes; the CSVs
# repeat the xml files' boxes (example.csv only 79 of YELL_541000's 279), so the xml files are the complete lists.
# The largest image trains; val is a second Yellowstone image, so val is in the domain of most training boxes yet
# shares no pixel with them.
SOURCES = (
    TreeSource("2019_YELL_2_528000_4978000_image_crop2.png", "2019_YELL_2_528000_4978000_image_crop2.xml", "train"),
    TreeSource("OSBS_029.png", "OSBS_029.xml", "train"),
    TreeSource("SOAP_061.png", "SOAP_061.xml", "train"),
    TreeSource("2019_YELL_2_541000_4977000_image_crop.png", "2019_YELL_2_541000_4977000_image_crop.xml", "val"),
)


@dataclass(frozen=True)
class TreesConfig:
    tile: int = 320
    overlap: float = 0.25
    min_visible: float = 0.5  # fraction of a box's area that must lie inside a tile for the box to be kept
    calib: int = 64

    def validate(self) -> None:
        if self.tile < 16:
            raise XpruneError(f"tile size must be at least 16 pixels, got {self.tile}")
        if not 0 <= self.overlap <= 0.9:
            raise XpruneError(f"overlap must be in [0, 0.9], got {self.overlap}")
        if not 0 < self.min_visible <= 1:
            raise XpruneError(f"min_visible must be in (0, 1], got {self.min_visible}")
        if self.calib < 1:
            raise XpruneError(f"calib must be positive, got {self.calib}")

    @property
    def stride(self) -> int:
        return max(1, round(self.tile * (1 - self.overlap)))


# ------------------------------------------------------------------------------------------------ reading, tiling


@dataclass
class SourceImage:
    source: TreeSource
    image: Image.Image
    boxes: list[Box]
    labels: dict[str, int] = field(default_factory=dict)  # original label -> count


def _number(node: ET.Element | None, tag: str) -> float:
    text = node.findtext(tag) if node is not None else None
    if text is None:
        raise ValueError(tag)
    return float(text)


def read_voc(data: bytes, name: str) -> tuple[tuple[int, int] | None, list[tuple[str, Box]]]:
    """(width, height) from <size> when present, and the (label, [x0, y0, x1, y1]) of every object."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise XpruneError(f"deepforest sample file {name} is corrupt: {e}") from None
    size = None
    try:
        node = root.find("size")
        if node is not None:
            size = (int(_number(node, "width")), int(_number(node, "height")))
        objects = []
        for obj in root.iter("object"):
            bnd = obj.find("bndbox")
            box = [_number(bnd, k) for k in ("xmin", "ymin", "xmax", "ymax")]
            objects.append(((obj.findtext("name") or "").strip(), box))
    except ValueError:
        raise XpruneError(f"deepforest sample file {name} is corrupt: an object or its size lacks numeric "
                          "xmin/ymin/xmax/ymax or width/height") from None
    return size, objects


def decode_image(data: bytes, name: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")
    except UnidentifiedImageError:
        raise XpruneError(f"deepforest sample file {name} is corrupt: not a readable image") from None
    # Ultralytics patches Image.open to try optional HEIF support on failure (ImportError without it).
    except (OSError, SyntaxError, ValueError, ImportError) as e:
        raise XpruneError(f"deepforest sample file {name} is corrupt: {e}") from None


def load_source(source: TreeSource, files: dict[str, bytes]) -> SourceImage:
    image = decode_image(files[source.image], source.image)
    size, objects = read_voc(files[source.annotations], source.annotations)
    width, height = image.size
    if size is not None and size != (width, height):
        raise XpruneError(f"deepforest sample file {source.annotations} is for a {size[0]}x{size[1]} image but "
                          f"{source.image} is {width}x{height}")
    boxes: list[Box] = []
    labels: dict[str, int] = {}
    for label, (x0, y0, x1, y1) in objects:
        x0, x1 = max(0.0, min(x0, x1)), min(float(width), max(x0, x1))
        y0, y1 = max(0.0, min(y0, y1)), min(float(height), max(y0, y1))
        if x1 - x0 < 1 or y1 - y0 < 1:  # nothing left of it inside the image
            continue
        boxes.append([x0, y0, x1, y1])
        labels[label] = labels.get(label, 0) + 1
    if not boxes:
        raise XpruneError(f"deepforest sample file {source.annotations} has no boxes inside {source.image}")
    return SourceImage(source, image, boxes, labels)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Window starts covering [0, length): every `stride`, the last moved back to end flush with the image."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def clip_box(box: Box, window: tuple[int, int, int, int], min_visible: float) -> Box | None:
    """`box` clipped to `window` (x0, y0, x1, y1) in window coordinates, or None when less than `min_visible`
    of its area lies inside."""
    x0, y0, x1, y1 = box
    wx0, wy0, wx1, wy1 = window
    ix0, iy0, ix1, iy1 = max(x0, wx0), max(y0, wy0), min(x1, wx1), min(y1, wy1)
    if ix1 <= ix0 or iy1 <= iy0:
        return None
    area = (x1 - x0) * (y1 - y0)
    if (ix1 - ix0) * (iy1 - iy0) < min_visible * area:
        return None
    return [ix0 - wx0, iy0 - wy0, ix1 - wx0, iy1 - wy0]


def tile_source(src: SourceImage, cfg: TreesConfig) -> list[ImageRecord]:
    width, height = src.image.size
    tw, th = min(cfg.tile, width), min(cfg.tile, height)
    stem = Path(src.source.image).stem.replace(" ", "_")
    records = []
    for y in tile_starts(height, cfg.tile, cfg.stride):
        for x in tile_starts(width, cfg.tile, cfg.stride):
            window = (x, y, x + tw, y + th)
            kept = [b for b in (clip_box(box, window, cfg.min_visible) for box in src.boxes) if b is not None]
            records.append(ImageRecord(f"{stem}_x{x:04d}_y{y:04d}.jpg", src.image.crop(window),
                                       [(0, b) for b in kept]))
    return records


def calib_draw(train: list[ImageRecord], count: int) -> list[ImageRecord]:
    """`count` train tiles with boxes, evenly spaced over them (so over every training source)."""
    pool = [r for r in train if r.objects]
    k = min(count, len(pool))
    return [pool[i * len(pool) // k] for i in range(k)] if k else []


# ------------------------------------------------------------------------------------------------ the dataset


@dataclass
class TreesDataset:
    out: Path
    stamp: dict
    reused: bool

    def summary(self) -> str:
        counts = self.stamp["splits"]
        parts = ", ".join(f"{s} {c['images']} images / {c['boxes']} boxes" for s, c in counts.items())
        how = "reused" if self.reused else "written"
        return f"trees dataset {how}: {self.out} ({parts}) from {self.stamp['source']['origin']}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _identity(cfg: TreesConfig, hashes: dict[str, str], sources: tuple[TreeSource, ...]) -> dict:
    """What makes two datasets the same: the generator, the settings, the input files and the split assignment."""
    return plain({"generator": GENERATOR, "config": asdict(cfg), "files": hashes,
                  "assignment": {s.image: s.split for s in sources}})


def _reusable(out: Path, identity: dict) -> dict | None:
    """The stamp of the complete trees dataset at `out` when the same inputs made it, else None. The stamp carries
    the identity beside what was written; a dataset of other inputs is not refused but rebuilt (it is cheap), and
    replaced only once the new one is complete, so its stamp is written last, with it."""
    doc = Stamp(out / STAMP, identity, "trees dataset").recorded()
    if doc is None or first_difference({k: doc.get(k) for k in identity}, identity) is not None:
        return None
    if not all((out / "annotations" / f"instances_{s}.json").is_file() for s in doc.get("splits", {})):
        return None
    return doc


def build_trees(out: str | Path, cfg: TreesConfig = TreesConfig(), *, wheel: str | Path | None = None,
                overwrite: bool = False, data: SampleData | None = None,
                sources: tuple[TreeSource, ...] = SOURCES) -> TreesDataset:
    """Write the trees dataset to `out` (splits train, val, calib); reuse it when `out` holds one made from the same
    files with the same settings, unless `overwrite`. `data` defaults to `locate_sample_data(wheel)`."""
    cfg.validate()
    out = Path(out)
    if not {s.split for s in sources} >= {"train", "val"} or not {s.split for s in sources} <= {"train", "val"}:
        raise XpruneError("tree sources must assign every image to 'train' or 'val', with at least one of each")
    data = data or locate_sample_data(wheel)
    names = [n for s in sources for n in (s.image, s.annotations)]
    files = {n: data.read(n) for n in names}
    hashes = {n: _sha256(files[n]) for n in names}
    identity = _identity(cfg, hashes, sources)
    if not overwrite:
        found = _reusable(out, identity)
        if found is not None:
            return TreesDataset(out, found, reused=True)

    loaded = [load_source(s, files) for s in sources]
    writer = DatasetWriter(out, CLASSES, "xprune trees: NEON aerial tree crowns from deepforest sample data",
                           STAMP, supercategory="plant")
    try:
        splits: dict[str, list[ImageRecord]] = {"train": [], "val": []}
        per_source = []
        for src in loaded:
            tiles = tile_source(src, cfg)
            splits[src.source.split].extend(tiles)
            per_source.append({"image": src.source.image, "annotations": src.source.annotations,
                               "split": src.source.split, "size": list(src.image.size), "boxes": len(src.boxes),
                               "labels": src.labels, "tiles": len(tiles),
                               "tile_boxes": sum(len(r.objects) for r in tiles)})
        splits["calib"] = calib_draw(splits["train"], cfg.calib)
        counts = {}
        for split, records in splits.items():
            writer.write_split(split, records)
            counts[split] = {"images": len(records), "boxes": sum(len(r.objects) for r in records),
                             "empty_images": sum(1 for r in records if not r.objects),
                             "sources": sorted({s.image for s in sources if s.split == split}) if split != "calib"
                             else ["train tiles"]}
        stamp = {**identity,
                 "source": {"package": "deepforest", "version": data.version, "origin": data.origin,
                            "licence": "MIT (deepforest); imagery by NEON (CC0 1.0 when packaged)"},
                 "rule": f"tiles of {cfg.tile} px every {cfg.stride} px; a box is kept, clipped, when at least "
                         f"{cfg.min_visible:.0%} of its area is inside the tile; empty tiles kept",
                 "splits": counts, "sources": per_source}
        writer.finish(stamp, splits=("train", "val", "calib"))
    except OSError as e:
        writer.abandon()
        raise XpruneError(f"cannot write the trees dataset to {out}: {e.strerror or e}") from None
    except BaseException:
        writer.abandon()
        raise
    return TreesDataset(out, stamp, reused=False)
