"""COCO mAP@[.50:.95] of many resamples of the images at once, vectorized: what a bootstrap interval needs.

`ImageMatches.map` (pycocotools' own `accumulate` on the resampled images) takes 7-30 ms of CPU a resample
(300 images); an interval takes 1000 resamples, and a study ~70 intervals. `WeightedMaps` re-implements the part
of `accumulate` and `summarize` that mAP@[.50:.95] reads, vectorized over resamples. A resample only changes
how many times each image counts, so each category's detections are sorted once and a resample's cumulative
true/false positives are sums weighted by those counts: 40-130x faster. The tests check it equal to `map` on all
images, and on resamples with repeated images where no two detections tie on score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
from pycocotools.cocoeval import Params
from scipy import sparse

from xprune.errors import XpruneError

if TYPE_CHECKING:  # image_matches builds WeightedMaps from its entries
    from xprune.evaluate.image_matches import ImageEntry

REC_THRS = Params(iouType="bbox").recThrs  # pycocotools' 101 recall thresholds, the very same floats
EPS = np.spacing(1)  # pycocotools' guard in precision = tp / (tp + fp + eps)
CHUNK = 1 << 21  # resamples x (columns or images) handled at once: 16 MB a matrix


@dataclass
class _Ranked:
    """One category's detections on all images, in the order accumulate puts them, reduced to what a resample's
    precision at its true positives needs. The columns are the detections that are a true positive at some IoU
    threshold, in that order."""

    gt: np.ndarray                   # (images,) ground-truth boxes that count, per image
    image: np.ndarray                # (C,) image of each column
    ahead: sparse.csr_matrix         # (C, images) detections from after the previous column to this one, per image
    true: list[np.ndarray]           # per IoU threshold: the columns that are true positives there
    ignored_image: list[np.ndarray]  # per IoU threshold: image of each ignored detection, in order
    ignored_ahead: list[np.ndarray]  # per IoU threshold and true column: ignored detections before it


class WeightedMaps:
    """mAP@[.50:.95] of one evaluation with its images weighted, from its per-image entries (area 'all', at most
    100 detections each, highest score first), ranked once per category when built."""

    def __init__(self, entries: Sequence[ImageEntry], images: int, categories: int, thresholds: int):
        self.thresholds = thresholds
        bits = (1 << np.arange(thresholds, dtype=np.int64))[:, None]
        by_cat: list[list[ImageEntry]] = [[] for _ in range(categories)]
        for e in sorted(entries, key=lambda e: (e.category, e.image)):
            by_cat[e.category].append(e)
        self.ranked: list[_Ranked] = []
        for es in by_cat:
            gt = np.zeros(images, np.int64)
            for e in es:
                gt[e.image] = e.gt
            # as accumulate on all images: per-image detections (highest first) concatenated in image order, then
            # a stable sort on score
            scores = np.concatenate([e.scores for e in es] + [np.zeros(0)])
            order = np.argsort(-scores, kind="mergesort")
            image = np.concatenate([np.full(len(e.scores), e.image, np.int64) for e in es]
                                   + [np.zeros(0, np.int64)])[order]
            matched = np.concatenate([e.matched for e in es] + [np.zeros(0, np.int64)]).astype(np.int64)[order]
            ignored = np.concatenate([e.ignored for e in es] + [np.zeros(0, np.int64)]).astype(np.int64)[order]
            ig = (ignored[None, :] & bits) != 0  # (thresholds, detections)
            true = ((matched[None, :] & bits) != 0) & ~ig
            if any((np.bincount(image[r], minlength=images) > gt).any() for r in true):
                raise XpruneError("per-image matches are malformed: more true positives than ground truth")
            pos = np.flatnonzero(true.any(axis=0))  # the columns
            segment = np.searchsorted(pos, np.arange(len(image)))  # the column each detection counts towards
            keep = segment < len(pos)  # those after the last column never count
            ahead = sparse.csr_matrix((np.ones(int(keep.sum()), np.int64), (segment[keep], image[keep])),
                                      shape=(len(pos), images))
            self.ranked.append(_Ranked(
                gt, image[pos], ahead, [np.searchsorted(pos, np.flatnonzero(r)) for r in true],
                [image[np.flatnonzero(r)] for r in ig],
                [np.searchsorted(np.flatnonzero(i), np.flatnonzero(r)) for r, i in zip(true, ig)]))

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        """mAP@[.50:.95] per row of `counts` (resamples x images: how many times each image is drawn), as
        accumulate + summarize compute it on the resampled images.

        Only a true positive can be where a recall threshold above 0 is first reached (a false or ignored
        detection repeats the recall before it), and the precision envelope there is the largest precision at a
        true positive at or after it (precision only drops from a true positive to the detections that follow
        it); recall 0 is reached at the first detection, where the envelope is the largest precision of all,
        also at a true positive. So per IoU threshold only the true positives are kept, each with the weighted
        counts of true positives and of counted (not ignored) detections up to it: tp / npig and
        tp / (tp + fp + eps) are then pycocotools' own floats (the counts are integers, exact in float64).

        Ties: accumulate sorts a category's detections with a stable sort of their concatenation in resample
        order, so when two distinct detections have exactly the same score it orders them by where their images
        fall in the resample, and interleaves the copies of a repeated image. Here they keep the order they have
        on all images, with the copies of a detection side by side: within such a tie group the precision/recall
        points, hence the mAP of a resample, can differ from `map`'s (never on all images, where the orders are
        the same). Neither order is more right: pycocotools' depends on the order the resample lists its images.
        """
        n_thr, n_rec = self.thresholds, len(REC_THRS)
        total = np.zeros(len(counts))  # sum of the interpolated precisions, over IoU and recall thresholds
        cells = np.zeros(len(counts))  # how many of them count: summarize's precision > -1
        for c in self.ranked:
            npig = counts @ c.gt  # ground truth that counts, per resample
            present = np.flatnonzero(npig > 0)  # no ground truth: accumulate's -1, left out of the mean
            cells[present] += n_thr * n_rec
            if not present.size or not c.image.size:
                continue  # no true positive: precision 0 at every recall threshold
            step = max(1, CHUNK // max(len(c.image), len(c.gt)))
            for start in range(0, present.size, step):
                rows = present[start:start + step]
                # images x resamples: the sums below then run over contiguous rows
                w = np.ascontiguousarray(counts[rows].T)
                seen_all = np.cumsum(c.ahead @ w, axis=0)  # detections up to each column, per resample
                hit = w[c.image]  # how many times each column's detection is drawn
                reached = _reached_table(npig[rows])
                for t in range(n_thr):
                    cols = c.true[t]
                    if not cols.size:
                        continue
                    tp = np.cumsum(hit[cols], axis=0)
                    seen = seen_all[cols]  # tp + fp, once the ignored detections are taken off
                    if c.ignored_image[t].size:
                        ignored = np.cumsum(np.pad(w[c.ignored_image[t]], ((1, 0), (0, 0))), axis=0)
                        seen = seen - ignored[c.ignored_ahead[t]]
                    pr = tp / (seen + EPS)
                    envelope = np.maximum.accumulate(pr[::-1], axis=0)[::-1]
                    # accumulate reads the envelope at searchsorted(rc, REC_THRS, side='left'): the first
                    # column whose recall reaches the threshold. Column j is that first one for the thresholds
                    # counted by reached[j] - reached[j - 1]; thresholds no column reaches read precision 0.
                    first = np.diff(reached(tp), axis=0, prepend=0)
                    total[rows] += np.einsum("ji,ji->i", envelope, first)
        # summarize(): the mean over the cells that count; none at all reads as 0, as in coco_map
        return np.where(cells > 0, total / np.maximum(cells, 1), 0.0)


def _reached_table(npig: np.ndarray):
    """For resamples with `npig` ground-truth boxes each (> 0): a function from true-positive counts (integers,
    columns x resamples) to how many recall thresholds their recall tp / npig reaches, i.e.
    `np.searchsorted(REC_THRS, tp / npig, side='right')` on pycocotools' own recall floats. tp is a whole number
    from 0 to npig, so this is a table per distinct npig, shared by all IoU thresholds and read by index."""
    values, which = np.unique(npig, return_inverse=True)
    sizes = values.astype(np.int64) + 1
    starts = np.cumsum(sizes) - sizes
    tp = np.arange(int(sizes.sum())) - np.repeat(starts, sizes)
    table = np.searchsorted(REC_THRS, tp / np.repeat(values, sizes), side="right")
    start = starts[which.ravel()]
    # a true positive has a ground-truth box of its own (checked when ranking), so tp <= npig
    return lambda tp_counts: table[start + tp_counts]
