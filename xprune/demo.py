"""`xprune demo`: the whole study on the embedded default, on CPU.

Synthesize (or reuse) the dataset, then for each reference model: evaluate the baseline, score with attr and l1,
zero the bottom `rate` of safe candidates, evaluate again, and write DIR/results.json (one row per model x method)
with the scores and plans beside it. Each model is then exported to ONNX (baseline, zeroed-only and folded per
method) and timed in ONNX Runtime, interleaved in one process; those rows join results.json and their raw samples
are in DIR/bench-<model>-onnxruntime.json.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from xprune.bench.environment import environment
from xprune.bench.latency import LatencyProtocol, measure, summarize
from xprune.data.coco import CocoDetectionSet, calibration_set
from xprune.data.synth import SynthConfig, generate
from xprune.errors import XpruneError
from xprune.evaluate.complexity import complexity
from xprune.evaluate.coco_map import evaluate_map
from xprune.files import write_json
from xprune.importance.scores import score_layers, write_scores
from xprune.models import Detector, file_sha256, load_checkpoint
from xprune.prune.plan import Plan, apply_plan, plan_pruning
from xprune.reference import reference_models

METHODS = ("l1", "attr")


@dataclass
class DemoSettings:
    out: Path
    data: Path | None = None
    models: list[str] | None = None
    rate: float = 0.05
    calib_images: int = 64
    val_images: int | None = None
    batch_size: int = 8
    latency: LatencyProtocol = LatencyProtocol()


def torch_latency(detector: Detector, protocol: LatencyProtocol) -> dict:
    """PyTorch eager, batch 1, raw head outputs (decode included, NMS excluded: the same work an engine does)."""
    detector.model.eval()
    x = torch.rand(1, 3, detector.input_size, detector.input_size)
    with torch.no_grad():
        samples = measure(lambda: detector.raw(x), protocol)
    return {"samples_ms": [round(s, 4) for s in samples], **summarize(samples)}


def measure_row(detector: Detector, val: CocoDetectionSet, settings: DemoSettings, method: str, rate: float,
                weights_hash: str, extra: dict | None = None, progress: bool = True) -> dict:
    metrics = evaluate_map(detector, val, batch_size=settings.batch_size, limit=settings.val_images, progress=progress)
    cx = complexity(detector)
    latency = torch_latency(detector, settings.latency)
    return {"model": detector.family, "method": method, "rate": rate, "backend": "torch",
            "variant": "baseline" if method == "baseline" else "zeroed", "precision": "fp32",
            "device": "cpu", "input_size": detector.input_size, "batch": 1, "weights_sha256": weights_hash,
            "map": metrics["map"], "map50": metrics["map50"], "val_images": metrics["images"],
            "params": cx["params"], "macs": cx["macs"], "latency_ms_median": latency["median_ms"],
            "fps": latency["fps"], "latency": latency, **(extra or {})}


def onnxruntime_rows(base: Detector, pruned: dict[str, Detector], data: Path, settings: DemoSettings,
                     weights_hash: str, log=print) -> list[dict]:
    """Export baseline, zeroed-only and folded models; time them interleaved in ONNX Runtime; measure their mAP."""
    from xprune.bench.results import write_results
    from xprune.bench.run import BenchSettings, bench, open_target
    from xprune.export.onnx_export import export_onnx

    onnx_dir = settings.out / "onnx"
    exports = [("baseline", base, False)]
    exports += [(method, det, fold) for method, det in pruned.items() for fold in (False, True)]
    targets, reports = [], {}
    for method, det, fold in exports:
        variant = "baseline" if method == "baseline" else ("folded" if fold else "zeroed")
        path = onnx_dir / f"{base.family}-{method}-{variant}.onnx"
        log(f"{base.family}: ONNX export {method} ({variant})")
        reports[str(path)] = export_onnx(det, path, fold=fold)
        targets.append(open_target(path))
    log(f"{base.family}: ONNX Runtime latency (interleaved) and mAP")
    doc = bench(targets, BenchSettings(protocol=settings.latency, interleave=True, data=data,
                                       val_images=settings.val_images, batch_size=settings.batch_size))
    write_results(settings.out / f"bench-{base.family}-onnxruntime.json", doc)
    rows = []
    for r in doc["rows"]:
        rep = reports[r["source"]]
        rows.append({"model": base.family, "method": r["method"] or "baseline", "rate": r["rate"] or 0.0,
                     "backend": "onnxruntime", "variant": r["variant"], "precision": r["precision"],
                     "device": r["device"], "input_size": base.input_size, "batch": 1, "weights_sha256": weights_hash,
                     "map": r["map"], "map50": r["map50"], "val_images": r["val_images"],
                     "params": rep["params"], "macs": rep["macs_after"],
                     "removed_mac_fraction": rep["removed_mac_fraction"], "nodes": rep["nodes_after"],
                     "latency_ms_median": r["median_ms"], "fps": r["fps"],
                     "latency": {k: r[k] for k in ("n", "median_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms")}})
    return rows


def bottom_overlap(plans: dict[str, Plan]) -> dict:
    """Overlap of the layers each criterion zeroed (|A & B| / |A|)."""
    sets = {m: set(p.layers) for m, p in plans.items()}
    a, b = sets["attr"], sets["l1"]
    return {"attr": sorted(a), "l1": sorted(b), "common": sorted(a & b), "overlap": len(a & b) / max(len(a), 1)}


def run_demo(settings: DemoSettings, log=print) -> list[dict]:
    refs = reference_models()
    if not refs:
        raise XpruneError("no reference checkpoints found in the package; run benchmarks/train_reference.py")
    names = settings.models or sorted(refs)
    unknown = [n for n in names if n not in refs]
    if unknown:
        raise XpruneError(f"no reference checkpoint for {unknown[0]}; available: {', '.join(sorted(refs))}")
    if settings.data is not None:  # a dataset the user chose is used as it is
        data = settings.data
    else:
        data = settings.out / "data"
        log(f"synthesizing the dataset (or reusing it) in {data}")
        generate(data, SynthConfig())
    log(f"dataset: {data}")
    env = environment()
    rows, overlaps = [], {}
    for name in names:
        ref = refs[name]
        size = ref["input_size"]
        val = CocoDetectionSet.from_folder(data, "val", size)
        calib = calibration_set(data, size, settings.calib_images)
        weights_hash = file_sha256(ref["path"])
        base = load_checkpoint(ref["path"], name, size)
        log(f"{name}: baseline")
        rows.append(measure_row(base, val, settings, "baseline", 0.0, weights_hash))
        plans, pruned_models = {}, {}
        for method in METHODS:
            log(f"{name}: scoring with {method}")
            scores = score_layers(base, method, calib, batch_size=settings.batch_size, progress=True,
                                  weights=ref["path"])
            write_scores(settings.out / f"scores-{name}-{method}.json", scores)
            plan = plan_pruning(base, scores, settings.rate, "safe")
            write_json(settings.out / f"plan-{name}-{method}.json", plan.to_json())
            plans[method] = plan
            pruned = copy.deepcopy(base)
            apply_plan(pruned, plan)
            pruned.meta = {"pruning": plan.to_json()}
            pruned_models[method] = pruned
            log(f"{name}: {method} zeroed {', '.join(plan.layers)}")
            rows.append(measure_row(pruned, val, settings, method, settings.rate, weights_hash,
                                    {"zeroed_layers": plan.layers, "zeroed_params": plan.zeroed_params}))
        overlaps[name] = bottom_overlap(plans)
        rows += onnxruntime_rows(base, pruned_models, data, settings, weights_hash, log)
    for row in rows:
        row["environment"] = env
        row["command"] = " ".join(["xprune", *sys.argv[1:]]) if sys.argv else "xprune demo"
    write_json(settings.out / "results.json", rows)
    write_json(settings.out / "overlap.json", overlaps)
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'model':<18}{'method':<10}{'backend':<13}{'variant':<9}{'rate':>6}{'mAP':>8}{'mAP50':>8}{'dmAP%':>8}{'params':>11}{'MACs(G)':>9}{'ms':>9}"
    lines = [head, "-" * len(head)]
    base = {(r["model"], r.get("backend")): r for r in rows if r["method"] == "baseline"}
    for r in rows:
        b = base.get((r["model"], r.get("backend")))
        d = 100.0 * (r["map"] - b["map"]) / b["map"] if b and b["map"] else 0.0
        lines.append(f"{r['model']:<18}{r['method']:<10}{r.get('backend', 'torch'):<13}{r.get('variant', '-'):<9}{r['rate']:>6.2f}{r['map']:>8.4f}{r['map50']:>8.4f}{d:>8.2f}"
                     f"{r['params']:>11,}{r['macs'] / 1e9:>9.3f}{r['latency_ms_median']:>9.2f}")
    return "\n".join(lines)
