"""The study's measurement protocol, piece by piece: the interleaved order drawn per round from a seed, torch's
thread count kept across Ultralytics' exporter, bootstrap intervals of mAP and paired ΔmAP, the val split's object
sizes by COCO's rule, zero-score counts, what every row records, and the presets' defaults."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from xprune.bench.drift import measure_interleaved, round_order
from xprune.bench.latency import LatencyProtocol
from xprune.errors import XpruneError
from xprune.study.settings import DEMO_VAL_IMAGES, StudySettings

NO_WARMUP = LatencyProtocol(warmup_runs=0, warmup_s=0.0, runs=40, min_s=0.0)


# --- the interleaved order -----------------------------------------------------------------------------------------

def _orders(seed: int | None, names=("baseline", "baseline-copy", "l1-3", "attr-3"), protocol=NO_WARMUP):
    calls: list[str] = []

    def call(name: str) -> Callable[[], object]:
        return lambda: calls.append(name)

    fns = {n: call(n) for n in names}
    samples = measure_interleaved(fns, protocol, seed=seed)
    rounds = len(samples[names[0]])
    return [tuple(calls[i * len(names):(i + 1) * len(names)]) for i in range(rounds)]


def test_interleaved_order_is_drawn_per_round_and_reproducible_from_the_seed():
    names = ("baseline", "baseline-copy", "l1-3", "attr-3")
    orders = _orders(7, names)
    assert len(orders) == 40 and all(sorted(o) == sorted(names) for o in orders)
    assert len(set(orders)) > 10, "the order must change from round to round"
    right_after = sum(1 for o in orders if o.index("baseline-copy") == o.index("baseline") + 1)
    assert right_after < len(orders) // 2, "the A/A copy must not keep following the baseline"
    assert _orders(7, names) == orders, "the same seed gives the same orders"
    assert _orders(8, names) != orders
    # what the results record is what ran
    assert orders == [tuple(names[i] for i in round_order(len(names), r, 7)) for r in range(len(orders))]


def test_without_a_seed_the_order_rotates_as_before():
    orders = _orders(None, ("a", "b", "c"))
    assert orders[:4] == [("a", "b", "c"), ("b", "c", "a"), ("c", "a", "b"), ("a", "b", "c")]
    with pytest.raises(XpruneError, match="seed"):
        _orders(-1, ("a", "b"))


def test_bench_and_study_record_the_seed_and_every_rounds_order():
    from xprune.bench.run import BenchSettings, Target, bench
    from xprune.runtime.base import Runner
    from xprune.study.timing import timing_order

    class Echo(Runner):
        name = "echo"

        def infer_impl(self, x):
            return (x,)

    ids = ["baseline", "baseline-copy", "l1-3"]
    targets = [Target(Path(f"echo:{i}"), Echo(), {"source": f"echo:{i}", "model": "m", "variant_id": i,
                                                   "input_shape": [1, 3, 4, 4]}) for i in ids]
    doc = bench(targets, BenchSettings(protocol=LatencyProtocol(warmup_runs=0, warmup_s=0.0, runs=12, min_s=0.0),
                                       interleave=True, order_seed=3))
    assert doc["protocol"]["order_seed"] == 3
    assert doc["protocol"]["round_orders"] == [round_order(3, r, 3) for r in range(12)]
    order = timing_order(doc)
    assert order["seed"] == 3 and order["targets"] == ids and len(order["round_orders"]) == 12
    expected = sum(1 for o in order["round_orders"] if o.index(1) == o.index(0) + 1)
    assert order["copy_right_after_baseline"] == expected


# --- torch's thread count ------------------------------------------------------------------------------------------

def test_torch_threads_kept_puts_the_count_back_whatever_the_block_does():
    from xprune.study.threads import torch_threads_kept

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch_threads_kept() as n:
            assert n == 2
            torch.set_num_threads(1)
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), torch_threads_kept(3):
            assert torch.get_num_threads() == 3
            raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_peer_export_leaves_torch_threads_as_it_found_them(tmp_path):
    """Ultralytics' exporter calls select_device, which sets torch to Ultralytics' NUM_THREADS; the study's
    PyTorch timings after the peer export must still run on the study's count."""
    from ultralytics.utils import NUM_THREADS
    from ultralytics.utils.torch_utils import select_device

    from xprune.models import build_detector
    from xprune.study.peer import export_ultralytics

    before = torch.get_num_threads()
    mine = NUM_THREADS + 1  # any count Ultralytics would not choose
    try:
        torch.set_num_threads(mine)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            select_device("cpu", verbose=False)
        assert torch.get_num_threads() == NUM_THREADS, "the premise: Ultralytics changes torch's thread count"
        torch.set_num_threads(mine)
        det = build_detector("yolov8n", "none", num_classes=2, input_size=64)
        info = export_ultralytics(det, tmp_path / "peer.onnx")
        assert (tmp_path / "peer.onnx").is_file() and info["exporter"] == "ultralytics"
        assert torch.get_num_threads() == mine
    finally:
        torch.set_num_threads(before)


# --- bootstrap intervals -------------------------------------------------------------------------------------------

def _toy_matches(images: int = 24, miss: float = 0.0, seed: int = 0, clutter: int = 0, crowd: bool = False):
    """Per-image matches of made-up detections on made-up ground truth; `miss`: the share of objects not found,
    `clutter`: false detections per image, `crowd`: a crowd region on every third image, detected."""
    from xprune.evaluate.image_matches import image_matches

    rng = np.random.default_rng(seed)
    imgs: list[dict] = []
    anns: list[dict] = []
    res: list[dict] = []
    truth = np.random.default_rng(123)
    for i in range(1, images + 1):
        imgs.append({"id": i, "width": 100, "height": 100})
        for _ in range(3):
            x, y, w, h = (float(v) for v in (*truth.uniform(0, 60, 2), *truth.uniform(10, 40, 2)))
            c = int(truth.integers(1, 3))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
            if rng.uniform() >= miss:
                res.append({"image_id": i, "category_id": c, "score": float(rng.uniform(0.3, 1.0)),
                            "bbox": [x + float(rng.normal(0, 2)), y + float(rng.normal(0, 2)), w, h]})
        for _ in range(clutter):
            res.append({"image_id": i, "category_id": int(rng.integers(1, 3)), "score": float(rng.uniform(0, 0.8)),
                        "bbox": [float(v) for v in (*rng.uniform(0, 70, 2), *rng.uniform(5, 30, 2))]})
        if crowd and i % 3 == 0:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "bbox": [70, 70, 30, 30],
                         "area": 900.0, "iscrowd": 1})
            res.append({"image_id": i, "category_id": 1, "score": float(rng.uniform(0, 1)), "bbox": [71, 71, 28, 28]})
    gt = COCO()
    gt.dataset = {"images": imgs, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return image_matches(gt, res, [im["id"] for im in imgs])


def test_intervals_hold_the_estimate_and_pair_the_difference():
    from xprune.study.intervals import Intervals

    good, worse = _toy_matches(), _toy_matches(miss=0.5)
    iv = Intervals(resamples=200, seed=0)
    low, high = iv.map_interval(good)
    assert low <= good.map() <= high and high - low > 0
    d, dlow, dhigh = iv.delta_interval(good, worse)
    assert d == pytest.approx(worse.map() - good.map()) and dlow <= d <= dhigh < 0
    assert iv.delta_interval(good, good) == (0.0, 0.0, 0.0)  # the same model: nothing to tell apart
    again = Intervals(resamples=200, seed=0)
    assert again.map_interval(good) == (low, high), "seeded: the same interval every time"
    with pytest.raises(XpruneError, match="different images"):
        iv.delta_interval(good, _toy_matches(images=10))


def test_study_intervals_are_the_evaluate_bootstrap():
    """One bootstrap: the study's intervals are the numbers `xprune.evaluate.bootstrap` gives on the same seed."""
    from xprune.evaluate.bootstrap import delta_interval, map_interval
    from xprune.study.intervals import Intervals

    good, worse = _toy_matches(), _toy_matches(miss=0.5)
    iv = Intervals(resamples=150, confidence=0.9, seed=2)
    assert iv.map_interval(worse) == map_interval(worse, resamples=150, confidence=0.9, seed=2)
    assert iv.delta_interval(good, worse) == delta_interval(good, worse, resamples=150, confidence=0.9, seed=2)
    assert iv.describe() == {"method": "percentile bootstrap over val images, paired for ΔmAP", "resamples": 150,
                             "confidence": 0.9, "seed": 2}


def test_add_intervals_fills_every_variant_and_pairs_with_the_baseline_on_the_same_runtime():
    from xprune.study.intervals import Intervals, add_intervals
    from xprune.study.variants import Variant

    base = Variant("baseline", "baseline", (), None)
    pruned = Variant("l1-3", "l1", ("a", "b", "c"), None)
    base.matches = {"torch": _toy_matches(), "onnxruntime": _toy_matches(seed=1)}
    pruned.matches = {"torch": _toy_matches(miss=0.4), "onnxruntime": _toy_matches(miss=0.4, seed=1)}
    add_intervals("toy", [base, pruned], Intervals(resamples=100), lambda m: None)
    for prefix in ("", "onnx_"):
        assert base.info[f"{prefix}map_low"] <= base.info[f"{prefix}map_high"]
        assert f"{prefix}dmap" not in base.info
        assert pruned.info[f"{prefix}dmap_low"] <= pruned.info[f"{prefix}dmap"] <= pruned.info[f"{prefix}dmap_high"]
    runtime = "onnxruntime"
    assert pruned.info["onnx_dmap"] == pytest.approx(pruned.matches[runtime].map() - base.matches[runtime].map())


# --- what a row records --------------------------------------------------------------------------------------------

def _timed(ms: float, threads: int, backend: str) -> dict:
    return {"device": "cpu", "precision": "fp32", "median_ms": ms, "p90_ms": ms, "fps": 1000 / ms, "n": 3,
            "samples_ms": [ms] * 3, "threads": None,
            "backend": {"backend": backend, "version": "x", "device": "cpu", "precision": "fp32", "threads": threads}}


def test_rows_take_mAP_and_intervals_from_the_runtime_they_were_measured_on():
    from xprune.study.rows import model_rows
    from xprune.study.variants import Variant

    common = {"params": 10, "macs": 20, "effective_macs": 15}
    base = Variant("baseline", "baseline", (), None, [("baseline", 0.0)],
                   info={**common, "map": 0.5, "map_low": 0.4, "map_high": 0.6, "val_images": 300,
                         "onnx_map": 0.51, "onnx_map_low": 0.41, "onnx_map_high": 0.61, "onnx_val_images": 300})
    v = Variant("l1-3", "l1", ("a",), None, [("l1", 0.05)],
                info={**common, "map": 0.3, "dmap": -0.2, "dmap_low": -0.25, "dmap_high": -0.15,
                      "onnx_map": 0.31, "onnx_dmap": -0.2, "onnx_dmap_low": -0.26, "onnx_dmap_high": -0.14})
    timings = {"torch": {"baseline": _timed(10, 2, "torch"), "l1-3": _timed(9, 2, "torch")},
               "onnxruntime": {"baseline": _timed(5, 2, "onnxruntime"), "l1-3": _timed(4, 2, "onnxruntime")}}
    rows = model_rows("m", True, [base, v], timings, StudySettings(out=Path("x")),
                      {"torch": {"seed": 4}, "onnxruntime": {"seed": 4}})
    by = {(r["backend"], r["method"]): r for r in rows}
    assert by[("torch", "l1")]["map"] == 0.3 and by[("torch", "l1")]["dmap_low"] == -0.25
    ort = by[("onnxruntime", "l1")]
    assert ort["map_source"] == "onnxruntime" and ort["map"] == 0.31 and ort["dmap_low"] == -0.26
    assert by[("onnxruntime", "baseline")]["map_low"] == 0.41 and by[("onnxruntime", "baseline")]["dmap"] is None
    for r in rows:
        assert r["threads"] == 2 and r["runtime"]["backend"] == r["backend"] and r["order_seed"] == 4


# --- the dataset's object sizes ------------------------------------------------------------------------------------

def _coco(sides: list[float], images: int = 2, size: int = 320) -> dict:
    anns = [{"id": i + 1, "image_id": 1 + i % images, "category_id": 1, "bbox": [0, 0, s, s], "area": s * s,
             "iscrowd": 0} for i, s in enumerate(sides)]
    return {"images": [{"id": i + 1, "width": size, "height": size, "file_name": f"{i}.jpg"} for i in range(images)],
            "annotations": anns, "categories": [{"id": 1, "name": "a"}]}


def test_size_stats_follow_cocos_area_rule():
    from xprune.study.dataset import size_stats

    coco = _coco([31, 32, 95, 96, 288])
    s = size_stats(coco["annotations"], coco["images"])
    assert s["fractions"] == {"small": 0.2, "medium": 0.4, "large": 0.4}
    assert s["coco_fractions"] == {"small": 0.41, "medium": 0.34, "large": 0.24}
    assert sum(s["histogram"]["counts"]) == s["objects"] == 5
    assert s["objects_per_image"] == 2.5 and s["max_box_side"] == pytest.approx(0.9)
    assert size_stats([], [])["objects"] == 0


def test_dataset_size_stats_prefer_the_generators_record(tmp_path):
    from xprune.study.dataset import dataset_size_stats

    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val.json").write_text(json.dumps(_coco([10, 50, 100, 200], images=4)))
    computed = dataset_size_stats(tmp_path)
    assert computed["source"] == "annotations/instances_val.json" and computed["objects"] == 4
    assert computed["fractions"]["small"] == 0.25
    assert dataset_size_stats(tmp_path, limit=2)["objects"] == 2  # the images a study evaluates
    recorded = {"fractions": {"small": 0.4, "medium": 0.35, "large": 0.25}, "objects": 9}
    (tmp_path / "synth.json").write_text(json.dumps({"generator": "x", "size_stats": recorded}))
    assert dataset_size_stats(tmp_path) == {**recorded, "source": "synth.json", "split": "val"}


def test_malformed_annotations_are_one_error(tmp_path):
    from xprune.study.dataset import dataset_size_stats

    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val.json").write_text("{")
    with pytest.raises(XpruneError, match="not a readable COCO"):
        dataset_size_stats(tmp_path)
    with pytest.raises(XpruneError, match="not found"):
        dataset_size_stats(tmp_path / "missing")


def test_zero_scores_are_counted_per_criterion():
    from xprune.study.stats import zero_scores

    ls = {"layers": ["a", "b", "c", "d"], "candidate": [True, True, True, False],
          "criteria": {"attr": {"scores": [0.0, 0.0, 0.5, 0.0], "bottom": ["a", "b"], "bottom_rate": 0.05},
                       "l1": {"scores": [1.0, 2.0, 3.0, 4.0], "bottom": ["a"], "bottom_rate": 0.05}}}
    z = zero_scores(ls)
    assert z["attr"] == {"layers": 3, "candidates": 2, "candidate_total": 3, "bottom": 2, "bottom_size": 2,
                         "bottom_rate": 0.05}
    assert z["l1"]["candidates"] == 0 and z["l1"]["bottom"] == 0


# --- presets and options -------------------------------------------------------------------------------------------

def test_onnx_runtime_map_is_on_by_default_and_the_paper_uses_every_val_image(tmp_path):
    assert StudySettings(out=tmp_path).onnx_map is True
    paper = StudySettings.paper(tmp_path)
    assert paper.onnx_map is True and paper.val_images is None and paper.val_cap_reason is None


def test_demo_caps_its_val_images_and_says_why(tmp_path):
    demo = StudySettings.demo(tmp_path, val_images=None)
    assert demo.val_images == DEMO_VAL_IMAGES and "demo" in demo.val_cap_reason
    assert demo.onnx_map is True and demo.peer is False
    given = StudySettings.demo(tmp_path, val_images=40)
    assert given.val_images == 40 and given.val_cap_reason is None


def test_protocol_settings_are_checked(tmp_path):
    with pytest.raises(XpruneError, match="order seed"):
        StudySettings(out=tmp_path, order_seed=-1).validate()
    with pytest.raises(XpruneError, match="bootstrap_resamples"):
        StudySettings(out=tmp_path, bootstrap_resamples=10).validate()
    with pytest.raises(XpruneError, match="val_images"):
        StudySettings(out=tmp_path, val_images=0).validate()


def test_options_turn_onnx_map_off_and_set_the_protocol():
    from xprune.study.options import add_study_arguments, settings_from_args

    ap = argparse.ArgumentParser()
    add_study_arguments(ap, "out", None)

    def settings(*argv):
        args = ap.parse_args(["--models", "yolov8n", *argv])
        args.command = "test"
        return settings_from_args(args, log=lambda m: None)

    assert settings().onnx_map is True
    s = settings("--no-onnx-map", "--resamples", "500", "--order-seed", "9")
    assert s.onnx_map is False and s.bootstrap_resamples == 500 and s.order_seed == 9
