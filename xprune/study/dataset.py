"""What a study records about its dataset: the object-size mix of the val split next to COCO's.

COCO's evaluation splits objects by area: small < 32² px, medium < 96² px, large above (COCOeval's `areaRng`, on
the annotation's `area`). On COCO that gives about 41 % small, 34 % medium and 24 % large ("41% of objects are
small, 34% are medium, and 24% are large", cocodataset.org's detection evaluation page). A dataset whose objects
are all medium exercises only part of a multi-scale detector, and a pruning criterion can look good there by
finding the branches the data never uses; the study report shows the mix so a reader can judge that.

`size_stats` computes the mix from COCO-format annotations. A synthetic dataset records the same block in its
`synth.json` ("size_stats"); `dataset_size_stats` uses that when present and computes it from the val annotations
otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

from xprune.data.sizes import COCO_SIZE_FRACTIONS, HISTOGRAM_EDGES, HISTOGRAM_OF, size_stats  # noqa: F401
from xprune.errors import XpruneError

SYNTH_STAMP = "synth.json"


def dataset_size_stats(root: str | Path, split: str = "val", limit: int | None = None) -> dict:
    """The size mix of a dataset's split for the study report, with where it came from: the generator's record in
    `synth.json` when it has one (whole val split), else computed from `annotations/instances_<split>.json` over
    the images a study evaluates (the first `limit` by id, as `CocoDetectionSet` takes them)."""
    root = Path(root)
    stamp = root / SYNTH_STAMP
    if split == "val" and stamp.is_file():
        try:
            recorded = json.loads(stamp.read_text()).get("size_stats")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            recorded = None
        if isinstance(recorded, dict) and isinstance(recorded.get("fractions"), dict):
            return {**recorded, "source": SYNTH_STAMP, "split": split}
    path = root / "annotations" / f"instances_{split}.json"
    try:
        coco = json.loads(path.read_text())
        images = sorted(coco["images"], key=lambda im: im["id"])[:limit]
        ids = {im["id"] for im in images}
        annotations = [a for a in coco.get("annotations", []) if a["image_id"] in ids]
        stats = size_stats(annotations, images)
    except FileNotFoundError:
        raise XpruneError(f"annotations file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, IndexError) as e:
        raise XpruneError(f"{path} is not a readable COCO instances file: {type(e).__name__} {e}") from None
    return {**stats, "source": f"annotations/instances_{split}.json", "split": split}
