"""COCO mAP through pycocotools' COCOeval, from predictions of any backend that returns detections."""

from __future__ import annotations

import contextlib
import io
from typing import Callable

import numpy as np
import torch
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from xprune.data.coco import CocoDetectionSet
from xprune.models.detector import Detector


def to_coco_results(detections: list[dict], samples: list[dict], category_ids: list[int]) -> list[dict]:
    """Detections in input pixels -> COCO result dicts in original image pixels. Labels beyond the dataset's
    categories (a model trained on more classes) are dropped."""
    out = []
    for det, s in zip(detections, samples):
        boxes = det["boxes"].detach().cpu().double() / s["scale"]
        for (x0, y0, x1, y1), score, label in zip(boxes.tolist(), det["scores"].tolist(), det["labels"].tolist()):
            if int(label) >= len(category_ids):
                continue
            out.append({"image_id": int(s["image_id"]), "category_id": int(category_ids[int(label)]),
                        "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)})
    return out


def coco_map(dataset: CocoDetectionSet, results: list[dict], image_ids: list[int], per_image: bool = False) -> dict:
    """COCOeval bbox on the given images. An empty result list scores 0 (pycocotools refuses to load it).
    With `per_image`, the dict also holds "matches": the per-image evaluation (`xprune.evaluate.image_matches.
    ImageMatches`) from which mAP of any resample of the images, and its bootstrap interval, are recomputed."""
    if not results:
        out = {"map": 0.0, "map50": 0.0, "map75": 0.0, "images": len(image_ids), "detections": 0}
        if per_image:
            from xprune.evaluate.image_matches import image_matches
            out["matches"] = image_matches(dataset.coco, results, image_ids)
        return out
    with contextlib.redirect_stdout(io.StringIO()):
        dt = dataset.coco.loadRes(results)
        ev = COCOeval(dataset.coco, dt, "bbox")
        ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(max(v, 0.0)) for v in ev.stats]  # -1 means "no ground truth of that size": report 0
    out = {"map": stats[0], "map50": stats[1], "map75": stats[2], "images": len(image_ids), "detections": len(results)}
    if per_image:
        from xprune.evaluate.image_matches import ImageMatches
        out["matches"] = ImageMatches.from_cocoeval(ev)  # the evaluation just run, area 'all', 100 detections
    return out


def evaluate_predictions(predict: Callable[[torch.Tensor], list[dict]], dataset: CocoDetectionSet,
                         category_ids: list[int] | None = None, batch_size: int = 8, limit: int | None = None,
                         progress: bool = False, per_image: bool = False) -> dict:
    """mAP@[.50:.95] and mAP@.50 of any `predict(images) -> detections` (0-based labels) on `dataset`; with
    `per_image`, also "matches" (see `coco_map`)."""
    category_ids = category_ids or dataset.category_ids
    results, ids = [], []
    n = len(dataset) if limit is None else min(limit, len(dataset))
    with torch.no_grad():
        for x, _, samples in tqdm(dataset.batches(batch_size, limit), total=int(np.ceil(n / batch_size)),
                                  desc="evaluate", unit="batch", disable=not progress, leave=False):
            results += to_coco_results(predict(x), samples, category_ids)
            ids += [s["image_id"] for s in samples]
    return coco_map(dataset, results, ids, per_image=per_image)


def evaluate_map(detector: Detector, dataset: CocoDetectionSet, batch_size: int = 8, limit: int | None = None,
                 progress: bool = False, per_image: bool = False) -> dict:
    """mAP of the detector in PyTorch (with `per_image`, also "matches", see `coco_map`)."""
    return evaluate_predictions(detector.predict, dataset, detector.category_ids, batch_size, limit, progress,
                                per_image=per_image)
