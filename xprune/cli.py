"""The `xprune` command line: parses, calls the library, prints. Bad input exits 2 with one line on stderr."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from xprune.errors import XpruneError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return v


def _batch_profile(text: str) -> tuple[int, int, int]:
    try:
        lo, opt, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,OPT,MAX batch sizes, got '{text}'") from None
    if not 1 <= lo <= opt <= hi:
        raise argparse.ArgumentTypeError(f"need 1 <= MIN <= OPT <= MAX, got '{text}'")
    return lo, opt, hi


def _model_args(p: argparse.ArgumentParser, data_required: bool = False) -> None:
    p.add_argument("--model", required=True, help="family name (see `xprune models`)")
    p.add_argument("--weights", default="default", help="'default' (official), 'none' (random init) or a checkpoint path")
    p.add_argument("--input-size", type=_positive_int, default=None, help="square input size (multiple of 32)")
    p.add_argument("--data", required=data_required, default=None, help="COCO-format dataset folder")


def _load(args, num_classes: int | None = None):
    from xprune.models import build_detector
    return build_detector(args.model, args.weights, num_classes=num_classes, input_size=args.input_size)


def _classes_from_data(data: str | None, split: str = "val") -> int | None:
    if not data:
        return None
    from xprune.data.coco import CocoDetectionSet
    if not Path(data).is_dir():
        raise XpruneError(f"dataset folder not found: {data}")
    for s in ("calib", "train", split):
        ann = Path(data) / "annotations" / f"instances_{s}.json"
        if ann.is_file():
            return CocoDetectionSet.from_folder(data, s, 32, limit=1).num_classes
    raise XpruneError(f"no annotations/instances_*.json found in {data}")


# --- commands ---------------------------------------------------------------------------------------------------

def cmd_models(args) -> None:
    from xprune.models.zoo import FAMILIES
    for f in FAMILIES.values():
        print(f"{f.name:<20} {f.default_size:>4}  {f.about}")


def cmd_data_synth(args) -> None:
    from xprune.data.synth import SynthConfig, generate
    cfg = SynthConfig(image_size=args.image_size, train=args.train, val=args.val, calib=args.calib, seed=args.seed)
    out = generate(args.out, cfg, overwrite=args.overwrite)
    print(f"synthetic dataset: {out} (train {cfg.train}, val {cfg.val}, calib {cfg.calib} images)")


def cmd_score(args) -> None:
    from xprune.data.coco import calibration_set
    from xprune.importance.criteria import CRITERIA
    from xprune.importance.scores import score_layers, write_scores
    if args.method not in CRITERIA:
        raise XpruneError(f"unknown scoring method '{args.method}'; choose one of: {', '.join(CRITERIA)}")
    needs_data = CRITERIA[args.method][1]
    if needs_data and not args.data:
        raise XpruneError(f"method '{args.method}' needs calibration data: pass --data DIR")
    det = _load(args, _classes_from_data(args.data) if args.weights == "none" else None)
    calib = calibration_set(args.data, det.input_size, args.calib_images) if needs_data else None
    doc = score_layers(det, args.method, calib, batch_size=args.batch_size, progress=True, seed=args.seed,
                       weights=args.weights)
    write_scores(args.out, doc)
    lowest = sorted(doc["layers"], key=lambda e: e["rank"])[:5]
    print(f"scored {len(doc['layers'])} conv layers with {args.method} -> {args.out}")
    print("least important: " + ", ".join(e["layer"] for e in lowest))


def cmd_prune(args) -> None:
    from xprune.files import write_json
    from xprune.importance.scores import read_scores
    from xprune.models import save_checkpoint
    from xprune.prune.plan import apply_plan, check_rate, plan_pruning
    if args.max_map_drop is not None and args.rate is not None:
        raise XpruneError("--rate and --max-map-drop are exclusive: give one")
    if args.max_map_drop is None:
        check_rate(0.05 if args.rate is None else args.rate)
    scores = read_scores(args.scores)
    det = _load(args, _classes_from_data(args.data) if args.weights == "none" else None)
    if args.max_map_drop is not None:
        plan = _budget_plan(args, det, scores)
    else:
        plan = plan_pruning(det, scores, 0.05 if args.rate is None else args.rate, args.candidates)
    apply_plan(det, plan)
    plan_path = args.plan or str(Path(args.out).with_suffix(".plan.json"))
    plan["weights"] = args.weights
    save_checkpoint(det, args.out, meta={"pruning": plan})
    write_json(plan_path, plan)
    for e in plan["selected"]:
        print(f"zeroed {e['layer']:<40} score {e['score']:.4g}  ({e['reason']})")
    for e in plan["skipped"]:
        print(f"kept   {e['layer']:<40} score {e['score']:.4g}  ({e['reason']})")
    print(f"{len(plan['selected'])} of {plan['candidates']} candidate layers zeroed -> {args.out}, plan {plan_path}")


def _budget_plan(args, det, scores: dict) -> dict:
    """The largest safe rate whose mAP drop on held-out calibration images stays within --max-map-drop."""
    from xprune.evaluate.coco_map import evaluate_map
    from xprune.files import write_json
    from xprune.prune.budget import check_max_map_drop, held_out_split, scored_calib_images, search_rate
    check_max_map_drop(args.max_map_drop)
    if not args.data:
        raise XpruneError("--max-map-drop needs --data DIR: mAP is measured on its calib images after the scored ones")
    held = held_out_split(args.data, det.input_size, args.held_out_images, skip=scored_calib_images(scores, args.data))
    report = search_rate(det, scores, lambda d: evaluate_map(d, held)["map"], args.max_map_drop, args.candidates,
                         max_rate=args.max_rate, log=lambda m: print(m, file=sys.stderr))
    write_json(args.search_report or str(Path(args.out).with_suffix(".search.json")), report)
    if report["plan"] is None:
        raise XpruneError(f"no rate keeps the mAP drop within {args.max_map_drop} (search written beside --out)")
    plan = report["plan"]
    plan["budget"] = {k: v for k, v in report.items() if k != "plan"}
    return plan


def cmd_evaluate(args) -> None:
    from xprune.bench.latency import LatencyProtocol
    from xprune.data.coco import CocoDetectionSet
    from xprune.demo import DemoSettings, format_table, measure_row
    from xprune.files import write_json
    from xprune.models import file_sha256
    det = _load(args, _classes_from_data(args.data, args.split) if args.weights == "none" else None)
    val = CocoDetectionSet.from_folder(args.data, args.split, det.input_size, limit=args.limit)
    if det.category_ids is None and det.num_classes != val.num_classes:
        raise XpruneError(f"model has {det.num_classes} classes, dataset {val.num_classes}")
    settings = DemoSettings(out=Path("."), latency=LatencyProtocol(runs=args.latency_runs))
    weights_hash = file_sha256(args.weights) if Path(args.weights).is_file() else args.weights
    row = measure_row(det, val, settings, "evaluate", 0.0, weights_hash)
    print(format_table([row]))
    if args.out:
        write_json(args.out, [row])


def cmd_demo(args) -> None:
    from xprune.bench.latency import LatencyProtocol
    from xprune.demo import DemoSettings, format_table, run_demo
    from xprune.prune.plan import check_rate
    check_rate(args.rate)
    settings = DemoSettings(out=Path(args.out), data=Path(args.data) if args.data else None, models=args.models,
                            rate=args.rate, calib_images=args.calib_images, val_images=args.val_images,
                            latency=LatencyProtocol(runs=args.latency_runs, min_s=3.0 if args.latency_runs >= 100 else 0.0))
    rows = run_demo(settings, log=lambda m: print(m, file=sys.stderr))
    print(format_table(rows))
    print(f"results: {Path(args.out) / 'results.json'}")


def cmd_export(args) -> None:
    from xprune.export.onnx_export import export_onnx
    if args.engine == "trt":
        from xprune.export.tensorrt import require_tensorrt
        require_tensorrt()  # fail before the minutes of export work, not after
    elif any([args.fp16, args.int8, args.timing_cache, args.dynamic_batch]):
        raise XpruneError("--fp16, --int8, --timing-cache and --dynamic-batch apply to --engine trt only")
    det = _load(args, _classes_from_data(args.data) if args.weights == "none" else None)
    out = Path(args.out)
    onnx_path = out if args.engine == "onnx" else out.with_suffix(".onnx")
    report = export_onnx(det, onnx_path, fold=not args.no_fold, log=lambda m: print(m, file=sys.stderr))
    _print_fold_report(report)
    from xprune.files import write_json
    write_json(onnx_path.with_suffix(onnx_path.suffix + ".json"), report)
    print(f"ONNX: {onnx_path}")
    if args.engine == "trt":
        from xprune.export.tensorrt import build_engine
        calib = None
        if args.int8:
            if not args.data:
                raise XpruneError("--int8 needs calibration images: pass --data DIR")
            from xprune.data.coco import calibration_set
            calib = (x.numpy() for x, _, _ in calibration_set(args.data, det.input_size, args.calib_images).batches(1))
        sidecar = build_engine(onnx_path, out, fp16=args.fp16, int8=args.int8, calibration_batches=calib,
                               workspace_gb=args.workspace_gb, timing_cache=args.timing_cache,
                               dynamic_batch=args.dynamic_batch)
        print(f"TensorRT engine ({sidecar['precision']}): {out}")


def _print_fold_report(report: dict) -> None:
    print(f"nodes {report['nodes_before']} -> {report['nodes_after']}, MACs {report['macs_before'] / 1e9:.4f}G -> "
          f"{report['macs_after'] / 1e9:.4f}G (removed {100 * report['removed_mac_fraction']:.2f}%)")
    for name in report.get("dead_outputs", []):
        print(f"WARNING: output '{name}' no longer depends on the input: the pruning removed every path to it",
              file=sys.stderr)


def cmd_fold(args) -> None:
    import warnings
    from xprune.export.fold import fold_file, parse_input_shape
    shapes = parse_input_shape(args.input_shape) if args.input_shape else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dead outputs are reported below, once
        report = fold_file(args.input, args.output, shapes)
    _print_fold_report({**report.as_dict(), "removed_mac_fraction": report.removed_mac_fraction})
    print(f"folded {report.folded_tensors} input-independent tensors -> {args.output}")


def cmd_bench(args) -> None:
    from xprune.bench.latency import LatencyProtocol
    from xprune.bench.results import write_results
    from xprune.bench.run import BenchSettings, bench, open_target
    if args.data and not Path(args.data).is_dir():
        raise XpruneError(f"dataset folder not found: {args.data}")
    paths = list(args.targets) + list(args.engine or [])
    if not paths:
        raise XpruneError("nothing to benchmark: pass .onnx / .engine / .pt files (or --engine FILE)")
    if args.baseline:
        if len(paths) != 1:
            raise XpruneError("--baseline compares one candidate with it: give exactly one target")
        paths = [args.baseline] + paths
        args.interleave = True  # the point of measuring both in one run
    targets = [open_target(p, args.device, args.model, args.threads, args.fp16) for p in paths]
    if args.baseline:
        targets[0].info["role"], targets[1].info["role"] = "baseline", "candidate"
    protocol = LatencyProtocol(warmup_runs=args.warmup_runs, runs=args.runs, min_s=args.min_seconds)
    settings = BenchSettings(protocol=protocol, interleave=args.interleave, reference_workload=args.reference_workload,
                             data=Path(args.data) if args.data else None, val_images=args.val_images,
                             threads=args.threads)
    doc = bench(targets, settings, command=" ".join(["xprune", *sys.argv[1:]]),
                log=lambda m: print(m, file=sys.stderr))
    write_results(args.out, doc)
    print(format_bench_table(doc["rows"]))
    print(f"results: {args.out}")


def format_bench_table(rows: list[dict]) -> str:
    head = f"{'model':<18}{'variant':<10}{'method':<8}{'engine':<13}{'prec':<6}{'median ms':>10}{'p90':>9}{'p99':>9}{'mAP':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        m = f"{r['map']:>8.4f}" if r.get("map") is not None else f"{'-':>8}"
        lines.append(f"{r['model']:<18}{r.get('variant') or '-':<10}{r.get('method') or '-':<8}{r['engine']:<13}"
                     f"{r['precision']:<6}{r['median_ms']:>10.3f}{r['p90_ms']:>9.3f}{r['p99_ms']:>9.3f}{m}")
    return "\n".join(lines)


def cmd_gate(args) -> int:
    from xprune.bench.gate import parse_relative, run_gate
    if not 0.0 <= args.max_regression < 1.0:
        raise XpruneError(f"--max-regression must be in [0, 1), got {args.max_regression}")
    return run_gate(args.baseline, args.current, interleaved=args.interleaved, max_regression=args.max_regression, confidence=args.confidence,
                    resamples=args.resamples, seed=args.seed, relative=parse_relative(args.relative),
                    summary=args.summary, verdict_path=args.verdict)


def cmd_compare(args) -> None:
    from xprune.bench.run import open_target
    from xprune.runtime.compare import compare_outputs
    import numpy as np
    a, b = open_target(args.a, args.device, args.model), open_target(args.b, args.device, args.model)
    if a.info["input_shape"] != b.info["input_shape"]:
        raise XpruneError(f"input shapes differ: {a.info['input_shape']} vs {b.info['input_shape']}")
    precision = args.precision or b.runner.precision
    rng = np.random.default_rng(args.seed)
    worst = None
    with a.runner, b.runner:
        for i in range(args.inputs):
            x = rng.random(a.info["input_shape"], dtype=np.float32)
            result = compare_outputs(a.runner.infer(x), b.runner.infer(x), precision)
            if worst is None or not result["passed"]:
                worst = result
            if not result["passed"]:
                break
    print(json.dumps(worst, indent=2))
    if not worst["passed"]:
        print(f"outputs differ beyond the {precision} tolerances", file=sys.stderr)
        return 1
    print(f"outputs agree within the {precision} tolerances on {args.inputs} random inputs")
    return 0


def cmd_study(args) -> None:
    from xprune.models.yolo import quiet_ultralytics_env
    from xprune.study import run_study, write_report
    from xprune.study.options import settings_from_args
    quiet_ultralytics_env()
    args.command = " ".join(["xprune", *sys.argv[1:]])
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if not args.render_only:
        run_study(settings_from_args(args, log), log=log)
    report = write_report(Path(args.out))
    print(f"study: {Path(args.out) / 'study.json'}\nreport: {report}")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="xprune", description="Explainability-guided layer pruning for object detectors.")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("models", help="list the detector families")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("data", help="datasets")
    dsub = p.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    s = dsub.add_parser("synth", help="write the deterministic synthetic COCO-format dataset")
    s.add_argument("--out", required=True)
    s.add_argument("--train", type=_positive_int, default=1200)
    s.add_argument("--val", type=_positive_int, default=200)
    s.add_argument("--calib", type=_positive_int, default=64)
    s.add_argument("--image-size", type=_positive_int, default=320)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_data_synth)

    p = sub.add_parser("score", help="score every conv layer and write scores.json")
    _model_args(p)
    p.add_argument("--method", default="attr", help="attr (default), l1, taylor, hrank, random, gradshap (needs captum)")
    p.add_argument("--out", required=True)
    p.add_argument("--calib-images", type=_positive_int, default=64)
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("prune", help="zero the least important layers; write the checkpoint and a plan JSON")
    _model_args(p)
    p.add_argument("--scores", required=True)
    p.add_argument("--rate", type=float, default=None, help="fraction of candidate layers to zero, in (0, 1) (default 0.05)")
    p.add_argument("--max-map-drop", type=float, default=None,
                   help="instead of --rate: the largest rate whose mAP drop on held-out calib images is <= D "
                        "(absolute, 0.01 = one point); score with fewer --calib-images to leave images held out")
    p.add_argument("--held-out-images", type=_positive_int, default=64, help="calib images after the scored ones")
    p.add_argument("--max-rate", type=float, default=None, help="upper bound of the --max-map-drop search")
    p.add_argument("--search-report", default=None, help="search JSON (default: OUT with .search.json)")
    p.add_argument("--candidates", default="safe", help="safe (default) or all (the paper's)")
    p.add_argument("--out", required=True)
    p.add_argument("--plan", default=None, help="plan JSON path (default: OUT with .plan.json)")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("evaluate", help="COCO mAP, params, MACs and PyTorch CPU latency of one model")
    _model_args(p, data_required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--limit", type=_positive_int, default=None, help="evaluate the first N images only")
    p.add_argument("--latency-runs", type=_positive_int, default=100)
    p.add_argument("--out", default=None)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="export to ONNX (zeroed layers folded out) or build a TensorRT engine")
    _model_args(p)
    p.add_argument("--engine", choices=["onnx", "trt"], default="onnx")
    p.add_argument("--out", required=True, help="output .onnx (or .engine with --engine trt)")
    p.add_argument("--no-fold", action="store_true", help="keep the zeroed layers in the graph")
    p.add_argument("--fp16", action="store_true", help="TensorRT: allow fp16 kernels")
    p.add_argument("--int8", action="store_true", help="TensorRT: int8 with calibration batches from --data")
    p.add_argument("--calib-images", type=_positive_int, default=64)
    p.add_argument("--workspace-gb", type=float, default=4.0)
    p.add_argument("--timing-cache", default=None, help="TensorRT timing cache file (read and updated)")
    p.add_argument("--dynamic-batch", type=_batch_profile, default=None, metavar="MIN,OPT,MAX",
                   help="TensorRT: a dynamic batch profile, e.g. 1,4,8")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("fold", help="fold input-independent tensors (zeroed layers) out of any static-shape ONNX model")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--input-shape", default=None, help="fix dynamic dims, e.g. images:1x3x320x320")
    p.set_defaults(func=cmd_fold)

    p = sub.add_parser("bench", help="latency (and mAP with --data) of .onnx / .engine / .pt targets; results JSON")
    p.add_argument("targets", nargs="*", help=".onnx (ONNX Runtime), .engine/.plan (TensorRT), .pt (PyTorch, needs --model)")
    p.add_argument("--engine", action="append", default=None, metavar="FILE", help="another target (repeatable)")
    p.add_argument("--out", required=True, help="results JSON (raw samples + environment)")
    p.add_argument("--model", default=None, help="family of .pt targets")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--fp16", action="store_true", help="PyTorch targets on CUDA in fp16")
    p.add_argument("--threads", type=_positive_int, default=None, help="ONNX Runtime intra-op threads")
    p.add_argument("--data", default=None, help="COCO-format dataset folder: also measure mAP")
    p.add_argument("--val-images", type=_positive_int, default=None)
    p.add_argument("--runs", type=_positive_int, default=100)
    p.add_argument("--warmup-runs", type=_positive_int, default=10)
    p.add_argument("--min-seconds", type=float, default=3.0)
    p.add_argument("--interleave", action="store_true", help="time the targets round by round in one process")
    p.add_argument("--baseline", default=None, metavar="FILE",
                   help="time this baseline and the one target interleaved, for `xprune gate --interleaved`")
    p.add_argument("--reference-workload", action="store_true",
                   help="also time a fixed workload after each sample, for drift-robust (relative) comparisons")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("gate", help="CI latency gate: compare two results files; exit 0 pass, 1 regression, 2 unusable")
    p.add_argument("--baseline", default=None, help="results file of the baseline")
    p.add_argument("--current", default=None, help="results file of the candidate")
    p.add_argument("--interleaved", default=None, metavar="FILE",
                   help="instead: one `xprune bench CANDIDATE --baseline BASELINE` run (most robust on noisy machines)")
    p.add_argument("--max-regression", type=float, default=0.05, help="allowed slowdown of the median (0.05 = 5%%)")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--resamples", type=_positive_int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--relative", choices=["auto", "on", "off"], default="auto",
                   help="compare latency relative to the reference workload (auto: when both files have it)")
    p.add_argument("--summary", default=None, help="append the markdown summary here (e.g. $GITHUB_STEP_SUMMARY)")
    p.add_argument("--verdict", default=None, help="write the JSON verdict here")
    p.set_defaults(func=cmd_gate)

    p = sub.add_parser("compare", help="check two backends' raw outputs agree within per-precision tolerances")
    p.add_argument("a", help=".onnx / .engine / .pt")
    p.add_argument("b", help=".onnx / .engine / .pt")
    p.add_argument("--model", default=None, help="family of .pt targets")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default=None,
                   help="tolerances to apply (default: B's precision)")
    p.add_argument("--inputs", type=_positive_int, default=4, help="random inputs to compare on")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("study", help="the paper's sweep: models x criteria x rates -> table, plots and report")
    from xprune.study.options import add_study_arguments
    add_study_arguments(p, "xprune-study", None)
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("demo", help="the whole study on the synthetic dataset and the reference models (CPU)")
    p.add_argument("--out", default="xprune-demo")
    p.add_argument("--data", default=None, help="dataset folder (default: OUT/data, synthesized if missing)")
    p.add_argument("--models", nargs="+", default=None)
    p.add_argument("--rate", type=float, default=0.05)
    p.add_argument("--calib-images", type=_positive_int, default=64)
    p.add_argument("--val-images", type=_positive_int, default=None)
    p.add_argument("--latency-runs", type=_positive_int, default=100)
    p.set_defaults(func=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except XpruneError as e:
        sys.stderr.write(f"xprune: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("xprune: interrupted\n")
        return 130
    return int(code or 0)


if __name__ == "__main__":
    raise SystemExit(main())
