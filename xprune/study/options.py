"""Options of a study run, shared by `xprune study` and `benchmarks/reproduce.py`."""

from __future__ import annotations

import argparse
from pathlib import Path

from xprune.bench.latency import LatencyProtocol
from xprune.runtime.registry import BACKENDS

ACCURACY_MODELS = ["yolov8n", "ssdlite320-mbv3"]
SPEED_MODELS = ["ssd-mobilenetv2", "ssd-shufflenetv2"]


def add_study_arguments(ap: argparse.ArgumentParser, out_default: str, data_default: str | None) -> None:
    ap.add_argument("--out", default=out_default, help=f"output folder (default: {out_default})")
    ap.add_argument("--data", default=data_default,
                    help="COCO-format dataset; the synthetic set is generated there when missing")
    ap.add_argument("--models", nargs="+", default=None,
                    help=f"default: {' '.join(ACCURACY_MODELS + SPEED_MODELS)}")
    ap.add_argument("--criteria", nargs="+", default=None, help="default: l1 attr")
    ap.add_argument("--rates", type=float, nargs="+", default=None, help="default: 0.01 0.02 0.05 0.10 0.15 0.20")
    ap.add_argument("--speed-rates", type=float, nargs="+", default=None,
                    help="rates for speed-only (random-init) models (default: 0.05 0.10)")
    ap.add_argument("--speed-size", type=int, default=256, help="input size of speed-only models")
    ap.add_argument("--val-images", type=int, default=None, help="default: the whole val split (200)")
    ap.add_argument("--calib-images", type=int, default=32)
    ap.add_argument("--runs", type=int, default=60, help="timed runs per variant (accuracy models)")
    ap.add_argument("--min-s", type=float, default=3.0, help="minimum timed seconds per interleaved run")
    ap.add_argument("--speed-runs", type=int, default=40, help="timed runs per variant (speed-only models)")
    ap.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads (default: all cores)")
    ap.add_argument("--no-peer", action="store_true", help="skip the Ultralytics export comparison")
    ap.add_argument("--onnx-map", action="store_true",
                    help="also measure mAP through ONNX Runtime for every variant (adds ~40%% to accuracy models)")
    ap.add_argument("--backends", nargs="+", default=None, help=f"default: {' '.join(BACKENDS)}")
    ap.add_argument("--keep-onnx", action="store_true", help="keep the exported ONNX files in OUT/onnx")
    ap.add_argument("--quick", action="store_true",
                    help="tiny smoke settings: random-init yolov8n at 64 px, rates 0.02 0.05, 3 timed runs, 8 images")
    ap.add_argument("--render-only", action="store_true", help="only redraw report.md and the figures")


def settings_from_args(args: argparse.Namespace, log=print):
    """StudySettings from parsed options; `args.command` is recorded in the results."""
    from xprune.reference import reference_models
    from xprune.study import StudySettings

    out = Path(args.out)
    command = args.command
    if args.quick:
        return StudySettings(
            out=out, models=args.models or ["yolov8n"], criteria=tuple(args.criteria or ("l1", "attr")),
            rates=tuple(args.rates or (0.02, 0.05)), data=(Path(args.data) if args.data else None), calib_images=min(args.calib_images, 8),
            val_images=args.val_images or 8, batch_size=4, use_reference=False, speed_input_size=64,
            latency=LatencyProtocol(warmup_runs=1, warmup_s=0.0, runs=3, min_s=0.0),
            threads=args.threads, onnx_map=args.onnx_map, peer=not args.no_peer,
            backends=tuple(args.backends or BACKENDS), keep_onnx=args.keep_onnx,
            command=command)
    models = args.models or ACCURACY_MODELS + SPEED_MODELS
    refs = reference_models()
    for m in models:
        if m in ACCURACY_MODELS and m not in refs:
            log(f"warning: no reference checkpoint for {m} in xprune/reference/: it gets speed-only rows "
                "(random init); run benchmarks/train_reference.py first for accuracy rows")
    return StudySettings(
        out=out, models=models, criteria=tuple(args.criteria or ("l1", "attr")),
        rates=tuple(args.rates or (0.01, 0.02, 0.05, 0.10, 0.15, 0.20)),
        speed_rates=tuple(args.speed_rates or (0.05, 0.10)), data=(Path(args.data) if args.data else None),
        calib_images=args.calib_images, val_images=args.val_images, speed_input_size=args.speed_size,
        latency=LatencyProtocol(warmup_runs=10, warmup_s=1.0, runs=args.runs, min_s=args.min_s),
        speed_latency=LatencyProtocol(warmup_runs=5, warmup_s=1.0, runs=args.speed_runs, min_s=args.min_s),
        threads=args.threads, onnx_map=args.onnx_map, peer=not args.no_peer,
        backends=tuple(args.backends or BACKENDS), keep_onnx=args.keep_onnx,
        command=command)
