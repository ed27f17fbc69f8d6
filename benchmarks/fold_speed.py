"""Fold-speed benchmark: does zeroing layers make a CPU runtime faster, and does folding them out?

For each family, at `--rate` (default 5%) of safe candidates chosen by attr and by l1, export the baseline, the
zeroed-only model and the folded model, and on each runtime (`--runtimes`: ONNX Runtime and OpenVINO, which runs
the same ONNX files in fp32 with its inference precision set explicitly) check that folded == zeroed on a random
input and time all of them interleaved in one process. A second copy of the baseline is timed too (an A/A control:
its ratio to the baseline is the noise floor of this machine). Each folded model's latency is set against its
zeroed-only model's, next to what the removed MACs predict (1 - removed fraction). Families with a committed
reference checkpoint use it; the others use random initialisation (speed rows only; attr then ranks layers of an
untrained network). `models` holds one entry per (family, runtime), its runtime named in `runtime`.

    python benchmarks/fold_speed.py                       # all families at 320 px -> benchmarks/results/fold_speed.json
    python benchmarks/fold_speed.py --models yolov8n --size 64 --runs 3 --calib-images 2 --out /tmp/fs.json  # check
    python benchmarks/fold_speed.py --render-only         # regenerate the markdown table from the JSON
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xprune.bench.environment import environment  # noqa: E402
from xprune.bench.latency import LatencyProtocol  # noqa: E402
from xprune.bench.run import BenchSettings, bench, open_target  # noqa: E402
from xprune.errors import XpruneError  # noqa: E402
from xprune.data.coco import calibration_set  # noqa: E402
from xprune.data.synth import SynthConfig, generate  # noqa: E402
from xprune.export.onnx_export import export_onnx  # noqa: E402
from xprune.files import read_json, write_json  # noqa: E402
from xprune.importance.scores import score_layers  # noqa: E402
from xprune.models import build_detector, load_checkpoint  # noqa: E402
from xprune.models.zoo import FAMILIES  # noqa: E402
from xprune.prune.plan import apply_plan, plan_pruning  # noqa: E402
from xprune.reference import reference_models  # noqa: E402
from xprune.runtime.registry import Backend, TargetOptions, backend_named, label  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_MODELS = ["yolov8n", "yolo11n", "ssdlite320-mbv3", "ssd-mobilenetv2", "ssd-shufflenetv2", "ssd-resnet50",
                  "retinanet-r50-fpn", "fasterrcnn-r50-fpn", "tinyssd-jax"]  # every family, one YOLO size per version
METHODS = ("attr", "l1")
RUNTIMES = ("onnxruntime", "openvino")  # registry backends that run the ONNX files themselves


def load_model(name: str, size: int, num_classes: int):
    refs = reference_models()
    if name in refs:
        return load_checkpoint(refs[name]["path"], name, size), "reference"
    torch.manual_seed(0)
    return build_detector(name, "none", num_classes=num_classes, input_size=size), "random-init"


def max_rel_error(a: tuple, b: tuple) -> float:
    return max(float(np.max(np.abs(x - y))) / max(1.0, float(np.max(np.abs(x)))) for x, y in zip(a, b))


def export_variants(name: str, args, data: Path, work: Path) -> dict:
    """The baseline (and its A/A copy), and per method the zeroed-only and the folded export."""
    t0 = time.time()
    calib = calibration_set(data, args.size, args.calib_images)
    det, weights = load_model(name, args.size, calib.num_classes)
    det.input_size = args.size
    files = {"baseline": work / f"{name}-baseline.onnx"}
    reports = {"baseline": export_onnx(det, files["baseline"], fold=False)}
    files["baseline-copy"] = work / f"{name}-baseline-copy.onnx"
    files["baseline-copy"].write_bytes(files["baseline"].read_bytes())
    plans = {}
    for method in METHODS:
        print(f"[{name}] scoring with {method}", file=sys.stderr, flush=True)
        scores = score_layers(det, method, calib, batch_size=4, weights=weights)
        plan = plan_pruning(det, scores, args.rate, "safe")
        plans[method] = {"zeroed_layers": plan.layers, "candidates": plan.candidates}
        pruned = copy.deepcopy(det)
        apply_plan(pruned, plan)
        pruned.meta = {"pruning": plan.to_json()}
        for fold in (False, True):
            key = f"{method}-{'folded' if fold else 'zeroed'}"
            files[key] = work / f"{name}-{key}.onnx"
            reports[key] = export_onnx(pruned, files[key], fold=fold)
    return {"model": name, "weights": weights, "files": files, "reports": reports, "plans": plans,
            "seconds": time.time() - t0}


def time_on(backend: Backend, exported: dict, args) -> dict:
    """One runtime: folded == zeroed on a random input, then every file timed interleaved; one `models` entry."""
    t0 = time.time()
    name, files, reports = exported["model"], exported["files"], exported["reports"]
    options = TargetOptions(threads=args.threads)
    exactness = {}
    for method in METHODS:
        x = np.random.default_rng(1).random((1, 3, args.size, args.size), dtype=np.float32)
        with backend.runner(files[f"{method}-zeroed"], options) as a, \
                backend.runner(files[f"{method}-folded"], options) as b:
            exactness[method] = max_rel_error(a.infer(x), b.infer(x))
    print(f"[{name}] timing {len(files)} ONNX models interleaved on {backend.label}", file=sys.stderr, flush=True)
    protocol = LatencyProtocol(warmup_runs=5, warmup_s=1.0, runs=args.runs, min_s=0.0)
    targets = [open_target(path, threads=args.threads, backend=backend) for path in files.values()]
    doc = bench(targets, BenchSettings(protocol=protocol, interleave=True))
    by_source = {r["source"]: r for r in doc["rows"]}
    base = by_source[str(files["baseline"])]
    variants = {}
    for key, path in files.items():
        row = by_source[str(path)]
        rep = reports.get(key, reports["baseline"])
        variants[key] = {"median_ms": row["median_ms"], "p90_ms": row["p90_ms"], "samples_ms": row["samples_ms"],
                         "ratio_to_baseline": row["median_ms"] / base["median_ms"], "macs": rep["macs_after"],
                         "nodes": rep["nodes_after"], "removed_mac_fraction": rep["removed_mac_fraction"]}
    for method in METHODS:  # what folding adds to zeroing on this runtime; the removed MACs say what to expect
        folded, zeroed = variants[f"{method}-folded"], variants[f"{method}-zeroed"]
        folded["ratio_to_zeroed"] = folded["median_ms"] / zeroed["median_ms"]
    return {"model": name, "runtime": backend.name, "runtime_version": backend.available(),
            "precision": base["precision"], "threads": base["threads"], "weights": exported["weights"],
            "input_size": args.size, "rate": args.rate, "plans": exported["plans"],
            "folded_vs_zeroed_max_rel_error": exactness, "variants": variants,
            "seconds": round(exported["seconds"] + time.time() - t0, 1)}


def render(doc: dict) -> str:
    env, settings = doc["environment"], doc["settings"]
    runtimes = settings.get("runtimes") or ["onnxruntime"]  # files from before OpenVINO timed ONNX Runtime only
    versions = {m.get("runtime", "onnxruntime"): m.get("runtime_version") or env["libraries"].get("onnxruntime")
                for m in doc["models"]}
    lines = [f"# Fold speed: {' and '.join(label(r) for r in runtimes)} on CPU, {settings['size']} px, batch 1, "
             f"rate {settings['rate']:.0%} (safe)",
             "", f"Generated by `benchmarks/fold_speed.py` from `fold_speed.json`. Machine: {env['cpu']}, "
             f"{env['cpu_count']} cores; {', '.join(f'{r} {v}' for r, v in versions.items())}, "
             f"{settings['runs']} interleaved samples per model and runtime, medians.", "",
             "Ratio = median latency / baseline median. Expected folded ratio = 1 - removed MAC fraction. "
             "`baseline-copy` is the same file timed again (A/A control). Folded / zeroed = the folded model's median "
             "over its zeroed-only model's, in the same run: what folding adds to zeroing on that runtime "
             "(expected: 1 - removed MAC fraction). OpenVINO runs the ONNX files in fp32.", "",
             "| model | runtime | weights | variant | layers zeroed | MACs removed | median ms | ratio | expected "
             "| |ratio-expected| | folded / zeroed | folded=zeroed (max rel err) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in doc["models"]:
        runtime = m.get("runtime", "onnxruntime")
        for key, v in m["variants"].items():
            method = key.split("-")[0] if key not in ("baseline", "baseline-copy") else None
            zeroed = len(m["plans"][method]["zeroed_layers"]) if method else "-"
            expected = 1.0 - v["removed_mac_fraction"] if key.endswith("folded") else 1.0
            err = f"{m['folded_vs_zeroed_max_rel_error'][method]:.1e}" if key.endswith("folded") else ""
            vs_zeroed = f"{v['ratio_to_zeroed']:.3f}" if "ratio_to_zeroed" in v else ""
            lines.append(f"| {m['model']} | {label(runtime)} | {m['weights']} | {key} | {zeroed} | "
                         f"{100 * v['removed_mac_fraction']:.1f}% | {v['median_ms']:.2f} | "
                         f"{v['ratio_to_baseline']:.3f} | {expected:.3f} | "
                         f"{abs(v['ratio_to_baseline'] - expected):.3f} | {vs_zeroed} | {err} |")
    lines.append("")
    for runtime in runtimes:
        big = [v for m in doc["models"] if m.get("runtime", "onnxruntime") == runtime
               for k, v in m["variants"].items() if k.endswith("folded") and v["removed_mac_fraction"] >= 0.10]
        near = sum(abs(v["ratio_to_baseline"] - (1 - v["removed_mac_fraction"])) <= 0.05 for v in big)
        lines.append(f"{label(runtime)}: folded models with at least 10% of MACs removed: {len(big)}; "
                     f"within 0.05 of expected: {near}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=sorted(FAMILIES))
    ap.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--calib-images", type=int, default=16)
    ap.add_argument("--data", default=str(ROOT / "data" / "synth"))
    ap.add_argument("--out", default=str(RESULTS / "fold_speed.json"))
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    if not args.render_only:
        try:
            backends = [backend_named(r) for r in args.runtimes]
            for backend in backends:
                backend.available()  # before minutes of exports, not after
        except XpruneError as e:
            print(f"fold_speed: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        torch.set_num_threads(args.threads or torch.get_num_threads())
        data = generate(args.data, SynthConfig())
        models = []
        with tempfile.TemporaryDirectory(prefix="xprune-fold-speed-") as tmp:
            for name in args.models:
                exported = export_variants(name, args, data, Path(tmp))
                models += [time_on(backend, exported, args) for backend in backends]
        keys = ("size", "rate", "runs", "threads", "calib_images", "runtimes")
        write_json(out, {"benchmark": "fold_speed", "command": " ".join(["python", *sys.argv]),
                         "settings": {k: getattr(args, k) for k in keys},
                         "environment": environment(), "models": models})
    md = out.with_suffix(".md")
    md.write_text(render(read_json(out)))
    print(md.read_text())


if __name__ == "__main__":
    main()
