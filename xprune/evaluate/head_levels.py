"""Which output levels of a detector detect anything: its raw outputs split by feature map (anchors or grid cells
in the order the heads concatenate them), counting per level the outputs whose best class score reaches a
threshold. A level no output of which ever reaches it contributes no detection, so zeroing layers that only feed it
cannot change mAP: a criterion that finds such layers first "wins" without measuring importance."""

from __future__ import annotations

import numpy as np
import torch

from xprune.errors import XpruneError
from xprune.models.detector import Detector

THRESHOLD = 0.25  # a class score that counts as a detection (Ultralytics' default confidence)


def level_sizes(det: Detector) -> list[tuple[str, int]]:
    """(level name, raw outputs per image) for each output level, in the order of `det.raw`'s outputs. One-stage
    families only (YOLO, torchvision SSD/SSDlite/RetinaNet, TinySSD); a two-stage detector has no fixed levels."""
    return det.output_levels()


def level_usage(det: Detector, dataset, threshold: float = THRESHOLD, batch_size: int = 16) -> dict:
    """Per output level over `dataset` (a CocoDetectionSet): raw outputs per image, how many reach `threshold`
    (summed over the images) and the highest score any of them gives."""
    levels = level_sizes(det)
    above = np.zeros(len(levels), dtype=np.int64)
    best = np.zeros(len(levels))
    images = 0
    for x, _, _ in dataset.batches(batch_size):
        with torch.no_grad():
            _, scores = det.raw(x)
        top = scores.max(-1).values.numpy()  # [B, N]: each output's best class score
        if top.shape[1] != sum(n for _, n in levels):
            raise XpruneError(f"{det.family}: {top.shape[1]} raw outputs, its levels add up to "
                              f"{sum(n for _, n in levels)}")
        start = 0
        for k, (_, n) in enumerate(levels):
            part = top[:, start:start + n]
            above[k] += int((part >= threshold).sum())
            best[k] = max(best[k], float(part.max()))
            start += n
        images += len(x)
    return {"threshold": threshold, "images": images,
            "levels": [{"level": lv, "outputs": n, "above_threshold": int(a), "max_score": float(b)}
                       for (lv, n), a, b in zip(levels, above, best)]}


def silent_levels(usage: dict) -> list[str]:
    """The levels none of whose outputs reached the threshold."""
    return [lv["level"] for lv in usage["levels"] if lv["above_threshold"] == 0]
