"""What every command shares: one-line argument errors, argument types, loading a detector."""

from __future__ import annotations

import argparse
import sys


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return v


def batch_profile(text: str) -> tuple[int, int, int]:
    try:
        lo, opt, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,OPT,MAX batch sizes, got '{text}'") from None
    if not 1 <= lo <= opt <= hi:
        raise argparse.ArgumentTypeError(f"need 1 <= MIN <= OPT <= MAX, got '{text}'")
    return lo, opt, hi


def model_args(p: argparse.ArgumentParser, data_required: bool = False) -> None:
    p.add_argument("--model", default=None,
                   help="family name (see `xprune models`); optional with an xprune or Ultralytics checkpoint")
    p.add_argument("--weights", default="default", help="'default' (official), 'none' (random init) or a checkpoint path")
    p.add_argument("--input-size", type=positive_int, default=None, help="square input size (multiple of 32)")
    p.add_argument("--data", required=data_required, default=None,
                   help="COCO-format dataset folder, or an Ultralytics data.yaml")


def load_detector(args, num_classes: int | None = None):
    from xprune.models import build_detector
    return build_detector(args.model, args.weights, num_classes=num_classes, input_size=args.input_size)


def classes_from_data(data: str | None, split: str = "val") -> int | None:
    """The class count of the --data folder (or data.yaml), None without one."""
    if not data:
        return None
    from xprune.data.coco import dataset_num_classes
    return dataset_num_classes(data, split)
