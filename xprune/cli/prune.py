"""Commands of the scoring and pruning stages: models, data synth and trees, score, prune, evaluate."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from xprune.cli.common import Parser, classes_from_data, load_detector, model_args, positive_int
from xprune.errors import XpruneError


def cmd_models(args) -> None:
    from xprune.models.zoo import FAMILIES
    for f in FAMILIES.values():
        print(f"{f.name:<20} {f.default_size:>4}  {f.about}")


def cmd_data_synth(args) -> None:
    from xprune.data.synth import SynthConfig, generate
    cfg = SynthConfig(image_size=args.image_size, train=args.train, val=args.val, calib=args.calib, seed=args.seed)
    out = generate(args.out, cfg, overwrite=args.overwrite, progress=True)
    stats = json.loads((out / "synth.json").read_text())["size_stats"]
    mix = ", ".join(f"{k} {v:.0%}" for k, v in stats["fractions"].items())
    print(f"synthetic dataset: {out} (train {cfg.train}, val {cfg.val}, calib {cfg.calib} images); "
          f"val objects {mix}, {stats['objects_per_image']:.1f} per image")


def cmd_data_trees(args) -> None:
    from xprune.data.trees import TreesConfig, build_trees
    cfg = TreesConfig(tile=args.tile, overlap=args.overlap, calib=args.calib)
    print(build_trees(args.out, cfg, wheel=args.wheel, overwrite=args.overwrite).summary())


def cmd_score(args) -> None:
    from xprune.data.coco import calibration_set
    from xprune.importance.criteria import get_criterion
    from xprune.importance.scores import score_layers, write_scores
    criterion = get_criterion(args.method)
    det = load_detector(args, classes_from_data(args.data) if args.weights == "none" else None)
    use_data = criterion.needs_data and args.data
    calib = calibration_set(args.data, det.input_size, args.calib_images) if use_data else None
    if use_data:
        from xprune.data.splits import calibration_overlap
        overlap = calibration_overlap(args.data, args.calib_images)
        if overlap.overlaps:  # fine for ranking layers; a budget measured on them would flatter the model
            print(f"warning: {overlap.describe()}; fine for scores, never for measuring what pruning costs",
                  file=sys.stderr)
    doc = score_layers(det, criterion.name, calib, batch_size=args.batch_size, progress=True, seed=args.seed,
                       weights=args.weights)
    write_scores(args.out, doc)
    lowest = sorted(doc["layers"], key=lambda e: e["rank"])[:5]
    print(f"scored {len(doc['layers'])} conv layers with {args.method} -> {args.out}")
    print("least important: " + ", ".join(e["layer"] for e in lowest))


def cmd_prune(args) -> None:
    from xprune.prune.run import PruneRequest, prune_checkpoint
    request = PruneRequest(weights=args.weights, scores=args.scores, out=args.out, model=args.model,
                           input_size=args.input_size, data=args.data, rate=args.rate, max_map_drop=args.max_map_drop,
                           target_macs=args.target_macs,
                           policy=args.candidates, rank=args.rank, held_out_images=args.held_out_images,
                           max_rate=args.max_rate, finetune_epochs=args.finetune_epochs,
                           finetune_batch_size=args.finetune_batch_size, finetune_lr=args.finetune_lr,
                           finetune_images=args.finetune_images, step_rate=args.step_rate, step_macs=args.step_macs,
                           plan_file=args.plan,
                           search_file=args.search_report, search_split=args.search_split,
                           finetune_schedule=args.finetune_schedule, distill=not args.no_distill,
                           distill_weight=args.distill_weight)
    plan = prune_checkpoint(request, log=lambda message: print(message, file=sys.stderr), progress=True)
    for e in plan.selected:
        print(f"zeroed {e.layer:<40} score {e.score:.4g}{_fold_note(e)}  ({e.reason})")
    for e in plan.skipped:
        print(f"kept   {e.layer:<40} score {e.score:.4g}{_fold_note(e)}  ({e.reason})")
    folded = f", {plan.fold['removed_mac_fraction']:.1%} of the exported MACs folded out" if plan.fold else ""
    print(f"{len(plan.selected)} of {plan.candidates} candidate layers zeroed{folded} -> {args.out}, "
          f"plan {request.plan_path}")
    target = (plan.fold or {}).get("target")
    if target:
        how = "proven optimal" if target["optimal"] else "greedy, not proven optimal"
        print(f"target {target['fraction']:.1%} of the MACs: {target['reached']:.1%} removed by "
              f"{len(target['units'])} of {target['candidate_units']} units ({how})")


def _fold_note(choice) -> str:
    return f"  fold removes {choice.fold_macs / 1e6:.1f} MMACs" if choice.fold_macs is not None else ""


def cmd_evaluate(args) -> None:
    from xprune.bench.latency import LatencyProtocol
    from xprune.data.coco import CocoDetectionSet
    from xprune.files import write_json
    from xprune.models import file_sha256
    from xprune.study.measure import evaluation_row, evaluation_table
    det = load_detector(args, classes_from_data(args.data, args.split) if args.weights == "none" else None)
    val = CocoDetectionSet.from_folder(args.data, args.split, det.input_size, limit=args.limit)
    if det.category_ids is None and det.num_classes != val.num_classes:
        raise XpruneError(f"model has {det.num_classes} classes, dataset {val.num_classes}")
    weights_hash = file_sha256(args.weights) if Path(args.weights).is_file() else args.weights
    row = evaluation_row(det, val, LatencyProtocol(runs=args.latency_runs), weights_hash)
    print(evaluation_table([row]))
    if args.out:
        write_json(args.out, [row])


def add_parsers(sub) -> None:
    p = sub.add_parser("models", help="list the detector families")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("data", help="datasets")
    dsub = p.add_subparsers(dest="data_command", required=True, parser_class=Parser)
    s = dsub.add_parser("synth", help="write the deterministic synthetic COCO-format dataset")
    s.add_argument("--out", required=True)
    from xprune.data.synth import SynthConfig
    defaults = SynthConfig()
    s.add_argument("--train", type=positive_int, default=defaults.train)
    s.add_argument("--val", type=positive_int, default=defaults.val)
    s.add_argument("--calib", type=positive_int, default=defaults.calib)
    s.add_argument("--image-size", type=positive_int, default=defaults.image_size)
    s.add_argument("--seed", type=int, default=defaults.seed)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_data_synth)
    s = dsub.add_parser("trees", help="write a COCO-format tree-crown dataset from deepforest's NEON sample images")
    s.add_argument("--out", required=True)
    s.add_argument("--tile", type=positive_int, default=320, help="tile size in pixels (the model's input size)")
    s.add_argument("--overlap", type=float, default=0.25, help="fraction of a tile shared with its neighbour, in [0, 0.9]")
    s.add_argument("--calib", type=positive_int, default=64, help="train tiles copied into the 'calib' split")
    s.add_argument("--wheel", default=None, help="a downloaded deepforest wheel to read the sample files from "
                                                 "(default: an installed deepforest, else the wheel from PyPI, checked "
                                                 "against its pinned SHA-256, into the cache)")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_data_trees)

    p = sub.add_parser("score", help="score every conv layer and write scores.json")
    model_args(p)
    p.add_argument("--method", default="attr", help="attr (default), l1, taylor, hrank, random, gradshap (needs captum)")
    p.add_argument("--out", required=True)
    p.add_argument("--calib-images", type=positive_int, default=64)
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_score)

    from xprune.prune.run import DEFAULT_RATE, PruneRequest
    d = PruneRequest("", "", "")
    p = sub.add_parser("prune", help="zero the least important layers; write the checkpoint and a plan JSON")
    model_args(p)
    p.add_argument("--scores", required=True)
    p.add_argument("--rate", type=float, default=None,
                   help=f"fraction of candidate layers to zero, in (0, 1) (default {DEFAULT_RATE})")
    p.add_argument("--max-map-drop", type=float, default=None,
                   help="instead of --rate: the largest rate whose mAP drop on held-out images (never train images: "
                        "the first --held-out-images of --search-split) is <= D (absolute, 0.01 = one point)")
    p.add_argument("--target-macs", type=float, default=None,
                   help="instead of --rate: remove at least this fraction of the exported MACs, in (0, 1), zeroing "
                        "the least total importance (the choice is by MACs itself: --rank does not apply); with "
                        "--max-map-drop: walk toward it in steps of --step-macs, stopping where the budget does")
    p.add_argument("--search-split", default=d.search_split,
                   help="split the mAP budget is measured on (default val: its first images; never train)")
    p.add_argument("--held-out-images", type=positive_int, default=d.held_out_images,
                   help="images of --search-split the budget is measured on (at most half of val)")
    p.add_argument("--max-rate", type=float, default=None, help="upper bound of the --max-map-drop search")
    p.add_argument("--search-report", default=None, help="search JSON (default: OUT with .search.json)")
    p.add_argument("--candidates", default=d.policy, help="safe (default) or all (the paper's)")
    p.add_argument("--rank", default=d.rank,
                   help="plain (default): lowest score first; per-mac: lowest score per MAC the fold removes first")
    p.add_argument("--finetune-epochs", type=positive_int, default=None,
                   help="with --max-map-drop: prune in steps, fine-tuning E epochs on the train split after a step "
                        "over the budget")
    p.add_argument("--step-rate", type=float, default=d.step_rate, help="fraction of candidate layers zeroed per step")
    p.add_argument("--step-macs", type=float, default=d.step_macs,
                   help="with --target-macs and --max-map-drop: fraction of the MACs each step removes (default "
                        f"{d.step_macs})")
    p.add_argument("--finetune-lr", type=float, default=d.finetune_lr,
                   help="default: a fraction of the family's reference learning rate")
    p.add_argument("--finetune-schedule", default=d.finetune_schedule, help="one-cycle (default) or cosine")
    p.add_argument("--no-distill", action="store_true", help="fine-tune without distillation from the unpruned model")
    p.add_argument("--distill-weight", type=float, default=d.distill_weight,
                   help="w in: family loss + w x distillation term")
    p.add_argument("--finetune-batch-size", type=positive_int, default=d.finetune_batch_size)
    p.add_argument("--finetune-images", type=positive_int, default=None, help="fine-tune on the first N train images")
    p.add_argument("--out", required=True)
    p.add_argument("--plan", default=None, help="plan JSON path (default: OUT with .plan.json)")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("evaluate", help="COCO mAP, params, MACs and PyTorch CPU latency of one model")
    model_args(p, data_required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate the first N images only")
    p.add_argument("--latency-runs", type=positive_int, default=100)
    p.add_argument("--out", default=None)
    p.set_defaults(func=cmd_evaluate)
