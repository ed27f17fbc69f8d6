"""Deterministic synthetic detection dataset in COCO format (plus YOLO labels for the Ultralytics trainer).

Six textured shape classes pasted on crops of real photographs (the sample images that ship inside
scikit-image), with object sizes drawn to follow COCO's mix at the model's input size: about 40 % small
(< 32² px), 35 % medium, 25 % large, objects up to ~90 % of the frame, 1 to 20 objects per image, overlap and
occlusion, truncation at the borders, and distractor shapes that are not objects. Every branch of a multi-scale
detector has objects to find, so an importance score cannot look good by finding a branch the data never uses.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from xprune.data.folder import DatasetWriter, ImageRecord
from xprune.data.sizes import size_stats
from xprune.errors import XpruneError

GENERATOR = "xprune-synth-2"
CLASSES = ["circle", "square", "triangle", "star", "cross", "ring"]
SPLITS = ("train", "val", "calib")
STAMP = "synth.json"

# Side of the box (sqrt of its area) drawn per size group, in pixels; large ones up to a fraction of the frame.
SIZE_GROUPS = {"small": (0.36, 10.0, 32.0), "medium": (0.33, 32.0, 96.0), "large": (0.31, 96.0, None)}
MAX_SIDE_FRACTION = 0.9

# Photographs among skimage's bundled sample images (charts, logos, silhouettes and tiny images left out).
PHOTOS = ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "coffee.png", "coins.png",
          "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png",
          "motorcycle_right.png", "page.png", "retina.jpg", "rocket.jpg", "text.png")


@dataclass(frozen=True)
class SynthConfig:
    image_size: int = 320
    train: int = 1200
    val: int = 300
    calib: int = 64
    max_objects: int = 20
    mean_objects: float = 8.0
    seed: int = 0


@lru_cache(maxsize=1)
def photographs() -> tuple[np.ndarray, ...]:
    """The background photographs as RGB uint8 arrays, read from scikit-image's package folder (not imported:
    only its data files are needed)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise XpruneError("the synthetic set's backgrounds are scikit-image's sample photographs: "
                          "pip install scikit-image")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    out = []
    for name in PHOTOS:
        try:
            with Image.open(folder / name) as im:
                out.append(np.asarray(im.convert("RGB")))
        except OSError as e:
            raise XpruneError(f"cannot read background photograph {folder / name}: {e}") from None
    return tuple(out)


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        pts = [(math.cos(angle + k * math.pi / 2 + math.pi / 4), math.sin(angle + k * math.pi / 2 + math.pi / 4)) for k in range(4)]
    elif kind == "triangle":
        pts = [(math.cos(angle + k * 2 * math.pi / 3), math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
    elif kind == "star":
        pts = []
        for k in range(10):
            rad = 1.0 if k % 2 == 0 else 0.45
            a = angle + k * math.pi / 5
            pts.append((rad * math.cos(a), rad * math.sin(a)))
    elif kind == "cross":
        w = 0.33
        base = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
        ca, sa = math.cos(angle), math.sin(angle)
        pts = [(x * ca - y * sa, x * sa + y * ca) for x, y in base]
    else:
        raise ValueError(kind)
    return [(cx + r * x, cy + r * y) for x, y in pts]


def _texture(rng: np.random.Generator, size: int, colour: np.ndarray) -> Image.Image:
    """A square patch: solid, striped or checkered, in shades of the object's colour."""
    kind = rng.integers(3)
    yy, xx = np.mgrid[0:size, 0:size]
    if kind == 0:
        mask = np.zeros((size, size), bool)
    elif kind == 1:
        period = int(rng.integers(3, 10))
        mask = ((xx + yy) // period) % 2 == 0
    else:
        period = int(rng.integers(3, 10))
        mask = ((xx // period) + (yy // period)) % 2 == 0
    dark = np.clip(colour * 0.55, 0, 255)
    img = np.where(mask[..., None], dark[None, None, :], colour[None, None, :]).astype(np.uint8)
    return Image.fromarray(img, "RGB")


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A random square crop of a photograph, resized to the frame, flipped, tinted (grey photos) and re-lit."""
    photos = photographs()
    photo = photos[int(rng.integers(len(photos)))]
    h, w = photo.shape[:2]
    side = int(min(h, w) * rng.uniform(0.35, 1.0))
    y0, x0 = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    crop = photo[y0:y0 + side, x0:x0 + side].astype(np.float32)
    if rng.uniform() < 0.5:
        crop = crop[:, ::-1]
    if np.ptp(crop.mean(axis=(0, 1))) < 1.0:  # a grey photograph: give it a colour cast
        crop = crop * rng.uniform(0.6, 1.2, size=3)[None, None, :]
    crop = crop * rng.uniform(0.7, 1.2) + rng.uniform(-20, 20)
    img = Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8), "RGB")
    return img.resize((size, size), Image.BILINEAR)


def _distractors(img: Image.Image, rng: np.random.Generator, count: int) -> None:
    """Clutter that is not an object: irregular polygons, lines and blobs of any size."""
    size = img.size[0]
    draw = ImageDraw.Draw(img)
    for _ in range(count):
        colour = tuple(int(v) for v in rng.uniform(0, 255, 3))
        kind = rng.integers(3)
        if kind == 0:
            cx, cy = rng.uniform(0, size, 2)
            r = size * math.exp(rng.uniform(math.log(0.02), math.log(0.25)))
            n = int(rng.integers(5, 9))
            angles = np.sort(rng.uniform(0, 2 * math.pi, n))
            radii = r * rng.uniform(0.3, 1.0, n)
            draw.polygon([(float(cx + a * math.cos(t)), float(cy + a * math.sin(t))) for a, t in zip(radii, angles)],
                         fill=colour)
        elif kind == 1:
            x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, size, 4))
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 5)))
        else:
            x, y = (float(v) for v in rng.uniform(0, size, 2))
            rx, ry = rng.uniform(2, 10, 2)
            draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=colour)


def _draw_object(img: Image.Image, rng: np.random.Generator, cls: int, cx: float, cy: float,
                 r: float) -> tuple[np.ndarray, float]:
    """Paint one textured object; return its pixel mask in the frame and the fraction of its unclipped box that
    lies inside the frame."""
    size = img.size[0]
    kind = CLASSES[cls]
    mask = Image.new("L", img.size, 0)
    md = ImageDraw.Draw(mask)
    angle = float(rng.uniform(0, 2 * math.pi))
    if kind in ("circle", "ring"):
        md.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        if kind == "ring":
            ri = r * 0.55
            md.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
        xs, ys = [cx - r, cx + r], [cy - r, cy + r]
    else:
        points = _polygon(kind, cx, cy, r, angle)
        md.polygon(points, fill=255)
        xs, ys = [x for x, _ in points], [y for _, y in points]
    colour = rng.uniform(20, 255, size=3)
    img.paste(_texture(rng, size, colour), (0, 0), mask)
    x0, y0, x1, y1 = max(min(xs), 0), max(min(ys), 0), min(max(xs), size), min(max(ys), size)
    inside = max(x1 - x0, 0) * max(y1 - y0, 0) / max((max(xs) - min(xs)) * (max(ys) - min(ys)), 1.0)
    return np.asarray(mask) > 0, inside


def _box_side(rng: np.random.Generator, size: int) -> float:
    """Side of one object's box: a size group by its share, then log-uniform within the group."""
    u, cumulative = rng.uniform(), 0.0
    for share, lo, hi in SIZE_GROUPS.values():
        cumulative += share
        if u < cumulative:
            break
    hi = min(hi or MAX_SIDE_FRACTION * size, MAX_SIDE_FRACTION * size)
    lo = min(lo, hi)
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _make_image(rng: np.random.Generator, cfg: SynthConfig) -> tuple[Image.Image, list[tuple[int, list[float]]]]:
    size = cfg.image_size
    img = _background(rng, size)
    _distractors(img, rng, int(rng.integers(2, 8)))
    n = int(min(cfg.max_objects, 1 + rng.poisson(cfg.mean_objects - 1)))
    sides = [_box_side(rng, size) for _ in range(n)]
    # Mostly large behind small, as in photographs taken at a distance; the jitter lets some small ones be hidden.
    order = np.argsort([-s * rng.uniform(0.6, 1.4) for s in sides])
    # Which object each pixel shows (-1: background): later objects occlude earlier ones.
    owner = np.full((size, size), -1, dtype=np.int32)
    painted: list[tuple[int, int, float]] = []  # (class, pixels painted, fraction of the box inside the frame)
    for index, i in enumerate(order):
        r = sides[i] / 2
        cls = int(rng.integers(len(CLASSES)))
        # Centres may sit up to a quarter of the object outside the frame: truncation at the borders.
        cx, cy = (float(v) for v in rng.uniform(-0.25 * r, size + 0.25 * r, 2))
        mask, inside = _draw_object(img, rng, cls, cx, cy, r)
        owner[mask] = index
        painted.append((cls, int(mask.sum()), inside))
    _distractors(img, rng, int(rng.integers(0, 3)))  # a little clutter in front of the objects too
    if rng.uniform() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.2))))
    return img, _labelled(owner, painted)


def _labelled(owner: np.ndarray, painted: list[tuple[int, int, float]]) -> list[tuple[int, list[float]]]:
    """The objects an annotator would box: at least a quarter of the shape inside the frame, at least 40 % of its
    pixels not hidden by later objects, at least 4 px on a side. The box is that of the visible pixels, as in COCO."""
    out = []
    for index, (cls, pixels, inside) in enumerate(painted):
        visible = owner == index
        seen = int(visible.sum())
        if pixels == 0 or inside < 0.25 or seen < 0.4 * pixels:
            continue
        ys, xs = np.nonzero(visible)
        box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
        if box[2] - box[0] >= 4 and box[3] - box[1] >= 4:
            out.append((cls, box))
    return out


def _stamp(cfg: SynthConfig) -> dict:
    return {"generator": GENERATOR, **asdict(cfg)}


def generate(out: str | Path, cfg: SynthConfig = SynthConfig(), overwrite: bool = False,
             progress: bool = False) -> Path:
    """Write the dataset to `out`; reuse it when it exists with the same config. Returns the folder."""
    out = Path(out)
    stamp_file = out / STAMP
    wanted = _stamp(cfg)
    if stamp_file.is_file() and not overwrite:
        try:
            recorded = json.loads(stamp_file.read_text())
            if {k: recorded.get(k) for k in wanted} == wanted:
                return out
        except json.JSONDecodeError:
            pass
    photographs()  # fail before writing anything when the backgrounds are missing
    writer = DatasetWriter(out, CLASSES, "xprune synthetic shapes on photographs", STAMP, supercategory="shape")
    counts = {"train": cfg.train, "val": cfg.val, "calib": cfg.calib}
    stats = {}
    try:
        for split_index, split in enumerate(SPLITS):
            rng = np.random.default_rng([cfg.seed, split_index])
            records = []
            for i in range(counts[split]):
                img, objects = _make_image(rng, cfg)
                records.append(ImageRecord(f"{split}_{i:05d}.jpg", img, objects))
            coco = writer.write_split(split, records)
            stats[split] = size_stats(coco["annotations"], coco["images"])
            if progress:
                print(f"  {split}: {len(records)} images, {stats[split]['objects']} objects", flush=True)
        return writer.finish({**wanted, "size_stats": stats["val"], "size_stats_by_split": stats},
                             splits=SPLITS)
    except BaseException:
        writer.abandon()
        raise
