"""The per-image COCO evaluation of one model on one dataset, from which the mAP of any resample of the images is
recomputed: what the bootstrap over images (`xprune.evaluate.bootstrap`) resamples.

`COCOeval.evaluate()` matches detections to ground truth image by image; `COCOeval.accumulate()` turns those
per-image matches into precision/recall curves. `ImageMatches` keeps the per-image matches of one model (area
'all', 100 detections, every IoU threshold). `ImageMatches.map` runs pycocotools' own `accumulate` on the
resampled entries: on all images it equals `coco_map(...)["map"]` exactly. It is the reference for
`ImageMatches.resampled_maps`, the same number for many resamples at once (`xprune.evaluate.resampled_maps`).

Only the area range 'all' and maxDets 100 are kept: mAP@[.50:.95] needs nothing else, and it makes one
accumulate about 12x cheaper than the full 4 areas x 3 maxDets.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import io
import zlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from xprune.errors import XpruneError
from xprune.evaluate.resampled_maps import WeightedMaps

FORMAT = "xprune-image-matches-1"
MAX_DETS = 100
AREA_ALL = [0 ** 2, 1e5 ** 2]  # pycocotools' 'all' range


@dataclass
class ImageEntry:
    """One (category, image) of COCOeval.evalImgs, reduced to what accumulate reads."""

    category: int              # index into ImageMatches.category_ids
    image: int                 # index into ImageMatches.image_ids
    scores: np.ndarray         # (D,) detection scores, highest first, at most MAX_DETS
    matched: np.ndarray        # (D,) bitmask over IoU thresholds: bit t set when matched at threshold t
    ignored: np.ndarray        # (D,) bitmask: ignored at threshold t (matched to a crowd / ignored gt)
    gt: int                    # ground-truth boxes that count
    gt_ignored: int            # ground-truth boxes that are ignored (crowd)

    def as_eval_img(self, thresholds: int) -> dict:
        bits = 1 << np.arange(thresholds)[:, None]
        return {"dtScores": self.scores.tolist(), "dtMatches": (self.matched[None, :] & bits) != 0,
                "dtIgnore": (self.ignored[None, :] & bits) != 0,
                "gtIgnore": np.concatenate([np.zeros(self.gt, int), np.ones(self.gt_ignored, int)])}


@dataclass
class ImageMatches:
    """Per-image COCOeval results (area 'all', maxDets 100, all IoU thresholds) of one model on one dataset:
    enough to recompute COCO mAP@[.50:.95] on any resample of the images."""

    image_ids: list[int]
    category_ids: list[int]
    iou_thresholds: list[float]
    entries: list[ImageEntry] = field(default_factory=list)

    def __post_init__(self) -> None:
        n_img, n_cat, n_thr = len(self.image_ids), len(self.category_ids), len(self.iou_thresholds)
        # Detections scoring below every true positive of their category (at any IoU threshold) come after the
        # last true positive in every resample, where they only lower a precision that the precision envelope
        # never looks at: leaving them out of accumulate changes no precision value, and saves most of its
        # per-detection Python loop (a detector keeps up to 100 low-score boxes per image), and in resampled_maps
        # most of the columns to add up.
        cutoff = [np.inf] * n_cat
        for e in self.entries:
            tp = (e.matched & ~e.ignored) != 0
            if tp.any():
                cutoff[e.category] = min(cutoff[e.category], float(e.scores[tp].min()))
        self._kept: list[ImageEntry] = []
        for e in self.entries:
            keep = int(np.count_nonzero(e.scores >= cutoff[e.category]))  # scores are sorted, highest first
            self._kept.append(ImageEntry(e.category, e.image, e.scores[:keep], e.matched[:keep], e.ignored[:keep], e.gt,
                                     e.gt_ignored))
        # evalImgs-style grid [category][image]; None where the image has neither ground truth nor detections
        self._grid: list[list[dict | None]] = [[None] * n_img for _ in range(n_cat)]
        for e in self._kept:
            self._grid[e.category][e.image] = e.as_eval_img(n_thr)
        self._ev: COCOeval | None = None
        self._all: float | None = None
        self._weighted: WeightedMaps | None = None  # ranked on first use: most evaluations only need map()

    # --- construction -------------------------------------------------------------------------------------------

    @classmethod
    def from_cocoeval(cls, ev: COCOeval) -> "ImageMatches":
        """From a COCOeval after `evaluate()` whose area ranges include 'all' and whose largest maxDets is 100."""
        p = ev.params
        if not ev.evalImgs or not p.useCats or p.maxDets[-1] != MAX_DETS or list(AREA_ALL) not in [
                list(a) for a in p.areaRng]:
            raise XpruneError("per-image matches need a bbox COCOeval evaluated with area 'all' and maxDets 100")
        n_img, a_all = len(p.imgIds), [list(a) for a in p.areaRng].index(list(AREA_ALL))
        n_area = len(p.areaRng)
        entries = []
        for k in range(len(p.catIds)):
            for i in range(n_img):
                e = ev.evalImgs[k * n_area * n_img + a_all * n_img + i]
                if e is None:
                    continue
                dtm, dtig = np.asarray(e["dtMatches"]) != 0, np.asarray(e["dtIgnore"]) != 0
                weights = 1 << np.arange(dtm.shape[0])
                gt_ig = np.asarray(e["gtIgnore"], int)
                entries.append(ImageEntry(k, i, np.asarray(e["dtScores"], float), weights @ dtm, weights @ dtig,
                                      int(np.count_nonzero(gt_ig == 0)), int(np.count_nonzero(gt_ig))))
        return cls([int(i) for i in p.imgIds], [int(c) for c in p.catIds], [float(t) for t in p.iouThrs], entries)

    # --- JSON ---------------------------------------------------------------------------------------------------

    def to_json(self) -> dict:
        """Columnar numpy arrays, each zlib-compressed and base64-encoded: a detector keeps up to 100 boxes per
        image, so a few hundred images are tens of thousands of detections, which as JSON lists (one number a
        line in an indented results file) would take megabytes. Scores are kept as float64: exact."""
        es = self.entries
        arrays: dict[str, np.ndarray] = {
            "image_ids": np.asarray(self.image_ids, np.int64),
            "entry_category": np.asarray([e.category for e in es], np.int32),
            "entry_image": np.asarray([e.image for e in es], np.int32),
            "entry_gt": np.asarray([e.gt for e in es], np.int32),
            "entry_gt_ignored": np.asarray([e.gt_ignored for e in es], np.int32),
            "entry_detections": np.asarray([len(e.scores) for e in es], np.int32),
            "scores": np.concatenate([e.scores for e in es] or [np.zeros(0)]).astype(np.float64),
            "matched": np.concatenate([e.matched for e in es] or [np.zeros(0)]).astype(np.uint32),
            "ignored": np.concatenate([e.ignored for e in es] or [np.zeros(0)]).astype(np.uint32)}
        return {"format": FORMAT, "category_ids": list(self.category_ids), "iou_thresholds": list(self.iou_thresholds),
                "max_dets": MAX_DETS, "images": len(self.image_ids), "encoding": "zlib+base64, little-endian",
                "arrays": {k: _pack(v) for k, v in arrays.items()}}

    @classmethod
    def from_json(cls, d: dict, where: str = "per-image matches") -> "ImageMatches":
        """Inverse of to_json; anything malformed is one XpruneError naming `where`."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise XpruneError(f"{where} is not a per-image evaluation (expected format '{FORMAT}')")
        try:
            category_ids = [int(c) for c in d["category_ids"]]
            thresholds = [float(t) for t in d["iou_thresholds"]]
            if int(d["max_dets"]) != MAX_DETS or not category_ids or not 0 < len(thresholds) <= 32:
                raise ValueError("empty or unsupported header")
            a = {k: _unpack(d["arrays"][k], dt) for k, dt in _DTYPES.items()}
            image_ids = [int(i) for i in a["image_ids"]]
            n_entries, n_dets = len(a["entry_category"]), len(a["scores"])
            if not image_ids or len(set(image_ids)) != len(image_ids):
                raise ValueError("no or repeated image ids")
            if any(len(a[k]) != n_entries for k in _DTYPES if k.startswith("entry_")) \
                    or len(a["matched"]) != n_dets or len(a["ignored"]) != n_dets \
                    or int(a["entry_detections"].sum()) != n_dets:
                raise ValueError("array lengths disagree")
            if n_entries and (a["entry_category"].min() < 0 or a["entry_category"].max() >= len(category_ids)
                              or a["entry_image"].min() < 0 or a["entry_image"].max() >= len(image_ids)
                              or min(a["entry_gt"].min(), a["entry_gt_ignored"].min(), a["entry_detections"].min()) < 0
                              or a["entry_detections"].max() > MAX_DETS):
                raise ValueError("entry out of range")
            if len(set(zip(a["entry_category"].tolist(), a["entry_image"].tolist()))) != n_entries:
                raise ValueError("repeated (category, image) entry")
            if not np.all(np.isfinite(a["scores"])):
                raise ValueError("non-finite scores")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise XpruneError(f"{where} is malformed: {e}") from None
        ends = np.cumsum(a["entry_detections"])
        starts = ends - a["entry_detections"]
        entries = [ImageEntry(int(k), int(i), a["scores"][s0:s1], a["matched"][s0:s1].astype(np.int64),
                          a["ignored"][s0:s1].astype(np.int64), int(g), int(gi))
                   for k, i, g, gi, s0, s1 in zip(a["entry_category"], a["entry_image"], a["entry_gt"],
                                                   a["entry_gt_ignored"], starts, ends)]
        return cls(image_ids, category_ids, thresholds, entries)

    # --- mAP ----------------------------------------------------------------------------------------------------

    def gt_counts(self) -> dict[tuple[int, int], tuple[int, int]]:
        """{(category id, image id): (gt, gt ignored)}: what identifies the ground truth the matches were made on."""
        return {(self.category_ids[e.category], self.image_ids[e.image]): (e.gt, e.gt_ignored)
                for e in self.entries if e.gt or e.gt_ignored}

    def subset(self, indices: Sequence[int]) -> "ImageMatches":
        """The evaluation restricted to the images at `indices` (distinct positions in image_ids): what
        `image_matches` would return on those images alone."""
        keep = sorted({int(i) for i in indices})
        if not keep or keep[0] < 0 or keep[-1] >= len(self.image_ids):
            raise XpruneError(f"subset indices must be positions in 0..{len(self.image_ids) - 1}")
        new = {old: pos for pos, old in enumerate(keep)}
        entries = [ImageEntry(e.category, new[e.image], e.scores, e.matched, e.ignored, e.gt, e.gt_ignored)
                   for e in self.entries if e.image in new]
        return ImageMatches([self.image_ids[i] for i in keep], list(self.category_ids), list(self.iou_thresholds),
                            entries)

    def map(self, indices: Sequence[int] | None = None) -> float:
        """mAP@[.50:.95] of the images at `indices` (positions in image_ids; repeats count twice); all if None.
        pycocotools' accumulate, one resample a call: the reference for `resampled_maps`."""
        if indices is None:
            if self._all is None:
                self._all = self._map(range(len(self.image_ids)))
            return self._all
        return self._map(indices)

    def resampled_maps(self, indices: np.ndarray) -> np.ndarray:
        """mAP@[.50:.95] of every row of `indices` (resamples x images, positions in image_ids; repeats count
        twice): what `map` gives row by row (up to ties, see `WeightedMaps.__call__`), much faster."""
        indices = np.asarray(indices)
        n_img = len(self.image_ids)
        if indices.ndim != 2 or not np.issubdtype(indices.dtype, np.integer):
            raise XpruneError("resampled_maps needs a 2-D integer array of image positions (resamples x images)")
        if indices.size and (indices.min() < 0 or indices.max() >= n_img):
            raise XpruneError(f"image positions must be in 0..{n_img - 1}")
        rows = len(indices)
        flat = (indices.astype(np.int64) + n_img * np.arange(rows, dtype=np.int64)[:, None]).ravel()
        if self._weighted is None:
            self._weighted = WeightedMaps(self._kept, n_img, len(self.category_ids), len(self.iou_thresholds))
        return self._weighted(np.bincount(flat, minlength=rows * n_img).reshape(rows, n_img))

    def _map(self, indices) -> float:
        idx = [int(i) for i in indices]
        if self._ev is None:  # one evaluator reused: accumulate reads params and evalImgs, changes neither
            self._ev = COCOeval(iouType="bbox")
            p = self._ev.params
            p.catIds, p.iouThrs = list(range(len(self.category_ids))), np.asarray(self.iou_thresholds)
            p.areaRng, p.areaRngLbl, p.maxDets = [list(AREA_ALL)], ["all"], [MAX_DETS]
            self._ev._paramsEval = p
        ev = self._ev
        # The resampled images become images 0..n-1; repeats are separate images, as a bootstrap wants.
        ev.params.imgIds = list(range(len(idx)))
        ev.evalImgs = [row[i] for row in self._grid for i in idx]
        if not any(e is not None for e in ev.evalImgs):
            return 0.0
        with contextlib.redirect_stdout(io.StringIO()):  # accumulate prints its progress
            ev.accumulate()
        precision = ev.eval["precision"][:, :, :, 0, 0]
        valid = precision[precision > -1]
        # summarize(): mean over present categories; -1 (no ground truth at all) reads as 0, as in coco_map
        return float(max(np.mean(valid), 0.0)) if valid.size else 0.0


_DTYPES = {"image_ids": "<i8", "entry_category": "<i4", "entry_image": "<i4", "entry_gt": "<i4",
           "entry_gt_ignored": "<i4", "entry_detections": "<i4", "scores": "<f8", "matched": "<u4", "ignored": "<u4"}


def _pack(a: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes(),
                                          6)).decode("ascii")


def _unpack(text: str, dtype: str) -> np.ndarray:
    try:
        raw = zlib.decompress(base64.b64decode(text.encode("ascii"), validate=True))
    except (binascii.Error, zlib.error, UnicodeEncodeError) as e:
        raise ValueError(f"undecodable array: {e}") from None
    if len(raw) % np.dtype(dtype).itemsize:
        raise ValueError("truncated array")
    return np.frombuffer(raw, dtype=dtype).copy()


def image_matches(coco_gt: COCO, results: list[dict], image_ids: list[int]) -> ImageMatches:
    """Run COCOeval.evaluate (bbox, area 'all', maxDets 100) on `image_ids` and keep the per-image matches."""
    if not image_ids:
        raise XpruneError("per-image matches need at least one image")
    with contextlib.redirect_stdout(io.StringIO()):
        dt = _load_results(coco_gt, results)
        ev = COCOeval(coco_gt, dt, "bbox")
        ev.params.imgIds = list(image_ids)
        ev.params.areaRng, ev.params.areaRngLbl, ev.params.maxDets = [list(AREA_ALL)], ["all"], [MAX_DETS]
        ev.evaluate()
    return ImageMatches.from_cocoeval(ev)


def _load_results(coco_gt: COCO, results: list[dict]) -> COCO:
    if results:
        try:
            return coco_gt.loadRes(results)
        except (AssertionError, KeyError, TypeError, IndexError) as e:
            raise XpruneError(f"detections do not fit the dataset (an unknown image id or a malformed result): "
                              f"{e or type(e).__name__}") from None
    # loadRes refuses an empty list; a model that finds nothing still has its ground truth to miss
    dt = COCO()
    dt.dataset = {"images": list(coco_gt.dataset.get("images", [])), "annotations": [],
                  "categories": copy.deepcopy(coco_gt.dataset.get("categories", []))}
    dt.createIndex()
    return dt


def check_same_dataset(base: ImageMatches, cand: ImageMatches, what: str = "baseline and candidate") -> None:
    """Refuse two evaluations that were not made on the same images, categories and ground truth."""
    if base.image_ids != cand.image_ids:
        only_b, only_c = set(base.image_ids) - set(cand.image_ids), set(cand.image_ids) - set(base.image_ids)
        raise XpruneError(f"{what} were evaluated on different images ({len(base.image_ids)} vs "
                          f"{len(cand.image_ids)}; {len(only_b)} only in the first, {len(only_c)} only in the "
                          f"second): compare mAP on the same dataset")
    if base.category_ids != cand.category_ids or base.iou_thresholds != cand.iou_thresholds:
        raise XpruneError(f"{what} were evaluated with different categories or IoU thresholds")
    if base.gt_counts() != cand.gt_counts():
        raise XpruneError(f"{what} were evaluated on the same image ids but different annotations")


__all__ = ["FORMAT", "ImageEntry", "ImageMatches", "check_same_dataset", "image_matches"]
