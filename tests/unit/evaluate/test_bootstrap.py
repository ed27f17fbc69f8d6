"""mAP from per-image matches: exactly pycocotools' number on all images and on any resample (checked against
COCOeval run on a dataset made of the resampled images); the vectorized resampled mAPs equal to it; and bootstrap
intervals that behave."""

import contextlib
import copy
import dataclasses
import io
import json
import types

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from xprune.data.coco import CocoDetectionSet
from xprune.errors import XpruneError
from xprune.evaluate.bootstrap import (ImageBootstrap, delta_interval, map_interval, percentile_interval,
                                       resample_indices)
from xprune.evaluate.image_matches import ImageMatches, image_matches
from xprune.evaluate.coco_map import coco_map, evaluate_predictions


def _coco(images, anns, cats) -> COCO:
    gt = COCO()
    with contextlib.redirect_stdout(io.StringIO()):
        gt.dataset = {"images": images, "annotations": anns, "categories": cats}
        gt.createIndex()
    return gt


def _world(n_img=40, n_cat=4, fp_per_img=12, seed=0, ties=True):
    """Ground truth with a crowd box per few images and a category that never occurs, and detections: jittered
    ground truth (some missed) plus random false positives, with tied scores (two decimals) unless not `ties`."""
    rng = np.random.default_rng(seed)

    def score(low, high):
        s = float(rng.uniform(low, high))
        return round(s, 2) if ties else s

    images = [{"id": 100 + 3 * i, "width": 320, "height": 320, "file_name": f"{i}.jpg"} for i in range(n_img)]
    cats = [{"id": 10 + c, "name": f"c{c}"} for c in range(n_cat + 1)]  # the last category has no boxes
    anns, results = [], []
    for im in images:
        for j in range(int(rng.integers(1, 6))):
            x, y = rng.uniform(0, 240, 2)
            w, h = rng.uniform(8, 80, 2)
            crowd = int(j == 0 and rng.random() < 0.2)
            cat = 10 + int(rng.integers(0, n_cat))
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": crowd})
            if rng.random() < 0.85:
                results.append({"image_id": im["id"], "category_id": cat, "score": score(0.2, 1),
                                "bbox": [x + rng.normal(0, 3), y + rng.normal(0, 3), w * rng.uniform(0.8, 1.2), h]})
        for _ in range(fp_per_img):
            x, y = rng.uniform(0, 240, 2)
            w, h = rng.uniform(8, 80, 2)
            results.append({"image_id": im["id"], "category_id": 10 + int(rng.integers(0, n_cat)),
                            "score": score(0.001, 0.6), "bbox": [x, y, w, h]})
    return _coco(images, anns, cats), results, [im["id"] for im in images]


def _coco_map(gt, results, ids):
    return coco_map(types.SimpleNamespace(coco=gt), results, ids)["map"]


def _resampled_world(gt, results, ids, idx):
    """The images at `idx` as a dataset of their own: repeats become copies with new ids, in idx order."""
    images, anns, res = [], [], []
    for new, i in enumerate(idx, start=1):
        old = ids[i]
        images.append({**gt.imgs[old], "id": new})
        anns += [{**a, "id": len(anns) + k + 1, "image_id": new} for k, a in enumerate(gt.imgToAnns[old])]
        res += [{**r, "image_id": new} for r in results if r["image_id"] == old]
    return _coco(images, anns, copy.deepcopy(gt.dataset["categories"])), res, list(range(1, len(idx) + 1))


def test_all_images_equal_coco_map_exactly():
    for seed in range(3):
        gt, results, ids = _world(seed=seed)
        m = image_matches(gt, results, ids)
        assert m.map() == _coco_map(gt, results, ids)
        assert m.image_ids == sorted(ids) and m.category_ids == [10, 11, 12, 13, 14]
    # no detections at all: 0, as coco_map says
    assert image_matches(gt, [], ids).map() == _coco_map(gt, [], ids) == 0.0


def test_resamples_equal_coco_map_on_the_resampled_images():
    gt, results, ids = _world(n_img=25, seed=4)
    m = image_matches(gt, results, ids)
    rng = np.random.default_rng(0)
    for _ in range(4):
        idx = rng.integers(0, len(ids), len(ids))  # with repeats
        rgt, rres, rids = _resampled_world(gt, results, ids, idx)
        assert m.map(idx) == pytest.approx(_coco_map(rgt, rres, rids), abs=1e-12)
    assert m.map(range(len(ids))) == m.map()
    sub = m.subset([7, 2, 11, 2])  # the same as evaluating those images alone
    assert sub.image_ids == [ids[2], ids[7], ids[11]]
    assert sub.map() == _coco_map(gt, [r for r in results if r["image_id"] in sub.image_ids], sub.image_ids)
    with pytest.raises(XpruneError):
        m.subset([len(ids)])
    assert m.map([3, 3, 3]) == pytest.approx(_coco_map(*_resampled_world(gt, results, ids, [3, 3, 3])), abs=1e-12)


def _all_images(m):
    return float(m.resampled_maps(np.arange(len(m.image_ids))[None])[0])


def test_vectorized_map_on_all_images_equals_coco_map():
    for seed, ties in [(0, True), (1, True), (2, False)]:
        gt, results, ids = _world(seed=seed, ties=ties)
        m = image_matches(gt, results, ids)
        assert _all_images(m) == pytest.approx(_coco_map(gt, results, ids), abs=1e-12)
    # more than 100 boxes of a category on an image: pycocotools keeps the 100 best
    gt, results, ids = _world(n_img=12, n_cat=1, fp_per_img=130, seed=3, ties=False)
    m = image_matches(gt, results, ids)
    assert _all_images(m) == pytest.approx(_coco_map(gt, results, ids), abs=1e-12)
    assert image_matches(gt, [], ids).resampled_maps(np.arange(len(ids))[None]).tolist() == [0.0]


def test_vectorized_resamples_equal_pycocotools_accumulate():
    """Without tied scores, every resample (with repeats, missing categories, crowd boxes) is pycocotools'
    number, and so is the interval built from them."""
    for seed, n_cat, fp in [(10, 4, 12), (11, 2, 40), (12, 1, 130)]:
        gt, results, ids = _world(n_img=30, n_cat=n_cat, fp_per_img=fp, seed=seed, ties=False)
        m = image_matches(gt, results, ids)
        rng = np.random.default_rng(seed)
        for idx in [rng.integers(0, len(ids), (6, len(ids))),  # with repeats
                    rng.integers(0, len(ids), (4, 3)),         # a few images: some categories absent
                    np.full((1, 5), 7), np.arange(len(ids))[None]]:
            assert m.resampled_maps(idx) == pytest.approx([m.map(i) for i in idx], abs=1e-12)
    # the percentile bootstrap over seeded resamples of the images; paired for a difference
    gt, results, ids = _world(n_img=30, seed=13, ties=False)
    base = image_matches(gt, results, ids)
    cand = image_matches(gt, [r for r in results if r["score"] > 0.3], ids)
    idx = np.random.default_rng(5).integers(0, len(ids), (60, len(ids)))
    b, c = np.array([base.map(i) for i in idx]), np.array([cand.map(i) for i in idx])
    assert map_interval(base, resamples=60, confidence=0.9, seed=5) == pytest.approx(
        np.percentile(b, [5, 95]), abs=1e-12)
    assert delta_interval(base, cand, resamples=60, confidence=0.9, seed=5) == pytest.approx(
        (cand.map() - base.map(), *np.percentile(c - b, [5, 95])), abs=1e-12)


def test_tied_scores_keep_their_order_on_all_images():
    """Two images, one box each, detected at the same score: a hit on the first, a miss on the second.
    pycocotools ranks the tie by where the images fall in the resample; the vectorized mAP keeps the order of
    all images, whatever the resample's order."""
    images = [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.jpg"} for i in (1, 2)]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 50, 50], "area": 2500, "iscrowd": 0}
            for i in (1, 2)]
    gt = _coco(images, anns, [{"id": 1, "name": "a"}])
    results = [{"image_id": 1, "category_id": 1, "score": 0.5, "bbox": [10, 10, 50, 50]},
               {"image_id": 2, "category_id": 1, "score": 0.5, "bbox": [70, 70, 20, 20]}]
    m = image_matches(gt, results, [1, 2])
    assert m.map([0, 1]) != m.map([1, 0])  # hit then miss (precision 1 at recall 1/2) vs miss then hit (1/2)
    assert m.resampled_maps(np.array([[0, 1], [1, 0]])) == pytest.approx([m.map([0, 1])] * 2, abs=1e-12)


def test_resampled_maps_refuses_bad_input():
    gt, results, ids = _world(n_img=5, seed=14)
    m = image_matches(gt, results, ids)
    for bad in [np.array([[0, 5]]), np.array([[-1, 0]]), np.array([0, 1]), np.array([[0.0, 1.0]])]:
        with pytest.raises(XpruneError, match="image positions"):
            m.resampled_maps(bad)
    no_gt = ImageMatches(m.image_ids, m.category_ids, m.iou_thresholds,
                         [dataclasses.replace(e, gt=0) for e in m.entries])  # true positives matched to nothing
    with pytest.raises(XpruneError, match="more true positives than ground truth"):
        no_gt.resampled_maps(np.zeros((1, 5), int))


def test_per_image_matches_through_evaluate_predictions(synth_data):
    ds = CocoDetectionSet.from_folder(synth_data, "val", 64)
    calls = {"n": 0}

    def predict(x):  # ground truth shifted by a pixel, every third box missed, tied scores
        out = []
        for _ in range(x.shape[0]):
            s = ds.sample(calls["n"])
            calls["n"] += 1
            keep = torch.arange(len(s["labels"])) % 3 != 2
            out.append({"boxes": s["boxes"][keep] + 1.0, "scores": torch.full((int(keep.sum()),), 0.5),
                        "labels": s["labels"][keep]})
        return out

    got = evaluate_predictions(predict, ds, batch_size=3, per_image=True)
    assert isinstance(got["matches"], ImageMatches) and 0 < got["map"] < 1
    assert got["matches"].map() == got["map"]
    # every score tied: on all images the vectorized order is still pycocotools' own
    assert _all_images(got["matches"]) == pytest.approx(got["map"], abs=1e-12)
    assert got["matches"].image_ids == ds.image_ids
    calls["n"] = 0
    plain = evaluate_predictions(predict, ds, batch_size=3)
    assert "matches" not in plain and plain["map"] == got["map"]


def test_json_round_trip_and_malformed_input():
    gt, results, ids = _world(seed=5)
    m = image_matches(gt, results, ids)
    back = ImageMatches.from_json(json.loads(json.dumps(m.to_json())))
    idx = np.random.default_rng(1).integers(0, len(ids), len(ids))
    assert back.map() == m.map() and back.map(idx) == m.map(idx)
    assert np.array_equal(back.resampled_maps(idx[None]), m.resampled_maps(idx[None]))
    assert back.gt_counts() == m.gt_counts()
    d = m.to_json()
    assert len(json.dumps(d, indent=2)) < 40 * len(results)  # compact even in an indented results file
    arrays = d["arrays"]
    for bad in [None, {**d, "format": "x"}, {k: v for k, v in d.items() if k != "arrays"},
                {**d, "max_dets": 10},
                {**d, "arrays": {**arrays, "scores": "not base64!"}},
                {**d, "arrays": {**arrays, "scores": arrays["image_ids"]}},          # lengths disagree
                {**d, "arrays": {**arrays, "image_ids": arrays["entry_category"]}},  # repeated image ids
                {**d, "arrays": {**arrays, "entry_image": arrays["entry_category"]}},  # repeated entries
                {**d, "category_ids": d["category_ids"][:1]}]:                    # category index out of range
        with pytest.raises(XpruneError, match="per-image"):
            ImageMatches.from_json(bad)


def test_interval_contains_the_estimate_and_is_reproducible():
    gt, results, ids = _world(n_img=30, seed=6)
    m = image_matches(gt, results, ids)
    lo, hi = map_interval(m, resamples=200, seed=3)
    assert lo < m.map() < hi and hi - lo < 0.5
    assert map_interval(m, resamples=200, seed=3) == (lo, hi)
    lo90, hi90 = map_interval(m, resamples=200, confidence=0.5, seed=3)
    assert lo <= lo90 and hi90 <= hi
    with pytest.raises(XpruneError, match="at least 2 images"):
        map_interval(image_matches(gt, results, ids[:1]))


def test_one_bootstrap_serves_many_intervals_with_the_same_numbers():
    """ImageBootstrap draws its resamples once and scores each evaluation once; its intervals are the one-off
    functions' to the last bit, whatever order they are asked in."""
    gt, results, ids = _world(n_img=30, seed=10)
    base, cand = image_matches(gt, results, ids), image_matches(gt, results[::2], ids)
    boot = ImageBootstrap(resamples=150, confidence=0.9, seed=4)
    assert boot.delta_interval(base, cand) == delta_interval(base, cand, resamples=150, confidence=0.9, seed=4)
    assert boot.map_interval(cand) == map_interval(cand, resamples=150, confidence=0.9, seed=4)
    assert boot.map_interval(base) == percentile_interval(base.resampled_maps(resample_indices(30, 150, 4)), 0.9)
    assert boot.indices(30) is boot.indices(30) and boot.resampled(base) is boot.resampled(base)
    for bad in [dict(resamples=0), dict(resamples=10.0), dict(confidence=1.0), dict(confidence=0)]:
        with pytest.raises(XpruneError, match="resamples|confidence"):
            ImageBootstrap(**bad)


def test_identical_models_have_a_zero_delta_with_a_degenerate_interval():
    gt, results, ids = _world(seed=7)
    a, b = image_matches(gt, results, ids), image_matches(gt, list(results), ids)
    assert delta_interval(a, b, resamples=100) == (0.0, 0.0, 0.0)


def test_removing_detections_gives_a_negative_delta_that_excludes_zero():
    gt, results, ids = _world(n_img=40, seed=8)
    rng = np.random.default_rng(0)
    worse = [r for r in results if r["score"] < 0.2 or rng.random() < 0.6]  # 40 % of the confident boxes gone
    base, cand = image_matches(gt, results, ids), image_matches(gt, worse, ids)
    delta, lo, hi = delta_interval(base, cand, resamples=300)
    assert delta == pytest.approx(cand.map() - base.map()) and delta < -0.05
    assert lo <= delta <= hi < 0
    # the reverse comparison is the mirror image
    d2, lo2, hi2 = delta_interval(cand, base, resamples=300)
    assert d2 == pytest.approx(-delta) and lo2 > 0


def test_different_datasets_are_refused():
    gt, results, ids = _world(seed=9)
    a = image_matches(gt, results, ids)
    fewer = image_matches(gt, [r for r in results if r["image_id"] != ids[-1]], ids[:-1])
    with pytest.raises(XpruneError, match="different images"):
        delta_interval(a, fewer)
    # same image ids, other annotations: not the same dataset either
    anns = [a_ for a_ in gt.dataset["annotations"] if a_["image_id"] != ids[0]]
    other = _coco(gt.dataset["images"], anns, gt.dataset["categories"])
    with pytest.raises(XpruneError, match="different annotations"):
        delta_interval(a, image_matches(other, results, ids))
    with pytest.raises(XpruneError, match="do not fit the dataset"):
        image_matches(gt, [{**results[0], "image_id": 999999}], ids)
