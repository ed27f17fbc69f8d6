"""`xprune bench`: latency (and mAP when a dataset is given) of ONNX files, TensorRT engines or PyTorch
checkpoints through one runner interface, written as a results file with every raw sample.

Targets are measured one after another, or interleaved round by round (`interleave=True`) so slow drift of the
machine hits every target alike; with `reference_workload=True` a fixed workload is timed right after each sample,
so latencies can be compared relative to it across machines. Which backend runs a file is decided by
`xprune.runtime.registry`; how a runner is timed is the runner's own declaration (`Runner.timing`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from xprune.bench.environment import environment
from xprune.bench.latency import LatencyProtocol, measure, summarize
from xprune.bench.results import new_results
from xprune.data.coco import dataset_exists
from xprune.errors import XpruneError
from xprune.files import file_sha256
from xprune.runtime.base import CUDA_EVENTS, HOST_CLOCK, Runner
from xprune.runtime.registry import Backend, TargetOptions, backend_for


@dataclass
class Target:
    """One thing to benchmark: a runner plus what the results row says about it."""

    path: Path
    runner: Runner
    info: dict = field(default_factory=dict)


def open_target(path: str | Path, device: str = "cpu", model: str | None = None, threads: int | None = None,
                fp16: bool = False, backend: Backend | None = None) -> Target:
    """A runner for the file, from `backend` or else the backend its suffix names (see
    `xprune.runtime.registry.BACKENDS`)."""
    path = Path(path)
    if not path.is_file():
        raise XpruneError(f"benchmark target not found: {path}")
    backend = backend or backend_for(path)
    info: dict[str, Any] = {"source": str(path), "source_sha256": file_sha256(path)}
    runner, facts = backend.open(path, TargetOptions(device=device, model=model, threads=threads, fp16=fp16))
    info.update(facts)
    return Target(path, runner, info)


@dataclass
class BenchSettings:
    protocol: LatencyProtocol = LatencyProtocol()
    interleave: bool = False
    reference_workload: bool = False
    data: Path | None = None
    split: str = "val"
    val_images: int | None = None
    batch_size: int = 8
    seed: int = 0
    threads: int | None = None  # the reference workload runs with the models' thread count
    order_seed: int | None = None  # interleaved rounds in a random order drawn per round (None: rotated)


def bench_files(paths: list[str], settings: BenchSettings, options: TargetOptions = TargetOptions(),
                baseline: str | None = None, command: str | None = None,
                log: Callable[[str], None] = lambda m: None) -> dict:
    """Open and measure files; returns the results document.

    With `baseline`, exactly one candidate is measured against it, interleaved in this one process: the baseline
    row comes first and the rows carry `role` "baseline" / "candidate", which `xprune gate --interleaved` pairs.
    """
    if settings.data is not None and not dataset_exists(settings.data):
        raise XpruneError(f"dataset not found: {settings.data}")
    if not paths:
        raise XpruneError("nothing to benchmark: pass .onnx / .engine / .pt files (or --engine FILE)")
    if baseline is not None:
        if len(paths) != 1:
            raise XpruneError("--baseline compares one candidate with it: give exactly one target")
        paths = [baseline, *paths]
        settings = replace(settings, interleave=True)  # the point of measuring both in one run
    targets = [open_target(p, options.device, options.model, options.threads, options.fp16) for p in paths]
    if baseline is not None:
        targets[0].info["role"], targets[1].info["role"] = "baseline", "candidate"
    return bench(targets, settings, command=command, log=log)


def time_runner(runner: Runner, x: np.ndarray, protocol: LatencyProtocol) -> list[float]:
    """Samples by the clock the runner declares: its device events, or the host clock around `infer`."""
    if runner.timing == CUDA_EVENTS:  # kernels only, host copies excluded
        return runner.time_device(x, runs=protocol.runs, warmup=protocol.warmup_runs)
    return measure(lambda: runner.infer(x), protocol)


def bench(targets: list[Target], settings: BenchSettings, command: str | None = None, log=lambda m: None) -> dict:
    """Measure every target; returns the results document (see xprune.bench.results)."""
    from xprune.bench.drift import ReferenceWorkload, measure_interleaved

    if not targets:
        raise XpruneError("nothing to benchmark")
    rng = np.random.default_rng(settings.seed)
    rows = []
    with contextlib.ExitStack() as stack:
        # Every session/engine stays loaded for the whole run so targets can be interleaved.
        for t in targets:
            stack.enter_context(t.runner)
        ref = stack.enter_context(ReferenceWorkload(threads=settings.threads)) if settings.reference_workload else None
        inputs = {t.path: rng.random(t.info["input_shape"], dtype=np.float32) for t in targets}
        fns = {str(t.path): (lambda t=t: t.runner.infer(inputs[t.path])) for t in targets}
        reference = ref.run if ref is not None else None
        timing: dict[str, str] = {}
        if settings.interleave or reference is not None:
            log(f"timing {len(fns)} target(s) interleaved")
            # host clock for every target
            samples = measure_interleaved(fns, settings.protocol, reference, seed=settings.order_seed)
        else:
            samples = {}
            for t in targets:
                name = str(t.path)
                log(f"timing {name}")
                samples[name] = time_runner(t.runner, inputs[t.path], settings.protocol)
                timing[name] = t.runner.timing
        for t in targets:
            name = str(t.path)
            row = {**{k: v for k, v in t.info.items() if k != "category_ids"}, "engine": t.runner.name,
                   "device": t.runner.device, "precision": t.runner.precision,
                   "timing": timing.get(name, HOST_CLOCK), "threads": t.runner.threads,
                   "backend": t.runner.describe(),
                   "samples_ms": [round(s, 4) for s in samples[name]], **summarize(samples[name])}
            if f"{name}@reference" in samples:
                row["reference_samples_ms"] = [round(s, 4) for s in samples[f"{name}@reference"]]
            if settings.data is not None:
                log(f"mAP of {name}")
                row.update(_map(t, settings))
            rows.append(row)
    protocol = dict(vars(settings.protocol), interleaved=settings.interleave or ref is not None)
    if protocol["interleaved"] and settings.order_seed is not None:  # each round's order, as indices into rows
        from xprune.bench.drift import round_order
        rounds = len(rows[0]["samples_ms"])
        protocol.update(order_seed=settings.order_seed,
                        round_orders=[round_order(len(rows), r, settings.order_seed) for r in range(rounds)])
    if ref is not None:
        protocol["reference_workload"] = ref.describe()
    return new_results(rows, environment(targets[0].runner.device), protocol=protocol,
                       command=command)


def _map(target: Target, settings: BenchSettings) -> dict:
    from xprune.data.coco import CocoDetectionSet
    from xprune.evaluate.coco_map import evaluate_predictions
    assert settings.data is not None
    size = target.info["input_shape"][-1]
    val = CocoDetectionSet.from_folder(settings.data, settings.split, size, limit=settings.val_images)
    # Batch-1 engines see one image at a time; the shared post-process makes the numbers comparable.
    metrics = evaluate_predictions(target.runner.predict, val, target.info.get("category_ids"),
                                   batch_size=target.info["input_shape"][0], per_image=True)
    # the per-image evaluation lets `xprune gate --max-map-drop` bootstrap the mAP difference over images
    return {"map": metrics["map"], "map50": metrics["map50"], "val_images": metrics["images"],
            "map_matches": metrics["matches"].to_json()}


def compare_files(a: str | Path, b: str | Path, options: TargetOptions = TargetOptions(), inputs: int = 4,
                  seed: int = 0, precision: str | None = None) -> dict:
    """`xprune.runtime.compare.compare_runners` on two files of any backends (`b` is the reference; its precision
    picks the tolerances unless `precision` is given)."""
    from xprune.runtime.compare import compare_runners

    ta, tb = (open_target(p, options.device, options.model) for p in (a, b))
    if ta.info["input_shape"] != tb.info["input_shape"]:
        raise XpruneError(f"input shapes differ: {ta.info['input_shape']} vs {tb.info['input_shape']}")
    return compare_runners(ta.runner, tb.runner, ta.info["input_shape"], inputs=inputs, seed=seed,
                           precision=precision)
