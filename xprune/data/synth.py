"""Deterministic synthetic detection dataset in COCO format (plus YOLO labels for the Ultralytics trainer).

Six shape classes with varied size, colour, texture, background clutter and occlusion: hard enough that
detectors of different capacity score differently, easy enough that a small model learns it on a CPU.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from xprune.errors import XpruneError

CLASSES = ["circle", "square", "triangle", "star", "cross", "ring"]
SPLITS = ("train", "val", "calib")


@dataclass(frozen=True)
class SynthConfig:
    image_size: int = 320
    train: int = 1200
    val: int = 200
    calib: int = 64
    max_objects: int = 6
    seed: int = 0


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
        period = int(rng.integers(4, 10))
        mask = ((xx + yy) // period) % 2 == 0
    else:
        period = int(rng.integers(4, 10))
        mask = ((xx // period) + (yy // period)) % 2 == 0
    dark = np.clip(colour * 0.55, 0, 255)
    img = np.where(mask[..., None], dark[None, None, :], colour[None, None, :]).astype(np.uint8)
    return Image.fromarray(img, "RGB")


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    base = rng.uniform(40, 215, size=3)
    grad = np.linspace(-30, 30, size)[None, :, None] * rng.uniform(-1, 1, size=3)[None, None, :]
    noise = rng.normal(0, 12, size=(size, size, 3))
    img = Image.fromarray(np.clip(base + grad + noise, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    # Clutter: thin lines and small blobs that are not objects.
    for _ in range(int(rng.integers(3, 12))):
        c = tuple(int(v) for v in rng.uniform(0, 255, 3))
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, size, 4))
        draw.line([(x0, y0), (x1, y1)], fill=c, width=int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(0, 6))):
        c = tuple(int(v) for v in rng.uniform(0, 255, 3))
        x, y = (float(v) for v in rng.uniform(0, size, 2))
        r = float(rng.uniform(2, 6))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=c)
    return img


def _draw_object(img: Image.Image, rng: np.random.Generator, cls: int, cx: float, cy: float, r: float) -> list[float]:
    """Paint one textured object; return its tight box [x0, y0, x1, y1] before clipping."""
    size = img.size[0]
    kind = CLASSES[cls]
    mask = Image.new("L", img.size, 0)
    md = ImageDraw.Draw(mask)
    angle = float(rng.uniform(0, 2 * math.pi))
    if kind == "circle":
        md.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif kind == "ring":
        md.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ri = r * 0.55
        md.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    else:
        md.polygon(_polygon(kind, cx, cy, r, angle), fill=255)
    colour = rng.uniform(20, 255, size=3)
    img.paste(_texture(rng, size, colour), (0, 0), mask)
    bbox = mask.getbbox()
    if bbox is None:
        return []
    return [float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3])]


def _make_image(rng: np.random.Generator, cfg: SynthConfig) -> tuple[Image.Image, list[tuple[int, list[float]]]]:
    size = cfg.image_size
    img = _background(rng, size)
    n = int(rng.integers(1, cfg.max_objects + 1))
    objects: list[tuple[int, list[float]]] = []
    for _ in range(n):
        cls = int(rng.integers(len(CLASSES)))
        r = float(size * rng.uniform(0.04, 0.2))
        cx, cy = (float(v) for v in rng.uniform(r * 0.5, size - r * 0.5, 2))
        box = _draw_object(img, rng, cls, cx, cy, r)
        if box:
            objects.append((cls, box))
    # Later objects occlude earlier ones; drop those more than 60% hidden (their box no longer fits the pixels).
    visible = _visible(objects, size)
    if rng.uniform() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.2))))
    return img, visible


def _visible(objects: list[tuple[int, list[float]]], size: int) -> list[tuple[int, list[float]]]:
    occupancy = np.full((size, size), -1, dtype=np.int32)
    for i, (_, (x0, y0, x1, y1)) in enumerate(objects):
        occupancy[int(y0):int(y1), int(x0):int(x1)] = i
    out = []
    for i, (cls, (x0, y0, x1, y1)) in enumerate(objects):
        area = max((x1 - x0) * (y1 - y0), 1.0)
        seen = float((occupancy[int(y0):int(y1), int(x0):int(x1)] == i).sum())
        if seen / area >= 0.4 and (x1 - x0) >= 4 and (y1 - y0) >= 4:
            out.append((cls, [x0, y0, x1, y1]))
    return out


def _coco_dict(images: list[dict], annotations: list[dict]) -> dict:
    return {
        "info": {"description": "xprune synthetic shapes", "version": "1"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)],
    }


def generate(out: str | Path, cfg: SynthConfig = SynthConfig(), overwrite: bool = False) -> Path:
    """Write the dataset to `out`; reuse it when it exists with the same config. Returns the folder."""
    out = Path(out)
    stamp = out / "synth.json"
    wanted = {"generator": "xprune-synth-1", **cfg.__dict__}
    if stamp.is_file() and not overwrite:
        try:
            if json.loads(stamp.read_text()) == wanted:
                return out
        except json.JSONDecodeError:
            pass
    if out.exists() and any(out.iterdir()) and not stamp.is_file():
        raise XpruneError(f"{out} exists and is not an xprune synthetic dataset; choose an empty folder")
    staging = out.with_name(out.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    counts = {"train": cfg.train, "val": cfg.val, "calib": cfg.calib}
    for split_index, split in enumerate(SPLITS):
        rng = np.random.default_rng([cfg.seed, split_index])
        (staging / "images" / split).mkdir(parents=True)
        (staging / "labels" / split).mkdir(parents=True)
        images, annotations = [], []
        for i in range(counts[split]):
            img, objects = _make_image(rng, cfg)
            name = f"{split}_{i:05d}.jpg"
            img.save(staging / "images" / split / name, quality=92)
            image_id = i + 1
            images.append({"id": image_id, "file_name": name, "width": cfg.image_size, "height": cfg.image_size})
            lines = []
            for cls, (x0, y0, x1, y1) in objects:
                w, h = x1 - x0, y1 - y0
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": cls + 1,
                    "bbox": [x0, y0, w, h], "area": w * h, "iscrowd": 0,
                })
                s = cfg.image_size
                lines.append(f"{cls} {(x0 + w / 2) / s:.6f} {(y0 + h / 2) / s:.6f} {w / s:.6f} {h / s:.6f}")
            (staging / "labels" / split / name.replace(".jpg", ".txt")).write_text("\n".join(lines) + ("\n" if lines else ""))
        (staging / "annotations").mkdir(exist_ok=True)
        (staging / "annotations" / f"instances_{split}.json").write_text(json.dumps(_coco_dict(images, annotations)))
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASSES))
    (staging / "data.yaml").write_text(
        f"path: {out.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    (staging / "synth.json").write_text(json.dumps(wanted, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out
