"""Commands that run the whole pipeline: study, and demo (the study's demo preset)."""

from __future__ import annotations

import sys
from pathlib import Path

from xprune.cli.common import positive_int


def log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_demo(args) -> None:
    from xprune.models.yolo import quiet_ultralytics_env
    from xprune.study import StudySettings, run_study, write_report
    from xprune.study.demo import demo_models_left_out
    from xprune.study.report import load_study
    from xprune.study.rows import format_rows

    left_out = demo_models_left_out(args.models)
    if left_out:
        log_to_stderr(left_out)
    settings = StudySettings.demo(Path(args.out), models=args.models, rate=args.rate, latency_runs=args.latency_runs,
                                  calib_images=args.calib_images, data=Path(args.data) if args.data else None,
                                  val_images=args.val_images, command=" ".join(["xprune", *sys.argv[1:]]))
    quiet_ultralytics_env()
    path = run_study(settings, log=log_to_stderr)
    report = write_report(path)
    print(format_rows(load_study(path)["rows"]))
    print(f"study: {path}\nreport: {report}")


def cmd_study(args) -> None:
    from xprune.models.yolo import quiet_ultralytics_env
    from xprune.study.options import run_and_report
    quiet_ultralytics_env()
    args.command = " ".join(["xprune", *sys.argv[1:]])
    study, report = run_and_report(args, log=log_to_stderr)
    print(f"study: {study}\nreport: {report}")


def add_parsers(sub) -> None:
    from xprune.study.options import add_study_arguments
    from xprune.study.settings import DEMO_CALIB_IMAGES, DEMO_LATENCY_RUNS, DEMO_RATE, DEMO_VAL_IMAGES

    p = sub.add_parser("study", help="the paper's sweep: models x criteria x rates -> table, plots and report")
    add_study_arguments(p, "xprune-study", None)
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("demo", help="the study's demo preset: the reference models on the synthetic dataset (CPU)")
    p.add_argument("--out", default="xprune-demo")
    p.add_argument("--data", default=None, help="dataset folder (default: OUT/data, synthesized if missing)")
    p.add_argument("--models", nargs="+", default=None,
                   help="reference models (default: yolov8n, ssdlite320-mbv3 and tinyssd-jax, those with a reference here)")
    p.add_argument("--rate", type=float, default=None, help=f"pruning rate (default: {DEMO_RATE:g})")
    p.add_argument("--calib-images", type=positive_int, default=None, help=f"default: {DEMO_CALIB_IMAGES}")
    p.add_argument("--val-images", type=positive_int, default=None,
                   help=f"default: the first {DEMO_VAL_IMAGES} of the val split (the demo's cap, for speed)")
    p.add_argument("--latency-runs", type=positive_int, default=None, help=f"default: {DEMO_LATENCY_RUNS}")
    p.set_defaults(func=cmd_demo)
