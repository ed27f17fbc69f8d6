"""`run_study`: the experiment of the paper "Explainability-Inspired Layer-Wise Pruning of Deep Neural Networks for
Efficient Object Detection" (sections 3-4, Table 2, Figs 1-3), measured honestly.

For every model: score each conv layer once per criterion, then for every pruning rate zero the bottom of that one
ranking (safe candidate policy: the rates are prefixes of the same greedy selection), and measure

- accuracy: mAP@[.50:.95] and mAP@.50 in PyTorch on the dataset's val split and, with `onnx_map` (the default),
  of every variant's exported file through ONNX Runtime and OpenVINO, each with a bootstrap interval over the images and, for
  pruned variants, a paired interval of ΔmAP against the baseline on the same runtime (`intervals`); only for
  models with trained weights: a committed reference checkpoint or a checkpoint the caller names; random-init
  families are speed-only rows, marked `"accuracy": false`;
- complexity: params and MACs by ptflops (dense: zeroing changes neither), and the MACs left after xprune's exact
  fold of the exported ONNX graph ("effective MACs");
- latency and FPS per backend of `xprune.runtime.registry`: the model's own framework on the CPU (the zeroed model,
  dense compute: the paper's setting; PyTorch eager, or XLA for a JAX family), ONNX Runtime and OpenVINO on the CPU
  (the folded export) and TensorRT (an engine built from it) where it can run. Every variant of one model is
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

Per model (`model.measure_model`, then `model.finish_model`) the pipeline reads: score and plan
(`variants.rank_layers`) -> distinct variants (`variants.distinct_variants`) -> mAP, complexity, export + fold
(`measure.measure_variants`) -> intervals (`intervals.add_intervals`) -> interleaved timing per backend with the peer
(`timing`, `peer`) -> rows and agreement (`rows`, `stats`) -> study.json. With `ray`, the models' measuring runs as
Ray Tune trials and their timing afterwards, here (`xprune.study.tune`).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from xprune.bench.environment import environment
from xprune.errors import XpruneError
from xprune.files import display_path, write_json
from xprune.runtime.registry import export_backends, onnx_backend
from xprune.ray_trials import RayOptions
from xprune.study.model import finish_model, run_model
from xprune.study.settings import FORMAT, FRAMEWORK, STUDY_FILE, Log, StudySettings
from xprune.study.threads import torch_threads_kept
from xprune.study.timing import backends_block


def study_dataset(settings: StudySettings) -> Path:
    """The dataset folder: the one given, or the synthetic set generated (or reused) in OUT/data."""
    from xprune.data.synth import SynthConfig, generate
    if settings.data is not None:
        data = Path(settings.data)
        if not (data / "annotations").is_dir():
            raise XpruneError(f"dataset folder has no annotations/: {data}")
        return data
    return generate(Path(settings.out) / "data", SynthConfig())


def weights_sha(name: str, settings: StudySettings, refs: dict[str, dict]) -> str | None:
    """The SHA-256 of the weights `load_model` would measure `name` with (None: random init)."""
    from xprune.models import file_sha256
    if name in settings.weights:
        return file_sha256(settings.weights[name])
    return file_sha256(refs[name]["path"]) if name in refs else None


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


def run_study(settings: StudySettings, log: Log = print, ray: RayOptions | None = None) -> Path:
    """Run the study; returns the path of the study results JSON (OUT/study.json). torch's thread count is
    `settings.threads` (or the one found) for the whole run, whatever a library does to it, and is put back
    afterwards. With `ray`, the models are measured as Ray Tune trials first and timed here afterwards."""
    settings.validate()
    if ray is not None:
        from xprune.ray_trials import ray_tune
        ray_tune()  # without the extra: one line, before anything is written
    with torch_threads_kept(settings.threads):
        return _run_study(settings, log, ray)


def _run_study(settings: StudySettings, log: Log, ray: RayOptions | None) -> Path:
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
        def work_dir(name: str) -> Path:
            work = (out / "onnx") if settings.keep_onnx else Path(tmp) / name
            work.mkdir(parents=True, exist_ok=True)
            return work

        measured = {}
        todo = [name for name in settings.models if name not in kept]
        if ray is not None and todo:
            from xprune.study.tune import measure_on_ray
            measured = measure_on_ray(todo, data, work_dir, settings, ray, log)
            doc["ray"] = ray.describe()
        for i, name in enumerate(settings.models, 1):
            if name in kept:
                model_doc, rows, peers = kept[name]
            elif name in measured:
                log(f"model {i}/{len(settings.models)}: {name}, measured on Ray; timing it here")
                model_doc, rows, peers = finish_model(measured[name], data, work_dir(name), backends, settings,
                                                      command, log)
            else:
                log(f"model {i}/{len(settings.models)}: {name}")
                model_doc, rows, peers = run_model(name, data, work_dir(name), backends, settings, command, log)
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
