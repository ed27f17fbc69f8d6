"""Train a reference model on the synthetic dataset (or the trees dataset), on this machine, and record how.

    python benchmarks/train_reference.py yolov8n                  # Ultralytics trainer
    python benchmarks/train_reference.py ssd-mobilenetv2          # xprune's loop over the family's own loss
    python benchmarks/train_reference.py yolov8n --data data/trees   # after `xprune data trees --out data/trees`

Each run writes xprune/reference/<model>-<dataset>.{json,log} and the fp16 checkpoint: beside them when it is at
most 8 MB, else in ~/.cache/xprune/reference (the JSON records its SHA-256). Every epoch is checkpointed in
~/.cache/xprune/train/ (with the progress log of xprune's own loop); rerunning the same command after an
interruption resumes there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xprune.data.synth import SynthConfig, generate  # noqa: E402
from xprune.errors import XpruneError  # noqa: E402
from xprune.train.reference import FAMILIES, default_epochs, estimate_seconds, train_reference  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=FAMILIES)
    ap.add_argument("--data", default=str(ROOT / "data" / "synth"),
                    help="dataset folder (default: the synthetic set, generated if missing)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--train-images", type=int, default=None, help="use the first N training images")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        data = Path(args.data)
        if data == ROOT / "data" / "synth":
            generate(data, SynthConfig())
        epochs = args.epochs or default_epochs(args.model)
        est = estimate_seconds(args.model, data, epochs, args.size, args.train_images)
        print(f"training {args.model} for {epochs} epochs: about {est / 60:.0f} min of training steps on this "
              "machine (estimated from timed steps)", flush=True)
        train_reference(args.model, data, args.epochs, args.size, args.train_images)
    except XpruneError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
