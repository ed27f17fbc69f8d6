"""Commands of the export stage: export (ONNX, or an engine a backend of the registry builds from it) and fold."""

from __future__ import annotations

import sys
from pathlib import Path

from xprune.cli.common import batch_profile, classes_from_data, load_detector, model_args, positive_int
from xprune.errors import XpruneError

ONNX = "onnx"  # `--engine onnx`: the export itself, no engine built from it


def cmd_export(args) -> None:
    from xprune.export.onnx_export import export_onnx
    from xprune.runtime.registry import EngineOptions, engine_builder, engine_names
    builder = None if args.engine == ONNX else engine_builder(args.engine)
    if builder is not None:
        builder.available()  # fail before the minutes of export work, not after
    elif any([args.fp16, args.bf16, args.int8, args.timing_cache, args.dynamic_batch]):
        raise XpruneError("--fp16, --bf16, --int8, --timing-cache and --dynamic-batch apply to engine builds "
                          f"(--engine {' / '.join(engine_names())}) only")
    det = load_detector(args, classes_from_data(args.data) if args.weights == "none" else None)
    out = Path(args.out)
    onnx_path = out if builder is None else out.with_suffix(".onnx")
    report = export_onnx(det, onnx_path, fold=not args.no_fold, log=lambda m: print(m, file=sys.stderr))
    _print_fold_report(report)
    from xprune.files import write_json
    write_json(onnx_path.with_suffix(onnx_path.suffix + ".json"), report)
    print(f"ONNX: {onnx_path}")
    if builder is not None:
        data, cache = (Path(p) if p else None for p in (args.data, args.timing_cache))
        options = EngineOptions(fp16=args.fp16, bf16=args.bf16, int8=args.int8, calibration_data=data,
                                calibration_images=args.calib_images, input_size=det.input_size,
                                workspace_gb=args.workspace_gb, timing_cache=cache, dynamic_batch=args.dynamic_batch)
        sidecar = builder.build(onnx_path, out, options)
        print(f"{builder.label} engine ({sidecar['precision']}): {out}")


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
    _print_fold_report(report.as_dict())
    print(f"folded {report.folded_tensors} input-independent tensors -> {args.output}")


def add_parsers(sub) -> None:
    from xprune.runtime.registry import engine_names
    p = sub.add_parser("export", help="export to ONNX (zeroed layers folded out) or build an engine from it")
    model_args(p)
    p.add_argument("--engine", choices=[ONNX, *engine_names()], default=ONNX,
                   help="onnx, or the engine to build from the export")
    p.add_argument("--out", required=True, help="output .onnx (or the engine file with --engine NAME)")
    p.add_argument("--no-fold", action="store_true", help="keep the zeroed layers in the graph")
    p.add_argument("--fp16", action="store_true",
                   help="engine build: allow fp16 kernels (trt); store the weights in fp16 (openvino)")
    p.add_argument("--bf16", action="store_true", help="engine build: infer in bf16 (openvino, on CPUs that have it)")
    p.add_argument("--int8", action="store_true", help="engine build: int8 with calibration batches from --data")
    p.add_argument("--calib-images", type=positive_int, default=64)
    p.add_argument("--workspace-gb", type=float, default=4.0)
    p.add_argument("--timing-cache", default=None, help="engine build: timing cache file (read and updated)")
    p.add_argument("--dynamic-batch", type=batch_profile, default=None, metavar="MIN,OPT,MAX",
                   help="engine build: a dynamic batch profile, e.g. 1,4,8")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("fold", help="fold input-independent tensors (zeroed layers) out of any static-shape ONNX model")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--input-shape", default=None, help="fix dynamic dims, e.g. images:1x3x320x320")
    p.set_defaults(func=cmd_fold)
