"""OpenVINO precisions: what pruning with the fold adds on top of int8 (and bf16) on OpenVINO's CPU plugin.

For each model (its reference checkpoint, `--size` px): score the conv layers with attr on the calibration split,
choose the layers to zero at `--target-macs` of the exported MACs (`plan_for_target`, as `xprune prune
--target-macs` does; no fine-tuning), export the unpruned model, the pruned model unfolded and folded, and build
OpenVINO IRs from them (`backend_named("openvino").build`):

    unpruned-fp32, unpruned-fp32-copy (A/A control), unpruned-int8,
    pruned-unfolded-fp32, pruned-folded-fp32, pruned-folded-bf16 (where the CPU infers in bf16), pruned-folded-int8

int8 is NNCF post-training quantization calibrated on the calibration split. All IRs of a model are timed
interleaved in one process (rounds in a seeded random order, explicit threads), then each one's val mAP is measured
through OpenVINO with per-image matches: mAP intervals and paired ΔmAP intervals are percentile bootstraps over the
images, latency ratios are paired per round against unpruned-fp32. The markdown sets pairs of variants side by
side (int8 alone, folding alone, both), each as a paired latency ratio and a paired ΔmAP.

    python benchmarks/openvino_precisions.py        # -> benchmarks/results/openvino_precisions.json and .md
    python benchmarks/openvino_precisions.py --models yolov8n --val-images 8 --runs 5 --calib-images 8 \\
        --out /tmp/ovp.json                         # a check that it runs end to end
    python benchmarks/openvino_precisions.py --render-only   # the markdown again from the JSON
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xprune.errors import XpruneError  # noqa: E402
from xprune.files import display_path, read_json, write_json, write_with  # noqa: E402

FORMAT = "xprune-openvino-precisions-1"
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_DATA = ROOT / "data" / "synth"
DEFAULT_MODELS = ["yolov8n", "ssdlite320-mbv3"]
BASELINE = "unpruned-fp32"
# variant -> (exported ONNX it is built from, precision)
VARIANTS = {"unpruned-fp32": ("unpruned", "fp32"), "unpruned-fp32-copy": ("unpruned", "fp32"),
            "unpruned-int8": ("unpruned", "int8"), "pruned-unfolded-fp32": ("pruned-unfolded", "fp32"),
            "pruned-folded-fp32": ("pruned-folded", "fp32"), "pruned-folded-bf16": ("pruned-folded", "bf16"),
            "pruned-folded-int8": ("pruned-folded", "int8")}
# (question, candidate, reference): each a paired latency ratio and a paired ΔmAP in the same run
COMPARISONS = [("A/A control", "unpruned-fp32-copy", "unpruned-fp32"),
               ("int8 alone", "unpruned-int8", "unpruned-fp32"),
               ("zeroing without the fold", "pruned-unfolded-fp32", "unpruned-fp32"),
               ("folding alone (same zeroed layers)", "pruned-folded-fp32", "pruned-unfolded-fp32"),
               ("pruning + fold, fp32", "pruned-folded-fp32", "unpruned-fp32"),
               ("pruning + fold on top of int8", "pruned-folded-int8", "unpruned-int8"),
               ("pruning + fold + int8", "pruned-folded-int8", "unpruned-fp32"),
               ("bf16 on the pruned folded model", "pruned-folded-bf16", "pruned-folded-fp32")]


def prune_at_target(det, data: Path, args) -> tuple[object, dict]:
    """A pruned copy of `det`: attr scores on the calibration split, the layers `plan_for_target` picks."""
    from xprune.data.coco import calibration_set
    from xprune.export.fold.analysis import fold_analysis_for
    from xprune.importance.scores import score_layers
    from xprune.prune.mac_target import plan_for_target
    from xprune.prune.plan import apply_plan

    calib = calibration_set(data, det.input_size, args.calib_images)
    scores = score_layers(det, "attr", calib, batch_size=8, seed=args.seed)
    plan = plan_for_target(det, scores, args.target_macs, "safe", fold_analysis_for(det, "--target-macs"))
    pruned = copy.deepcopy(det)
    apply_plan(pruned, plan)
    pruned.meta = {"pruning": plan.to_json()}
    target = plan.fold["target"]
    return pruned, {"method": "attr", "calib_images": len(calib), "candidates": plan.candidates,
                    "zeroed_layers": plan.layers, "target": target["fraction"], "reached": target["reached"],
                    "optimal": target["optimal"], "removed_mac_fraction": plan.fold["removed_mac_fraction"]}


def build_variants(name: str, data: Path, work: Path, args, log) -> tuple[dict, dict]:
    """Exports and IRs of one model: {variant: IR path or None where the CPU has no bf16}, and what was done."""
    from xprune.export.onnx_export import export_onnx
    from xprune.models import load_checkpoint
    from xprune.reference import reference_models
    from xprune.runtime.registry import EngineOptions, TargetOptions, backend_named

    ref = reference_models()[name]
    det = load_checkpoint(ref["path"], name, args.size)
    log(f"[{name}] scoring with attr, choosing layers for {args.target_macs:.0%} of the MACs")
    pruned, plan = prune_at_target(det, data, args)
    onnx = {key: work / f"{name}-{key}.onnx" for key in ("unpruned", "pruned-unfolded", "pruned-folded")}
    exports = {}
    for key, model, fold in (("unpruned", det, True), ("pruned-unfolded", pruned, False),
                             ("pruned-folded", pruned, True)):
        log(f"[{name}] exporting {key}")
        report = export_onnx(model, onnx[key], fold=fold)
        exports[key] = {k: report[k] for k in ("folded", "nodes_after", "macs_after", "removed_mac_fraction",
                                               "params", "dead_outputs")}
    backend, files, builds = backend_named("openvino"), {}, {}
    for variant, (source, precision) in VARIANTS.items():
        if variant == "unpruned-fp32-copy":
            continue
        files[variant] = work / f"{name}-{variant}.xml"
        log(f"[{name}] building {variant}")
        options = EngineOptions(bf16=precision == "bf16", int8=precision == "int8", calibration_data=data,
                                calibration_images=args.calib_images, input_size=args.size)
        builds[variant] = backend.build(onnx[source], files[variant], options)
    copy_xml = work / f"{name}-unpruned-fp32-copy.xml"  # the same IR under another name: the A/A control
    shutil.copyfile(files[BASELINE].with_suffix(".bin"), copy_xml.with_suffix(".bin"))
    shutil.copyfile(files[BASELINE], copy_xml)
    files["unpruned-fp32-copy"], builds["unpruned-fp32-copy"] = copy_xml, builds[BASELINE]
    bf16 = {"supported": True, "reason": None}
    try:  # the runner reads back the precision it compiled for: no bf16 on this CPU is an error there
        with backend.runner(files["pruned-folded-bf16"], TargetOptions(threads=args.threads)):
            pass
    except XpruneError as e:
        bf16 = {"supported": False, "reason": str(e)}
        files["pruned-folded-bf16"] = None
    kept = ("precision", "inference_precision_hint", "weights_precision", "macs", "calibration", "build_seconds")
    facts = {"weights": display_path(ref["path"]), "weights_sha256": ref.get("sha256"), "plan": plan,
             "exports": exports, "bf16": bf16,
             "builds": {v: {k: b.get(k) for k in kept} for v, b in builds.items()}}
    return {v: files[v] for v in VARIANTS}, facts


def measure_model(name: str, data: Path, args, log) -> dict:
    """Build, time interleaved, evaluate and summarise one model's variants; one `models` entry."""
    from xprune.bench.latency import LatencyProtocol
    from xprune.bench.paired import paired_summary
    from xprune.bench.run import BenchSettings, bench, open_target
    from xprune.evaluate.bootstrap import ImageBootstrap, ImageMatches
    from xprune.runtime.registry import backend_named

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="xprune-ov-precisions-") as tmp:
        files, facts = build_variants(name, data, Path(tmp), args, log)
        present = {v: p for v, p in files.items() if p is not None}
        backend = backend_named("openvino")
        targets = [open_target(p, threads=args.threads, backend=backend) for p in present.values()]
        log(f"[{name}] timing {len(targets)} IRs interleaved, then mAP on {args.val_images} val images each")
        settings = BenchSettings(protocol=LatencyProtocol(runs=args.runs, min_s=0.0), interleave=True, data=data,
                                 val_images=args.val_images, threads=args.threads, order_seed=args.seed)
        doc = bench(targets, settings)
    rows = dict(zip(present, doc["rows"]))
    boot = ImageBootstrap(resamples=args.resamples, seed=args.seed)
    matches = {v: ImageMatches.from_json(r["map_matches"], f"{v} mAP") for v, r in rows.items()}
    variants = {}
    for v in VARIANTS:
        if v not in rows:
            variants[v] = {"supported": False, "reason": facts["bf16"]["reason"]}
            continue
        r = rows[v]
        delta = boot.delta_interval(matches[BASELINE], matches[v])
        variants[v] = {"supported": True, "source_onnx": VARIANTS[v][0], "precision": r["precision"],
                       "weights_precision": r.get("weights_precision"), "macs": r.get("macs"),
                       "threads": r["threads"], "median_ms": r["median_ms"], "p90_ms": r["p90_ms"],
                       "vs_unpruned_fp32": paired_summary(r, rows[BASELINE]), "map": r["map"],
                       "map_ci": list(boot.map_interval(matches[v])), "delta_map": list(delta),
                       "val_images": r["val_images"], "samples_ms": r["samples_ms"],
                       "map_matches": r["map_matches"]}
    comparisons = []
    for question, cand, ref in COMPARISONS:
        if cand in rows and ref in rows:
            comparisons.append({"question": question, "candidate": cand, "reference": ref,
                                "ratio": paired_summary(rows[cand], rows[ref]),
                                "delta_map": list(boot.delta_interval(matches[ref], matches[cand]))})
    return {"model": name, **facts, "input_size": args.size, "threads": rows[BASELINE]["threads"],
            "protocol": doc["protocol"], "variants": variants, "comparisons": comparisons,
            "seconds": round(time.time() - started, 1)}


def fmt_ratio(s: dict | None) -> str:
    return "-" if not s or s.get("median") is None else f"{s['median']:.3f} [{s['p10']:.3f}-{s['p90']:.3f}]"


def fmt_delta(d: list | None) -> str:
    return "-" if not d else f"{d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]"


def render(doc: dict) -> str:
    env, s = doc["environment"], doc["settings"]
    lines = [f"# OpenVINO precisions: what pruning with the fold adds on top of int8, {s['size']} px, batch 1", "",
             f"Generated by `benchmarks/openvino_precisions.py` from `{doc.get('json_name', 'the JSON')}`. "
             f"Machine: {env['cpu']}, {env['cpu_count']} cores; OpenVINO {env['libraries'].get('openvino')}, "
             f"NNCF {env['libraries'].get('nncf')}. Pruning: attr scores on {s['calib_images']} calibration images, "
             f"layers chosen for {s['target_macs']:.0%} of the exported MACs, no fine-tuning. Latency: "
             f"{s['runs']} interleaved rounds per model (seeded random order), medians; ratios are paired per "
             f"round, median [p10-p90], below 1 is faster. mAP@[.50:.95] through OpenVINO on {s['val_images']} "
             f"val images with a 95 % bootstrap interval ({s['resamples']} resamples); ΔmAP paired over the same "
             "resamples. int8: NNCF post-training quantization on the calibration split.", ""]
    for m in doc["models"]:
        plan = m["plan"]
        lines += [f"## {m['model']}", "",
                  f"{m['threads']} threads. {len(plan['zeroed_layers'])} of {plan['candidates']} candidate layers "
                  f"zeroed; the fold removes {plan['removed_mac_fraction']:.1%} of the MACs (target "
                  f"{plan['target']:.0%}, reached {plan['reached']:.1%}). bf16: "
                  + ("inferred in bf16 on this CPU." if m["bf16"]["supported"]
                     else f"not supported ({m['bf16']['reason']})."), "",
                  "| variant | precision | weights | MACs (G) | median ms | ratio to unpruned-fp32 | mAP [95 % CI] "
                  "| ΔmAP vs unpruned-fp32 [95 % CI] |", "|---|---|---|---|---|---|---|---|"]
        for key, v in m["variants"].items():
            if not v["supported"]:
                lines.append(f"| {key} | not supported | | | | | | |")
                continue
            macs = f"{v['macs'] / 1e9:.3f}" if v.get("macs") is not None else "-"
            lines.append(f"| {key} | {v['precision']} | {v.get('weights_precision') or '-'} | {macs} | "
                         f"{v['median_ms']:.2f} | {fmt_ratio(v['vs_unpruned_fp32'])} | {v['map']:.4f} "
                         f"[{v['map_ci'][0]:.4f}, {v['map_ci'][1]:.4f}] | {fmt_delta(v['delta_map'])} |")
        lines += ["", "| question | candidate / reference | paired latency ratio | paired ΔmAP [95 % CI] |",
                  "|---|---|---|---|"]
        for c in m["comparisons"]:
            lines.append(f"| {c['question']} | {c['candidate']} / {c['reference']} | {fmt_ratio(c['ratio'])} | "
                         f"{fmt_delta(c['delta_map'])} |")
        ratios = {(c["candidate"], c["reference"]): c["ratio"]["median"] for c in m["comparisons"]}
        int8, pruning, both = (ratios.get((c, BASELINE)) for c in ("unpruned-int8", "pruned-folded-fp32",
                                                                  "pruned-folded-int8"))
        if None not in (int8, pruning, both):
            lines += ["", f"Composition: int8 alone × pruning + fold alone = {int8:.3f} × {pruning:.3f} = "
                          f"{int8 * pruning:.3f}; measured together {both:.3f}. A/A control "
                          f"{fmt_ratio(m['variants']['unpruned-fp32-copy']['vs_unpruned_fp32'])}."]
        lines.append("")
    return "\n".join(lines)


def check_ready(args) -> None:
    """What a run needs, before minutes of scoring and exports."""
    from xprune.prune.mac_target import check_target_macs
    from xprune.reference import reference_models
    from xprune.runtime.registry import backend_named

    backend_named("openvino").available()
    if importlib.util.find_spec("nncf") is None:
        raise XpruneError('int8 quantizes with NNCF, which is not installed; pip install "xprune[openvino]"')
    check_target_macs(args.target_macs)
    refs = reference_models()
    missing = [m for m in args.models if m not in refs]
    if missing:
        raise XpruneError(f"no reference checkpoint here for {', '.join(missing)} (have: {', '.join(sorted(refs))})")
    if args.val_images < 2 or args.runs < 2 or args.threads < 1:
        raise XpruneError("need --val-images >= 2 (a bootstrap over images), --runs >= 2 and --threads >= 1")


def run(args, out: Path) -> None:
    import torch

    from xprune.bench.environment import environment
    from xprune.data.synth import SynthConfig, generate

    check_ready(args)
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    if not data.exists():
        if data.resolve() != DEFAULT_DATA.resolve():
            raise XpruneError(f"dataset not found: {data}")
        print(f"writing the synthetic dataset to {data}", file=sys.stderr)  # as `xprune data synth` does
        generate(data, SynthConfig())
    started = time.time()
    models = [measure_model(name, data, args, lambda message: print(message, file=sys.stderr, flush=True))
              for name in args.models]
    keys = ("models", "size", "target_macs", "runs", "threads", "val_images", "calib_images", "resamples", "seed")
    doc = {"format": FORMAT, "benchmark": "openvino_precisions", "json_name": out.name,
           "command": " ".join(["python", *sys.argv]), "settings": {k: getattr(args, k) for k in keys},
           "environment": environment(), "models": models, "wall_s": round(time.time() - started, 1)}
    write_json(out, doc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--target-macs", type=float, default=0.2, help="fraction of the exported MACs to fold out")
    ap.add_argument("--runs", type=int, default=100, help="interleaved timed rounds per model")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--val-images", type=int, default=300)
    ap.add_argument("--calib-images", type=int, default=64, help="for the attr scores and the int8 calibration")
    ap.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the val images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--out", default=str(RESULTS / "openvino_precisions.json"))
    ap.add_argument("--render-only", action="store_true", help="write the markdown again from the JSON")
    args = ap.parse_args(argv)
    out = Path(args.out)
    try:
        if not args.render_only:
            run(args, out)
        doc = read_json(out, "openvino_precisions results")
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise XpruneError(f"{out} is not an openvino_precisions.py results file (format {FORMAT})")
        md = render(doc)
        write_with(out.with_suffix(".md"), lambda tmp: tmp.write_text(md))
    except XpruneError as e:
        print(f"openvino_precisions: error: {e}", file=sys.stderr)
        return 2
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
