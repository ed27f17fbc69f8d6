"""Commands of the measuring stage: bench, gate, compare."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from xprune.cli.common import positive_int
from xprune.errors import XpruneError


def cmd_bench(args) -> None:
    from xprune.bench.latency import LatencyProtocol
    from xprune.bench.paired import add_speedups
    from xprune.bench.results import write_results
    from xprune.bench.run import BenchSettings, bench_files
    from xprune.runtime.registry import TargetOptions
    protocol = LatencyProtocol(warmup_runs=args.warmup_runs, runs=args.runs, min_s=args.min_seconds)
    settings = BenchSettings(protocol=protocol, interleave=args.interleave, reference_workload=args.reference_workload,
                             data=Path(args.data) if args.data else None, val_images=args.val_images,
                             threads=args.threads)
    options = TargetOptions(device=args.device, model=args.model, threads=args.threads, fp16=args.fp16)
    doc = bench_files(list(args.targets) + list(args.engine or []), settings, options, baseline=args.baseline,
                      command=" ".join(["xprune", *sys.argv[1:]]), log=lambda m: print(m, file=sys.stderr))
    add_speedups(doc)
    write_results(args.out, doc)
    print(format_bench_table(doc["rows"]))
    print(f"results: {args.out}")


def format_bench_table(rows: list[dict]) -> str:
    """One line per target; with a baseline in an interleaved run, the speedup (1 / paired latency ratio) and the
    ratio's p10-p90 (`xprune.bench.paired.add_speedups`)."""
    paired = any("vs_baseline" in r for r in rows)
    head = (f"{'model':<18}{'variant':<10}{'method':<8}{'engine':<13}{'prec':<6}{'median ms':>10}{'p90':>9}{'p99':>9}"
            f"{'mAP':>8}" + (f"{'speedup':>9}  {'ratio p10-p90':<13}" if paired else ""))
    lines = [head, "-" * len(head)]
    for r in rows:
        m = f"{r['map']:>8.4f}" if r.get("map") is not None else f"{'-':>8}"
        line = (f"{r['model']:<18}{r.get('variant') or '-':<10}{r.get('method') or '-':<8}{r['engine']:<13}"
                f"{r['precision']:<6}{r['median_ms']:>10.3f}{r['p90_ms']:>9.3f}{r['p99_ms']:>9.3f}{m}")
        if paired:
            v = r.get("vs_baseline")
            line += (f"{'baseline':>9}" if v is None else
                     f"{1 / v['median']:>8.3f}x  {v['p10']:.3f}-{v['p90']:.3f}")
        lines.append(line)
    return "\n".join(lines)


def cmd_gate(args) -> int:
    from xprune.bench.gate import parse_relative, run_gate, run_record
    if args.record is not None:
        others = [f for f, v in (("--baseline", args.baseline), ("--current", args.current),
                                 ("--interleaved", args.interleaved), ("--history", args.history)) if v is not None]
        if others or not args.run:
            raise XpruneError("--record DIR takes one results file and nothing else: xprune gate --record DIR run.json")
        return run_record(args.record, args.run)
    if args.run:
        raise XpruneError(f"unexpected file '{args.run}': a results file without an option is only taken by --record")
    if not 0.0 <= args.max_regression < 1.0:
        raise XpruneError(f"--max-regression must be in [0, 1), got {args.max_regression}")
    if args.max_map_drop is not None and not 0.0 <= args.max_map_drop < 1.0:
        raise XpruneError(f"--max-map-drop must be in [0, 1) (0.01 = one mAP point), got {args.max_map_drop}")
    return run_gate(args.baseline, args.current, interleaved=args.interleaved, history=args.history,
                    max_regression=args.max_regression, confidence=args.confidence, resamples=args.resamples,
                    seed=args.seed, relative=parse_relative(args.relative), max_map_drop=args.max_map_drop,
                    map_resamples=args.map_resamples, min_history=args.min_history, window=args.window,
                    false_alarm=args.false_alarm, summary=args.summary, verdict_path=args.verdict)


def cmd_compare(args) -> int:
    from xprune.bench.run import compare_files
    from xprune.runtime.registry import TargetOptions
    result = compare_files(args.a, args.b, TargetOptions(device=args.device, model=args.model), inputs=args.inputs,
                           seed=args.seed, precision=args.precision)
    print(json.dumps(result, indent=2))
    if not result["passed"]:
        print(f"outputs differ beyond the {result['precision']} tolerances", file=sys.stderr)
        return 1
    print(f"outputs agree within the {result['precision']} tolerances on {args.inputs} random inputs")
    return 0


def add_parsers(sub) -> None:
    from xprune.runtime.registry import BACKENDS
    opened = ", ".join(f"{'/'.join(b.suffixes)} ({b.label})" for b in BACKENDS.values())
    p = sub.add_parser("bench", help="latency (and mAP with --data) of .onnx / .engine / .pt targets; results JSON")
    p.add_argument("targets", nargs="*", help=f"{opened}; a .pt checkpoint needs --model")
    p.add_argument("--engine", action="append", default=None, metavar="FILE", help="another target (repeatable)")
    p.add_argument("--out", required=True, help="results JSON (raw samples + environment)")
    p.add_argument("--model", default=None, help="family of .pt targets")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--fp16", action="store_true", help="PyTorch targets on CUDA in fp16")
    p.add_argument("--threads", type=positive_int, default=None, help="inference threads of ONNX Runtime (intra-op) and OpenVINO")
    p.add_argument("--data", default=None, help="COCO-format dataset folder: also measure mAP")
    p.add_argument("--val-images", type=positive_int, default=None)
    p.add_argument("--runs", type=positive_int, default=100)
    p.add_argument("--warmup-runs", type=positive_int, default=10)
    p.add_argument("--min-seconds", type=float, default=3.0)
    p.add_argument("--interleave", action="store_true", help="time the targets round by round in one process")
    p.add_argument("--baseline", default=None, metavar="FILE",
                   help="time this baseline and the one target interleaved, for `xprune gate --interleaved`")
    p.add_argument("--reference-workload", action="store_true",
                   help="also time a fixed workload after each sample, for drift-robust (relative) comparisons")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("gate", help="CI latency (and accuracy) gate: compare results files; exit 0 pass, "
                                    "1 regression, 2 unusable")
    p.add_argument("run", nargs="?", default=None, help="with --record: the results file to append to the history")
    p.add_argument("--baseline", default=None, help="results file of the baseline")
    p.add_argument("--current", default=None, help="results file of the candidate")
    p.add_argument("--interleaved", default=None, metavar="FILE",
                   help="instead: one `xprune bench CANDIDATE --baseline BASELINE` run (most robust on noisy machines)")
    p.add_argument("--history", default=None, metavar="DIR",
                   help="instead of --baseline: judge --current against the baseline runs recorded in DIR")
    p.add_argument("--record", default=None, metavar="DIR", help="append the results file RUN to the history in DIR")
    p.add_argument("--min-history", type=positive_int, default=5, help="history mode: runs needed (>= 5)")
    p.add_argument("--window", type=positive_int, default=20, help="history mode: judge against the last N runs")
    p.add_argument("--false-alarm", type=float, default=0.05,
                   help="history mode: rate at which a run of the baseline itself may fail (default 0.05)")
    p.add_argument("--max-regression", type=float, default=0.05, help="allowed slowdown of the median (0.05 = 5%%)")
    p.add_argument("--max-map-drop", type=float, default=None,
                   help="also fail a row whose mAP fell by more than this (0.01 = one point); both files need "
                        "`xprune bench --data`")
    p.add_argument("--map-resamples", type=positive_int, default=1000, help="bootstrap resamples of the images")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--resamples", type=positive_int, default=2000)
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
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16", "int8"], default=None,
                   help="tolerances to apply (default: B's precision)")
    p.add_argument("--inputs", type=positive_int, default=4, help="random inputs to compare on")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_compare)
