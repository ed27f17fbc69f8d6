"""Options of a study run, shared by `xprune study` and `benchmarks/reproduce.py`. An option left out keeps the
default of `xprune.study.settings`; `run_and_report` is what both commands run."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from xprune.errors import XpruneError
from xprune.ray_trials import add_ray_options, ray_options
from xprune.study.settings import (ACCURACY_MODELS, BOOTSTRAP_RESAMPLES, CALIB_IMAGES, CRITERIA, FRAMEWORK,
                                   LARGE_MODELS, LATENCY, MIN_VAL_IMAGES, QUICK_IMAGES, QUICK_RATES, RATES,
                                   SPEED_INPUT_SIZE, SPEED_LATENCY, SPEED_MODELS, SPEED_RATES, STUDY_FILE, Log,
                                   StudySettings, default_models, study_backends)


def _listed(values) -> str:
    return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def add_study_arguments(ap: argparse.ArgumentParser, out_default: str, data_default: str | None) -> None:
    ap.add_argument("--out", default=out_default, help=f"output folder (default: {out_default})")
    ap.add_argument("--data", default=data_default,
                    help="COCO-format dataset; the synthetic set is generated there when missing")
    ap.add_argument("--models", nargs="+", default=None,
                    help=f"default: {_listed(ACCURACY_MODELS + SPEED_MODELS)}, and {_listed(LARGE_MODELS)} where their "
                         "reference is in the cache")
    ap.add_argument("--weights", nargs="+", default=None, metavar="MODEL=CHECKPOINT",
                    help="checkpoints to measure instead of the references (e.g. a model trained on --data)")
    ap.add_argument("--criteria", nargs="+", default=None, help=f"default: {_listed(CRITERIA)}")
    ap.add_argument("--rates", type=float, nargs="+", default=None, help=f"default: {_listed(RATES)}")
    ap.add_argument("--speed-rates", type=float, nargs="+", default=None,
                    help=f"rates for speed-only (random-init) models (default: {_listed(SPEED_RATES)})")
    ap.add_argument("--speed-size", type=int, default=None,
                    help=f"input size of speed-only models (default: {SPEED_INPUT_SIZE})")
    ap.add_argument("--val-images", type=int, default=None,
                    help=f"default: the whole val split (intervals get wide below {MIN_VAL_IMAGES})")
    ap.add_argument("--calib-images", type=int, default=None, help=f"default: {CALIB_IMAGES}")
    ap.add_argument("--runs", type=int, default=None,
                    help=f"timed runs per variant (accuracy models; default: {LATENCY.runs})")
    ap.add_argument("--min-s", type=float, default=None,
                    help=f"minimum timed seconds per interleaved run (default: {LATENCY.min_s:g})")
    ap.add_argument("--speed-runs", type=int, default=None,
                    help=f"timed runs per variant (speed-only models; default: {SPEED_LATENCY.runs})")
    ap.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads (default: all cores)")
    ap.add_argument("--no-peer", action="store_true", help="skip the Ultralytics export comparison")
    ap.add_argument("--onnx-map", action=argparse.BooleanOptionalAction, default=None,
                    help="measure every variant's exported file through ONNX Runtime for the ONNX Runtime table's "
                         "mAP (default: on; --no-onnx-map reports PyTorch's mAP there instead)")
    ap.add_argument("--resamples", type=int, default=None,
                    help=f"bootstrap resamples of the val images per mAP interval (default: {BOOTSTRAP_RESAMPLES})")
    ap.add_argument("--order-seed", type=int, default=None,
                    help="seed of the order each interleaved round runs its targets in (default: 0)")
    ap.add_argument("--backends", nargs="+", default=None,
                    help=f"default: {_listed(study_backends())} ({FRAMEWORK}: the model's own framework)")
    ap.add_argument("--keep-onnx", action="store_true", help="keep the exported ONNX files in OUT/onnx")
    ap.add_argument("--quick", action="store_true",
                    help=f"tiny smoke settings: random-init yolov8n at 64 px, rates {_listed(QUICK_RATES)}, 3 timed "
                         f"runs, {QUICK_IMAGES} images")
    ap.add_argument("--train-missing", action="store_true",
                    help="first train the reference of every study model that has none (says how long first; "
                         "an interrupted run resumes)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the models OUT/study.json already measured with the same settings, dataset, weights "
                         "and machine, and measure only the others (a long study can stop and go on)")
    ap.add_argument("--render-only", action="store_true", help="only redraw report.md and the figures")
    add_ray_options(ap, "models' measuring (timing stays here, afterwards)")
    ap.add_argument("--study", default=None,
                    help="with --render-only: the study.json to render into OUT (default: OUT/study.json)")


def _given(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def parse_weights(items: list[str] | None) -> dict[str, str] | None:
    """MODEL=CHECKPOINT pairs, each checkpoint an existing file."""
    if not items:
        return None
    out = {}
    for item in items:
        model, sep, path = item.partition("=")
        if not sep or not model or not path:
            raise XpruneError(f"--weights takes MODEL=CHECKPOINT, got '{item}'")
        if not Path(path).is_file():
            raise XpruneError(f"checkpoint not found: {path}")
        out[model] = path
    return out


def settings_from_args(args: argparse.Namespace, log: Log = print) -> StudySettings:
    """StudySettings from parsed options: the quick preset with `--quick`, else the paper's; `args.command` is
    recorded in the results."""
    from xprune.reference import reference_models

    changes = {"data": Path(args.data) if args.data else None, "threads": args.threads,
               "resume": getattr(args, "resume", False),
               "peer": not args.no_peer, "keep_onnx": args.keep_onnx, "command": args.command,
               **_given(onnx_map=args.onnx_map, bootstrap_resamples=args.resamples, order_seed=args.order_seed,
                        models=args.models, criteria=tuple(args.criteria) if args.criteria else None,
                        rates=tuple(args.rates) if args.rates else None, val_images=args.val_images,
                        calib_images=args.calib_images, backends=tuple(args.backends) if args.backends else None,
                        weights=parse_weights(getattr(args, "weights", None)))}
    if args.quick:
        return StudySettings.quick(Path(args.out), **changes)
    refs = reference_models()
    for m in args.models or default_models():
        if m in ACCURACY_MODELS and m not in refs and m not in changes.get("weights", {}):
            log(f"warning: no reference checkpoint for {m} in xprune/reference/: it gets speed-only rows "
                "(random init); run benchmarks/train_reference.py first for accuracy rows")
    changes.update(_given(speed_rates=tuple(args.speed_rates) if args.speed_rates else None,
                          speed_input_size=args.speed_size))
    return StudySettings.paper(Path(args.out), latency=replace(LATENCY, **_given(runs=args.runs, min_s=args.min_s)),
                               speed_latency=replace(SPEED_LATENCY, **_given(runs=args.speed_runs, min_s=args.min_s)),
                               **changes)


def train_missing(models: list[str], data: Path, log: Log = print) -> list[str]:
    """Train (or resume) the reference of every model in `models` that has none (and of any model whose trained
    backbone one of them starts from), after saying how long each will take on this machine. Returns the models
    trained."""
    from xprune.reference import reference_models
    from xprune.train.reference import default_epochs, estimate_seconds, missing_references, train_reference

    missing = missing_references(models, reference_models())
    if not missing:
        log("--train-missing: every model of the study has its reference")
        return []
    for m in missing:
        epochs = default_epochs(m)
        minutes = estimate_seconds(m, data, epochs) / 60
        log(f"--train-missing: {m}, {epochs} epochs: about {minutes:.0f} min of training steps on this machine "
            "(interrupted, the same command resumes from the last epoch)")
    for m in missing:
        train_reference(m, data, log=log)
    return missing


def run_and_report(args: argparse.Namespace, log: Log = print,
                   synthesize_data: bool = False) -> tuple[Path, Path]:
    """Run the study the options describe (with `--render-only`, only read it) and write report.md and the figures
    into OUT. With `synthesize_data`, a `--data` folder without a dataset gets the synthetic set first. Returns the
    study file and the report."""
    from xprune.study.report import write_report

    out = Path(args.out)
    if args.render_only:
        study = Path(args.study) if args.study else out / STUDY_FILE
    else:
        from xprune.study.sweep import run_study

        settings = settings_from_args(args, log)
        settings.validate()  # before a dataset is generated for a run that cannot start
        if synthesize_data and settings.data is not None and not (settings.data / "annotations").is_dir():
            from xprune.data.synth import SynthConfig, generate
            log(f"generating the synthetic dataset in {settings.data}")
            generate(settings.data, SynthConfig())
        if getattr(args, "train_missing", False):
            from xprune.study.sweep import study_dataset
            train_missing(list(settings.models), study_dataset(settings), log)
            settings = settings_from_args(args, log)  # the new references give accuracy rows
        study = run_study(settings, log=log, ray=ray_options(args, "study"))
    return study, write_report(study, out)
