"""Commands that run the whole pipeline: study and demo."""

from __future__ import annotations

import sys
from pathlib import Path

from xprune.cli.common import positive_int


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


def add_parsers(sub) -> None:
    p = sub.add_parser("study", help="the paper's sweep: models x criteria x rates -> table, plots and report")
    from xprune.study.options import add_study_arguments
    add_study_arguments(p, "xprune-study", None)
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("demo", help="the whole study on the synthetic dataset and the reference models (CPU)")
    p.add_argument("--out", default="xprune-demo")
    p.add_argument("--data", default=None, help="dataset folder (default: OUT/data, synthesized if missing)")
    p.add_argument("--models", nargs="+", default=None)
    p.add_argument("--rate", type=float, default=0.05)
    p.add_argument("--calib-images", type=positive_int, default=64)
    p.add_argument("--val-images", type=positive_int, default=None)
    p.add_argument("--latency-runs", type=positive_int, default=100)
    p.set_defaults(func=cmd_demo)
