"""`run_study`: the experiment of the paper "Explainability-Inspired Layer-Wise Pruning of Deep Neural Networks for
Efficient Object Detection" (sections 3-4, Table 2, Figs 1-3), measured honestly.

For every model: score each conv layer once per criterion, then for every pruning rate zero the bottom of that one
ranking (safe candidate policy: the rates are prefixes of the same greedy selection), and measure

- accuracy: mAP@[.50:.95] and mAP@.50 in PyTorch on the dataset's val split and, with `onnx_map` (the default),
  of every variant's exported file through ONNX Runtime, each with a bootstrap interval over the images and, for
  pruned variants, a paired interval of ΔmAP against the baseline on the same runtime (`intervals`); only for
  models with trained weights: a committed reference checkpoint or a checkpoint the caller names; random-init
  families are speed-only rows, marked `"accuracy": false`;
- complexity: params and MACs by ptflops (dense: zeroing changes neither), and the MACs left after xprune's exact
  fold of the exported ONNX graph ("effective MACs");
- latency and FPS per backend of `xprune.runtime.registry`: the model's own framework on the CPU (the zeroed model,
  dense compute: the paper's setting; PyTorch eager, or XLA for a JAX family), ONNX Runtime CPU (the folded
  export) and TensorRT (an engine built from it) where it can run. Every variant of one model is
  timed interleaved in one process per backend (`xprune.bench.run.bench(..., interleave=True)`), each round in an
  order drawn from `order_seed`, beside an A/A control (the baseline timed twice), and every sample is kept in
  `bench/<model>-<backend>.json`. Every row records the thread count and the runner's `describe()`; torch's thread
  count is held at the study's for the whole run (`threads.torch_threads_kept`).

For YOLO models a peer - the same weights exported by Ultralytics' own exporter (`xprune.study.peer`): ONNX for
ONNX Runtime, an IR for OpenVINO - is timed in the same run of its backend and its mAP measured there through the
shared post-process; study.json keeps the first YOLO model's peers by backend ("peers").

The study file (`study.json`, format `xprune-study-3`) is rewritten atomically after every model, with
`"complete": false` until the last one is done; `xprune.study.report` renders it. With `resume`, a later run keeps
the models that file already holds from the same study (`xprune.study.resume`) and measures only the others.

Per model the pipeline reads: score and plan (`variants.rank_layers`) -> distinct variants
(`variants.distinct_variants`) -> mAP, complexity, export + fold (`measure.measure_variants`) -> intervals
(`intervals.add_intervals`) -> interleaved timing per backend with the peer (`timing`, `peer`) -> rows and
agreement (`rows`, `stats`) -> study.json.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from xprune.bench.environment import environment
from xprune.bench.latency import LatencyProtocol
from xprune.errors import XpruneError
from xprune.files import display_path, write_json
from xprune.models.detector import Detector
from xprune.runtime.registry import export_backends, onnx_backend
from xprune.study.intervals import Intervals, add_intervals
from xprune.study.measure import measure_variants
from xprune.study.rows import model_rows
from xprune.study.settings import FORMAT, FRAMEWORK, MIN_VAL_IMAGES, STUDY_FILE, Log, StudySettings
from xprune.study.stats import agreement, zero_scores
from xprune.study.threads import torch_threads_kept
from xprune.study.timing import aa_control, backends_block, time_backend, timing_order
from xprune.study.variants import Variant, distinct_variants, plan_brief, rank_layers


def study_dataset(settings: StudySettings) -> Path:
    """The dataset folder: the one given, or the synthetic set generated (or reused) in OUT/data."""
    from xprune.data.synth import SynthConfig, generate
    if settings.data is not None:
        data = Path(settings.data)
        if not (data / "annotations").is_dir():
            raise XpruneError(f"dataset folder has no annotations/: {data}")
        return data
    return generate(Path(settings.out) / "data", SynthConfig())


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


def weights_sha(name: str, settings: StudySettings, refs: dict[str, dict]) -> str | None:
    """The SHA-256 of the weights `load_model` would measure `name` with (None: random init)."""
    from xprune.models import file_sha256
    if name in settings.weights:
        return file_sha256(settings.weights[name])
    return file_sha256(refs[name]["path"]) if name in refs else None


def run_model(name: str, data: Path, work: Path, backends: dict, settings: StudySettings, command: str,
              log: Log) -> tuple[dict, list[dict], dict]:
    """One model through the whole pipeline; returns its study.json entry, its rows and its peer records by
    backend."""
    from xprune.data.coco import CocoDetectionSet, calibration_set

    t_model = time.perf_counter()
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

    ranks = rank_layers(det, calib, rates, weights.get("path") or "random-init", settings,
                        Path(settings.out) / "scores", log)
    variants, infeasible = distinct_variants(det, ranks.plans)
    pruned = variants[1:]
    log(f"[{name}] {len(pruned)} distinct pruned variants for {sum(len(v.uses) for v in pruned)} "
        "(criterion, rate) pairs")
    measure_variants(name, variants, val, work, settings, log)
    intervals = Intervals(settings.bootstrap_resamples, settings.confidence) if val is not None else None
    if intervals is not None:
        add_intervals(name, variants, intervals, log)
    timings, controls, bench_files, orders, peers = time_variants(name, det, variants, val, data, work, backends,
                                                                 protocol, settings, command, log, intervals)
    rows = model_rows(name, accuracy, variants, timings, settings, orders)
    levels = head_levels(name, det, val, log)
    model_doc = {"model": name, "measured_at": measured_at, "input_size": size, "accuracy": accuracy,
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
                 "head_levels": levels,
                 "controls": controls, "bench_files": bench_files, "timing_order": orders,
                 "seconds": round(time.perf_counter() - t_model, 1)}
    return model_doc, rows, peers


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


def dataset_block(data: Path, settings: StudySettings) -> dict:
    """study.json's "dataset_stats": the val split's object sizes next to COCO's (`dataset.dataset_size_stats`)."""
    from xprune.study.dataset import dataset_size_stats
    try:
        return dataset_size_stats(data, "val", settings.val_images)
    except XpruneError as e:  # a speed-only study may run on a dataset without a val split
        return {"available": False, "reason": str(e)}


def engine_summaries(backends: dict) -> dict[str, str]:
    """A line per engine-building backend of the registry, under its name in study.json's header: whether it ran,
    with which version, or why not."""
    out = {}
    for engine in (b for b in export_backends() if b.builds_engine):
        b = backends.get(engine.name)
        out[engine.name] = (f"available ({engine.label} {b['version']})" if b and b["available"]
                            else f"unavailable ({b['reason']})" if b else "not requested")
    return out


def run_study(settings: StudySettings, log: Log = print) -> Path:
    """Run the study; returns the path of the study results JSON (OUT/study.json). torch's thread count is
    `settings.threads` (or the one found) for the whole run, whatever a library does to it, and is put back
    afterwards."""
    settings.validate()
    with torch_threads_kept(settings.threads):
        return _run_study(settings, log)


def _run_study(settings: StudySettings, log: Log) -> Path:
    t0 = time.perf_counter()
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    command = settings.command or (" ".join(["python", *sys.argv]) if sys.argv else "run_study()")
    data = study_dataset(settings)
    backends = backends_block(settings)
    doc: dict[str, Any] = {
        "format": FORMAT, "complete": False, "command": command, "environment": environment(),
        "settings": settings.describe(), "dataset": display_path(data), "dataset_stats": dataset_block(data, settings),
        "threads": {FRAMEWORK: torch.get_num_threads(), onnx_backend().name: settings.threads or os.cpu_count()},
        "backends": backends, **engine_summaries(backends), "models": [], "rows": [], "peers": {}}
    path = out / STUDY_FILE
    kept = {}
    if settings.resume:
        from xprune.reference import reference_models
        from xprune.study.resume import kept_models
        refs = reference_models() if settings.use_reference else {}
        kept = kept_models(path, doc, lambda name: weights_sha(name, settings, refs), log)
        kept = {name: kept[name] for name in settings.models if name in kept}
        kept_seconds = round(sum(entry["seconds"] for entry, _, _ in kept.values()), 1)
        doc["resumed"] = {"kept": list(kept), "kept_seconds": kept_seconds}
    elif path.is_file():
        log(f"replacing the study in {display_path(out)} (--resume would keep the models it measured)")
    for name, b in backends.items():
        if not b["available"]:
            log(f"{name}: unavailable ({b['reason']})")
    earlier = doc.get("resumed", {}).get("kept_seconds", 0.0)
    with tempfile.TemporaryDirectory(prefix="xprune-study-") as tmp:
        for i, name in enumerate(settings.models, 1):
            if name in kept:
                model_doc, rows, peers = kept[name]
            else:
                work = (out / "onnx") if settings.keep_onnx else Path(tmp) / name
                work.mkdir(parents=True, exist_ok=True)
                log(f"model {i}/{len(settings.models)}: {name}")
                model_doc, rows, peers = run_model(name, data, work, backends, settings, command, log)
            doc["models"].append(model_doc)
            doc["rows"] += rows
            for backend, peer in peers.items():  # the first YOLO model's
                doc["peers"].setdefault(backend, peer)
            doc["seconds"] = round(earlier + time.perf_counter() - t0, 1)
            write_json(path, doc)
            if name not in kept:
                log(f"[{name}] done in {model_doc['seconds']:.0f} s -> {path}")
    doc["complete"] = True
    doc["seconds"] = round(earlier + time.perf_counter() - t0, 1)
    write_json(path, doc)
    return path
