"""Preprocessing shared by every family: letterbox to a square input (top-left, so un-scaling is one division)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

PAD_VALUE = 114


def letterbox(image: Image.Image, size: int) -> tuple[torch.Tensor, float]:
    """Resize the long side to `size`, pad bottom/right; returns a [3, size, size] float tensor in [0, 1] and the scale."""
    w, h = image.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    resized = image.convert("RGB") if (nw, nh) == (w, h) else image.convert("RGB").resize((nw, nh), Image.BILINEAR)
    canvas[:nh, :nw] = np.asarray(resized)
    return torch.from_numpy(canvas).permute(2, 0, 1).float().div_(255.0), scale


def hflip(x: torch.Tensor, boxes: torch.Tensor, content_width: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror the image content (left part of the letterboxed canvas) and its boxes."""
    w = int(round(content_width))
    x = x.clone()
    x[:, :, :w] = x[:, :, :w].flip(-1)
    if boxes.numel():
        boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
    return x, boxes


def ssd_augment(x: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SSD's training augmentation from torchvision.transforms.v2: photometric distortion, zoom out onto a grey canvas
    (up to 2x: the data already has COCO's share of small objects), a random crop that keeps some IoU with an object,
    resized back to the input; boxes left degenerate by the crop are dropped. Draws from torch's global generator."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    size = tuple(x.shape[-2:])
    steps = [v2.RandomPhotometricDistort(p=0.5), v2.RandomZoomOut(fill=PAD_VALUE / 255.0, side_range=(1.0, 2.0), p=0.5)]
    if boxes.numel():  # the crop is defined by its overlap with the objects
        steps.append(v2.RandomIoUCrop())
    steps += [v2.Resize(size, antialias=True), v2.SanitizeBoundingBoxes()]
    out = v2.Compose(steps)({"image": tv_tensors.Image(x),
                             "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=size),
                             "labels": labels})
    return out["image"].as_subclass(torch.Tensor).clamp_(0, 1), out["boxes"].as_subclass(torch.Tensor), out["labels"]


def collate_targets(samples: list[dict]) -> tuple[torch.Tensor, list[dict]]:
    """Stack images; keep per-image targets as a list (boxes xyxy in input pixels, 0-based labels)."""
    x = torch.stack([s["image"] for s in samples])
    return x, [{"boxes": s["boxes"], "labels": s["labels"]} for s in samples]
