"""`xprune bench`: latency (and mAP when a dataset is given) of ONNX files, TensorRT engines or PyTorch
checkpoints through one runner interface, written as a results file with every raw sample.

Targets are measured one after another, or interleaved round by round (`interleave=True`) so slow drift of the
machine hits every target alike; with `reference_workload=True` a fixed workload is timed right after each sample,
so latencies can be compared relative to it across machines (DESIGN.md "Measurement protocol").
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xprune.bench.environment import environment
from xprune.bench.latency import LatencyProtocol, measure, summarize
from xprune.bench.results import new_results
from xprune.errors import XpruneError
from xprune.runtime.backends import Runner

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


@dataclass
class Target:
    """One thing to benchmark: a runner plus what the results row says about it."""

    path: Path
    runner: Runner
    info: dict = field(default_factory=dict)


def open_target(path: str | Path, device: str = "cpu", model: str | None = None, threads: int | None = None,
                fp16: bool = False) -> Target:
    """Pick the runner from the file: .onnx → ONNX Runtime, .engine/.plan → TensorRT, .pt → PyTorch."""
    path = Path(path)
    if not path.is_file():
        raise XpruneError(f"benchmark target not found: {path}")
    from xprune.models import file_sha256
    info: dict = {"source": str(path), "source_sha256": file_sha256(path)}
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from xprune.export.onnx_export import get_metadata, load_model
        from xprune.export.fold import count_macs
        from xprune.runtime.backends import OnnxRuntimeRunner
        onnx_model = load_model(path)
        meta = get_metadata(onnx_model)
        info.update(_describe_onnx(onnx_model, meta))
        info["macs"] = count_macs(onnx_model)
        return Target(path, OnnxRuntimeRunner(path, device=device, threads=threads, nms_iou=meta.get("nms_iou")), info)
    if suffix in ENGINE_SUFFIXES:
        from xprune.runtime.tensorrt_runner import TensorRTRunner
        runner = TensorRTRunner(path)
        info.update(runner.describe())
        return Target(path, runner, info)
    if suffix in (".pt", ".pth"):
        if not model:
            raise XpruneError(f"{path}: a PyTorch checkpoint needs --model to say which family it is")
        from xprune.export.onnx_export import provenance
        from xprune.models import load_checkpoint
        from xprune.runtime.backends import TorchRunner
        det = load_checkpoint(path, model)
        info.update({"model": det.family, "input_shape": [1, 3, det.input_size, det.input_size],
                     "category_ids": det.category_ids, **provenance(det, folded=False)})
        return Target(path, TorchRunner(det, device=device, fp16=fp16), info)
    raise XpruneError(f"{path}: unknown benchmark target type '{suffix}' (expected .onnx, .engine, .plan or .pt)")


def _describe_onnx(model, meta: dict) -> dict:
    shape = [d.dim_value if d.HasField("dim_value") else None
             for d in model.graph.input[0].type.tensor_type.shape.dim]
    if not shape or any(not d for d in shape):
        raise XpruneError("benchmarks need a static input shape; fix it with `xprune fold --input-shape` first")
    return {"model": meta.get("family", "onnx"), "variant": meta.get("variant", "unknown"),
            "method": meta.get("method"), "rate": meta.get("rate"), "input_shape": shape,
            "category_ids": meta.get("category_ids"), "removed_mac_fraction": meta.get("removed_mac_fraction")}


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
        if settings.interleave or reference is not None:
            log(f"timing {len(fns)} target(s) interleaved")
            samples, timing = measure_interleaved(fns, settings.protocol, reference), {}
        else:
            samples, timing = {}, {}
            for t in targets:
                name = str(t.path)
                log(f"timing {name}")
                if hasattr(t.runner, "time_device"):  # GPU engines: device events, host copies excluded
                    samples[name] = t.runner.time_device(inputs[t.path], runs=settings.protocol.runs,
                                                         warmup=settings.protocol.warmup_runs)
                    timing[name] = "cuda-events"
                else:
                    samples[name] = measure(fns[name], settings.protocol)
        for t in targets:
            name = str(t.path)
            row = {**{k: v for k, v in t.info.items() if k != "category_ids"}, "engine": t.runner.name,
                   "device": t.runner.device, "precision": t.runner.precision,
                   "timing": timing.get(name, "host-wall-clock"), "threads": getattr(t.runner, "threads", None),
                   "samples_ms": [round(s, 4) for s in samples[name]], **summarize(samples[name])}
            if f"{name}@reference" in samples:
                row["reference_samples_ms"] = [round(s, 4) for s in samples[f"{name}@reference"]]
            if settings.data is not None:
                log(f"mAP of {name}")
                row.update(_map(t, settings))
            rows.append(row)
    protocol = dict(vars(settings.protocol), interleaved=settings.interleave or ref is not None)
    if ref is not None:
        protocol["reference_workload"] = ref.describe()
    return new_results(rows, environment(targets[0].runner.device), protocol=protocol,
                       command=command)


def _map(target: Target, settings: BenchSettings) -> dict:
    from xprune.data.coco import CocoDetectionSet
    from xprune.evaluate.coco_map import evaluate_predictions
    size = target.info["input_shape"][-1]
    val = CocoDetectionSet.from_folder(settings.data, settings.split, size, limit=settings.val_images)
    # Batch-1 engines see one image at a time; the shared post-process makes the numbers comparable.
    metrics = evaluate_predictions(target.runner.predict, val, target.info.get("category_ids"),
                                   batch_size=target.info["input_shape"][0])
    return {"map": metrics["map"], "map50": metrics["map50"], "val_images": metrics["images"]}
