"""The recovery fine-tuning command: train a pruned checkpoint with its plan's layers held at zero, distilled from
the unpruned model."""

from __future__ import annotations

import sys

from xprune.cli.common import positive_int


def cmd_finetune(args) -> None:
    from xprune.prune.finetune import FinetuneSettings, finetune_checkpoint, report_path_for
    settings = FinetuneSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                warmup_fraction=args.warmup, schedule=args.schedule, distill=not args.no_distill,
                                distill_weight=args.distill_weight)
    report = finetune_checkpoint(args.model, args.weights, args.data, args.epochs, args.out, settings,
                                 input_size=args.input_size, train_images=args.train_images,
                                 val_images=args.val_images, log=lambda line: print(line, file=sys.stderr),
                                 progress=not args.quiet, teacher=args.teacher, trainer=args.trainer)
    distilled = "distilled" if report["distillation"]["on"] else "not distilled"
    if "zeroed_layers" not in report:  # Ultralytics' trainer: its own record
        print(f"fine-tuned with Ultralytics' trainer ({distilled}) -> {args.out}, report {report_path_for(args.out)}")
        return
    print(f"fine-tuned {report['epochs']} epochs ({report['seconds_per_epoch']:.0f} s/epoch, {distilled}), "
          f"{report['zeroed_layers']} pruned layers still zero; val mAP {report['val_map_before']:.4f} -> "
          f"{report['val_map_after']:.4f} -> {args.out}, report {report_path_for(args.out)}")


def add_parsers(sub) -> None:
    from xprune.train.schedule import FINETUNE_LR_FRACTION, SCHEDULES

    p = sub.add_parser("finetune", help="recovery fine-tuning of a pruned checkpoint, pruned layers held at zero")
    p.add_argument("--model", required=True, help="family name (see `xprune models`)")
    p.add_argument("--weights", required=True, help="a checkpoint written by `xprune prune` (it carries the plan)")
    p.add_argument("--data", required=True, help="COCO-format dataset folder with train and val splits")
    p.add_argument("--epochs", type=positive_int, required=True)
    p.add_argument("--out", required=True, help="fine-tuned checkpoint; OUT .finetune.json and the resume state "
                                                "OUT .state.pt are written beside it")
    p.add_argument("--input-size", type=positive_int, default=None)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--lr", type=float, default=None,
                   help=f"peak learning rate (default: {FINETUNE_LR_FRACTION:g} x the family's reference recipe)")
    p.add_argument("--schedule", choices=SCHEDULES, default="one-cycle",
                   help="one-cycle (torch's OneCycleLR) or cosine (linear warm-up, cosine decay)")
    p.add_argument("--warmup", type=float, default=0.1, help="warm-up, as a fraction of all steps")
    p.add_argument("--no-distill", action="store_true", help="no distillation from the unpruned model")
    p.add_argument("--distill-weight", type=float, default=1.0, help="w in: family loss + w x distillation term")
    p.add_argument("--teacher", default=None, help="the unpruned weights to distil from (default: those the "
                                                   "checkpoint's plan was made from)")
    p.add_argument("--trainer", default="xprune",
                   help="xprune's own loop (default; distilled), or ultralytics: a YOLO family through Ultralytics' "
                        "trainer (its augmentation, EMA and warm-up; not distilled)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-images", type=positive_int, default=None, help="train on the first N train images")
    p.add_argument("--val-images", type=positive_int, default=None, help="mAP on the first N val images")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_finetune)
