"""Object sizes of a COCO-format split by COCO's own rule, next to COCO's mix.

COCO's evaluation splits objects by area: small < 32² px, medium < 96² px, large above (COCOeval's `areaRng`, on
the annotation's `area`). On COCO that gives about 41 % small, 34 % medium and 24 % large ("41% of objects are
small, 34% are medium, and 24% are large", cocodataset.org's detection evaluation page). A dataset whose objects
are all medium exercises only part of a multi-scale detector, and a pruning criterion can look good there by
finding the branches the data never uses.
"""

from __future__ import annotations

import numpy as np

SMALL_AREA, LARGE_AREA = 32 ** 2, 96 ** 2  # COCOeval's area ranges
COCO_SIZE_FRACTIONS = {"small": 0.41, "medium": 0.34, "large": 0.24}
HISTOGRAM_EDGES = [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0]  # box side (sqrt of its area) / image side
HISTOGRAM_OF = "sqrt(box area) / image side"


def size_stats(annotations: list[dict], images: list[dict]) -> dict:
    """The object-size mix of COCO annotations by COCO's area rule, its histogram of box side over image side,
    objects per image and the largest box side as a fraction of its image, next to COCO's own mix. Crowd regions
    are left out, as COCOeval leaves them out of the counts."""
    side_of = {im["id"]: float(max(im.get("width") or 0, im.get("height") or 0)) for im in images}
    areas, rel_sides, max_sides = [], [], []
    for ann in annotations:
        if ann.get("iscrowd"):
            continue
        w, h = float(ann["bbox"][2]), float(ann["bbox"][3])
        area = float(ann.get("area") or w * h)  # COCOeval's rule reads `area` (the mask's area when there is one)
        image_side = side_of.get(ann["image_id"]) or max(w, h, 1.0)
        areas.append(area)
        rel_sides.append(np.sqrt(w * h) / image_side)
        max_sides.append(max(w, h) / image_side)
    a = np.asarray(areas, dtype=np.float64)
    n = max(len(a), 1)
    fractions = {"small": float((a < SMALL_AREA).sum() / n),
                 "medium": float(((a >= SMALL_AREA) & (a < LARGE_AREA)).sum() / n),
                 "large": float((a >= LARGE_AREA).sum() / n)}
    counts, _ = np.histogram(np.clip(rel_sides, 0.0, 1.0), bins=HISTOGRAM_EDGES)
    return {"objects": int(len(a)), "images": len(images), "fractions": fractions,
            "coco_fractions": dict(COCO_SIZE_FRACTIONS),
            "histogram": {"edges": list(HISTOGRAM_EDGES), "counts": [int(c) for c in counts], "of": HISTOGRAM_OF},
            "objects_per_image": float(len(a) / max(len(images), 1)),
            "max_box_side": float(max(max_sides)) if max_sides else 0.0}
