"""The `xprune` command line: parses, calls the library, prints. Bad input exits 2 with one line on stderr."""

from __future__ import annotations

import argparse
import copy
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
    check_rate(args.rate)
    scores = read_scores(args.scores)
    det = _load(args, _classes_from_data(args.data) if args.weights == "none" else None)
    plan = plan_pruning(det, scores, args.rate, args.candidates)
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

    p = sub.add_parser("score", help="score every conv layer (attr or l1) and write scores.json")
    _model_args(p)
    p.add_argument("--method", default="attr")
    p.add_argument("--out", required=True)
    p.add_argument("--calib-images", type=_positive_int, default=64)
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("prune", help="zero the least important layers; write the checkpoint and a plan JSON")
    _model_args(p)
    p.add_argument("--scores", required=True)
    p.add_argument("--rate", type=float, default=0.05, help="fraction of candidate layers to zero, in (0, 1)")
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
        args.func(args)
    except XpruneError as e:
        sys.stderr.write(f"xprune: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("xprune: interrupted\n")
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
