"""`xprune auto`: score, budgeted prune with fine-tuning, export with the fold, benchmark, report, in one command."""

from __future__ import annotations

import sys

from xprune.cli.common import positive_int
from xprune.runtime.registry import engine_names


def cmd_auto(args) -> None:
    from xprune.auto.run import AutoSettings, run_auto
    s = AutoSettings(weights=args.weights, data=args.data, out=args.out, model=args.model, method=args.method,
                     max_map_drop=args.max_map_drop, score_images=args.score_images, search_split=args.search_split,
                     held_out_images=args.held_out_images, rank=args.rank, finetune_epochs=args.finetune_epochs,
                     search=args.search, target_macs=args.target_macs, step_macs=args.step_macs,
                     distill=not args.no_distill,
                     finetune_images=args.finetune_images, step_rate=args.step_rate, max_rate=args.max_rate,
                     val_images=args.val_images, runs=args.runs, threads=args.threads, engine=args.engine,
                     fp16=args.fp16)
    report = run_auto(s, log=lambda m: print(m, file=sys.stderr), command=" ".join(["xprune", *sys.argv[1:]]))
    print(report.read_text())
    print(f"report: {report}")


def add_parsers(sub) -> None:
    from xprune.auto.run import AutoSettings
    d = AutoSettings("", "", "")
    p = sub.add_parser("auto", help="the whole job on your model and data: score, prune under an mAP budget with "
                                    "fine-tuning, export with the fold, benchmark, report (resumable)")
    p.add_argument("--weights", required=True, help="your checkpoint (Ultralytics .pt, xprune .pt, or a state_dict)")
    p.add_argument("--model", default=None, help="family; optional when the checkpoint says (see `xprune models`)")
    p.add_argument("--data", required=True, help="COCO-format folder or Ultralytics data.yaml with calib/train/val")
    p.add_argument("--out", required=True, help="folder for every stage's file and report.md")
    p.add_argument("--method", default=d.method, help=f"importance criterion (default {d.method})")
    p.add_argument("--max-map-drop", type=float, default=d.max_map_drop, help="absolute, 0.01 = one mAP point")
    p.add_argument("--score-images", type=positive_int, default=d.score_images, help="calib images scored on")
    p.add_argument("--search-split", default=d.search_split,
                   help="split the mAP budget is measured on, never a train image (default val: its first images, "
                        "the report on the rest)")
    p.add_argument("--held-out-images", type=positive_int, default=d.held_out_images,
                   help="images of the search split the budget is measured on (at most half of val)")
    p.add_argument("--search", default=d.search,
                   help="mac-target (default): walk toward --target-macs of the exported MACs in steps of "
                        "--step-macs until the budget stops it; rate: the largest number of layers within the budget")
    p.add_argument("--target-macs", type=float, default=d.target_macs,
                   help=f"the walk's goal, a fraction of the exported MACs (default {d.target_macs})")
    p.add_argument("--step-macs", type=float, default=d.step_macs, help=f"the walk's step (default {d.step_macs})")
    p.add_argument("--finetune-epochs", type=int, default=d.finetune_epochs,
                   help=f"after a step over the budget (default {d.finetune_epochs}); 0: no fine-tuning")
    p.add_argument("--finetune-images", type=positive_int, default=d.finetune_images,
                   help="fine-tune on the first N train images (default: all)")
    p.add_argument("--no-distill", action="store_true", help="fine-tune without distillation from the unpruned model")
    p.add_argument("--rank", default=d.rank, help="the rate search's ranking: plain (default) or per-mac")
    p.add_argument("--step-rate", type=float, default=d.step_rate, help="the rate search's step, in layers")
    p.add_argument("--max-rate", type=float, default=d.max_rate, help="the rate search's largest rate")
    p.add_argument("--val-images", type=positive_int, default=None,
                   help="report mAP on N val images after the search's")
    p.add_argument("--runs", type=positive_int, default=d.runs, help="interleaved timing rounds")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--engine", default=d.engine, help="onnx (default), or also build an engine from the folded model: "
                   + ", ".join(engine_names()))
    p.add_argument("--fp16", action="store_true", help="with an --engine build")
    p.set_defaults(func=cmd_auto)
