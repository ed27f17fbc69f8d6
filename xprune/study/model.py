"""One model through the study, in two parts: `measure_model` (scores, plans, variants, their mAP and exports,
intervals, which output levels detect: everything but latency) and `finish_model` (every backend's interleaved
timing with the peers, then the rows and the model's study.json entry). `run_model` is the two in one process; a Ray
Tune trial runs the first on any node, and the timing always runs in the driver, one model after another
(`xprune.study.tune`)."""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from xprune.bench.latency import LatencyProtocol
from xprune.errors import XpruneError
from xprune.models.detector import Detector
from xprune.study.intervals import Intervals, add_intervals
from xprune.study.measure import measure_variants
from xprune.study.rows import model_rows
from xprune.study.settings import FRAMEWORK, MIN_VAL_IMAGES, Log, StudySettings
from xprune.study.stats import agreement, zero_scores
from xprune.study.timing import aa_control, time_backend, timing_order
from xprune.study.variants import Variant, distinct_variants, plan_brief, rank_layers


def load_model(name: str, data: Path, settings: StudySettings) -> tuple[Detector, dict]:
    """The detector and what the study records about its weights."""
    from xprune.data.coco import calibration_set
    from xprune.models import build_detector, file_sha256, load_checkpoint
    from xprune.reference import reference_models

    if name in settings.weights:
        path = Path(settings.weights[name])
        det = load_checkpoint(path, name)
        return det, {"source": "checkpoint", "path": str(path), "sha256": file_sha256(path), "accuracy": True}
    refs = reference_models() if settings.use_reference else {}
    if name in refs:
        ref = refs[name]
        det = load_checkpoint(ref["path"], name, ref["input_size"])
        return det, {"source": "reference", "path": Path(ref["path"]).name, "sha256": file_sha256(ref["path"]),
                     "accuracy": True, "reference_val_map": ref.get("val_map"),
                     "reference_val_map50": ref.get("val_map50"), "reference_val_images": ref.get("val_images"),
                     "trained": {k: ref.get(k) for k in ("epochs", "train_seconds", "dataset")}}
    classes = calibration_set(data, settings.speed_input_size, 1).num_classes
    det = build_detector(name, "none", num_classes=classes, input_size=settings.speed_input_size)
    return det, {"source": "random-init", "path": None, "sha256": None, "accuracy": False}


def time_variants(name: str, det: Detector, variants: list[Variant], val, data: Path, work: Path, backends: dict,
                  protocol: LatencyProtocol, settings: StudySettings, command: str, log: Log,
                  intervals: Intervals | None = None) -> tuple[dict, dict, dict, dict, dict]:
    """Every available backend in turn, each an interleaved run written to OUT/bench/<model>-<backend>.json; for a
    YOLO model, Ultralytics' own export joins the run of every backend it writes a file for (the peer). Returns the
    rows by variant id per backend, the A/A controls, the bench files, the timing order of each run and the peer
    records by backend."""
    from xprune.bench.results import write_results
    from xprune.runtime.registry import backend_named
    from xprune.study.peer import export_peer, is_yolo, peer_results

    out = Path(settings.out)
    timings: dict[str, dict] = {}
    controls: dict[str, dict] = {}
    bench_files: dict[str, str] = {}
    orders: dict[str, dict] = {}
    peers: dict[str, dict] = {}
    threads = torch.get_num_threads()  # the study's count, held since run_study started
    for backend in settings.backends:
        if not backends[backend]["available"]:
            continue
        if torch.get_num_threads() != threads:  # something outside torch_threads_kept changed it
            log(f"[{name}] warning: torch threads changed to {torch.get_num_threads()}; set back to {threads}")
            torch.set_num_threads(threads)
        peer_record, peer_target = None, None
        runtime = backend_named(backend) if backend != FRAMEWORK else None
        if runtime is not None and runtime.ultralytics_format and settings.peer and is_yolo(det):
            peer_record, peer_target = export_peer(det, runtime, work, data, settings, log)
        extra = [peer_target] if peer_target is not None else []
        log(f"[{name}] timing on {backend}: {len(variants) + len(extra) + int(settings.aa_control)} "
            f"targets interleaved")
        doc, by_id = time_backend(backend, name, variants, extra, work, settings, protocol, command, log)
        path = out / "bench" / f"{name}-{backend}.json"
        write_results(path, doc)
        bench_files[backend] = str(path.relative_to(out))
        timings[backend] = by_id
        orders[backend] = timing_order(doc)
        control = aa_control(by_id)
        if control is not None:
            controls[backend] = control
        if peer_record is not None:
            assert runtime is not None
            peers[backend] = peer_record if peer_target is None else peer_results(
                peer_record, runtime, peer_target.path, by_id, variants, val, det, settings, log, intervals)
    return timings, controls, bench_files, orders, peers


@dataclass
class MeasuredModel:
    """A model's study up to its timing. `entry` holds the study.json fields known by then; `seconds` the time it
    took."""

    name: str
    detector: Detector
    weights: dict
    val: Any  # the val split (None for a speed-only model)
    variants: list[Variant]
    intervals: Intervals | None
    entry: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def accuracy(self) -> bool:
        return self.weights["accuracy"]


def measure_model(name: str, data: Path, work: Path, scores_dir: Path, settings: StudySettings,
                  log: Log) -> MeasuredModel:
    """Everything the study measures of one model but its latency: exports land in `work`, each criterion's scores
    in `scores_dir`."""
    from xprune.data.coco import CocoDetectionSet, calibration_set

    t0 = time.perf_counter()
    measured_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    det, weights = load_model(name, data, settings)
    accuracy = weights["accuracy"]
    size = det.input_size
    rates, protocol = settings.rates_for(accuracy), settings.latency_for(accuracy)
    log(f"[{name}] {weights['source']} weights, {size} px, "
        f"{'accuracy + speed' if accuracy else 'speed only (random init)'}")
    calib = calibration_set(data, size, settings.calib_images)
    val = CocoDetectionSet.from_folder(data, "val", size, limit=settings.val_images) if accuracy else None
    if val is not None and det.category_ids is None and det.num_classes != val.num_classes:
        raise XpruneError(f"{name} has {det.num_classes} classes, the dataset {val.num_classes}")
    if val is not None and len(val) < MIN_VAL_IMAGES and settings.val_cap_reason is None:
        log(f"[{name}] warning: {len(val)} val images; mAP intervals are wide below {MIN_VAL_IMAGES}")

    ranks = rank_layers(det, calib, rates, weights.get("path") or "random-init", settings, scores_dir, log)
    variants, infeasible = distinct_variants(det, ranks.plans)
    pruned = variants[1:]
    log(f"[{name}] {len(pruned)} distinct pruned variants for {sum(len(v.uses) for v in pruned)} "
        "(criterion, rate) pairs")
    measure_variants(name, variants, val, work, settings, log)
    intervals = Intervals(settings.bootstrap_resamples, settings.confidence) if val is not None else None
    if intervals is not None:
        add_intervals(name, variants, intervals, log)
    entry = {"model": name, "measured_at": measured_at, "input_size": size, "accuracy": accuracy,
             "val_images": len(val) if val is not None else None,
             "intervals": intervals.describe() if intervals is not None else None,
             "weights": weights, "num_classes": det.num_classes, "rates": list(rates),
             "latency_protocol": asdict(protocol), "conv_layers": len(ranks.layer_scores["layers"]),
             "candidates": sum(ranks.layer_scores["candidate"]),
             "predictors": sorted(set(det.predictor_layers)),
             "plans": {m: {f"{r:g}": plan_brief(p) for r, p in by_rate.items()}
                       for m, by_rate in ranks.plans.items()},
             "infeasible": infeasible, "variants": [v.info for v in variants],
             "layer_scores": ranks.layer_scores, "zero_scores": zero_scores(ranks.layer_scores),
             "agreement": agreement(ranks.layer_scores, ranks.plans, rates),
             "head_levels": head_levels(name, det, val, log)}
    return MeasuredModel(name, det, weights, val, variants, intervals, entry, time.perf_counter() - t0)


def finish_model(m: MeasuredModel, data: Path, work: Path, backends: dict, settings: StudySettings, command: str,
                 log: Log) -> tuple[dict, list[dict], dict]:
    """Time a measured model on every backend; returns its study.json entry, its rows and its peer records by
    backend."""
    t0 = time.perf_counter()
    protocol = settings.latency_for(m.accuracy)
    timings, controls, bench_files, orders, peers = time_variants(m.name, m.detector, m.variants, m.val, data, work,
                                                                 backends, protocol, settings, command, log,
                                                                 m.intervals)
    rows = model_rows(m.name, m.accuracy, m.variants, timings, settings, orders)
    model_doc = {**m.entry, "variants": [v.info for v in m.variants], "controls": controls,
                 "bench_files": bench_files, "timing_order": orders,
                 "seconds": round(m.seconds + time.perf_counter() - t0, 1)}
    return model_doc, rows, peers


def run_model(name: str, data: Path, work: Path, backends: dict, settings: StudySettings, command: str,
              log: Log) -> tuple[dict, list[dict], dict]:
    """One model through the whole pipeline in this process."""
    m = measure_model(name, data, work, Path(settings.out) / "scores", settings, log)
    return finish_model(m, data, work, backends, settings, command, log)


def head_levels(name: str, det: Detector, val, log: Log) -> dict | None:
    """Per output level, whether the baseline detects anything there (`evaluate.head_levels`): layers that only
    feed a silent level cost no mAP whichever criterion picks them. None without val images or fixed levels."""
    from xprune.evaluate.head_levels import level_usage, silent_levels
    if val is None:
        return None
    try:
        usage = level_usage(det, val)
    except XpruneError:
        return None
    silent = silent_levels(usage)
    log(f"[{name}] output levels with no score >= {usage['threshold']}: {', '.join(silent) or 'none'}")
    return usage
