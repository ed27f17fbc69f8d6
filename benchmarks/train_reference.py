"""Train the reference models on the synthetic dataset, on this CPU, and record how.

    python benchmarks/train_reference.py yolov8n            # Ultralytics trainer
    python benchmarks/train_reference.py ssd-mobilenetv2    # plain PyTorch loop over xprune's Detector.loss

Each run writes the checkpoint (fp16, a few MB) to xprune/reference/<name>-synth.pt, its reference metrics
(baseline mAP measured by xprune's own evaluator on the synthetic validation split) to the .json beside it, and
the training log to benchmarks/results/train-<name>.log.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xprune.data.coco import CocoDetectionSet  # noqa: E402
from xprune.data.synth import SynthConfig, generate  # noqa: E402
from xprune.data.transforms import collate_targets  # noqa: E402
from xprune.evaluate.coco_map import evaluate_map  # noqa: E402
from xprune.models import build_detector, load_checkpoint, save_checkpoint  # noqa: E402
from xprune.models.yolo import quiet_ultralytics_env  # noqa: E402

REFERENCE_DIR = ROOT / "xprune" / "reference"
RESULTS_DIR = ROOT / "benchmarks" / "results"


def cache_dir() -> Path:
    """Where training runs keep their per-epoch checkpoints, so an interrupted run resumes."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "xprune" / "train"


def train_yolo(data: Path, epochs: int, size: int, log: Path, run_name: str) -> Path:
    """Ultralytics' trainer; it saves last.pt every epoch, and a rerun resumes from it."""
    quiet_ultralytics_env()
    from ultralytics import YOLO

    work = cache_dir()
    last = work / run_name / "weights" / "last.pt"
    if last.is_file() and not (work / run_name / "weights" / "done").is_file():
        print(f"resuming from {last}", flush=True)
        YOLO(str(last)).train(resume=True)
    else:
        model = YOLO("yolov8n.yaml")
        model.train(data=str(data / "data.yaml"), epochs=epochs, imgsz=size, batch=32, workers=2, device="cpu",
                    project=str(work), name=run_name, exist_ok=True, plots=False, amp=False, pretrained=False,
                    seed=0, deterministic=True, close_mosaic=max(2, epochs // 4), val=True, verbose=True)
    run = work / run_name
    (run / "weights" / "done").write_text("finished\n")
    shutil.copy(run / "results.csv", log.with_suffix(".csv"))
    return run / "weights" / "best.pt"


def train_torchvision(name: str, data: Path, epochs: int, size: int, log: Path, images: int | None) -> Path:
    torch.manual_seed(0)
    train = CocoDetectionSet.from_folder(data, "train", size, limit=images)
    det = build_detector(name, "none", num_classes=train.num_classes, input_size=size)
    params = [p for p in det.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4)
    batch = 16
    steps_per_epoch = math.ceil(len(train) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * steps_per_epoch, pct_start=0.1)
    g = torch.Generator().manual_seed(0)
    lines = []
    for epoch in range(epochs):
        det.model.train()
        order = torch.randperm(len(train), generator=g).tolist()
        total, t0 = 0.0, time.time()
        for s in range(steps_per_epoch):
            idx = order[s * batch:(s + 1) * batch]
            x, targets = collate_targets([train.sample(i, augment=True, generator=g) for i in idx])
            loss = det.train_step_loss(x, targets)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            sched.step()
            total += float(loss)
        line = f"epoch {epoch + 1}/{epochs} loss {total / steps_per_epoch:.4f} time {time.time() - t0:.0f}s"
        print(line, flush=True)
        lines.append(line)
        log.write_text("\n".join(lines) + "\n")
    out = Path(tempfile.mkdtemp(prefix="xprune-tv-")) / "last.pt"
    save_checkpoint(det, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=["yolov8n", "ssd-mobilenetv2", "ssdlite320-mbv3", "ssd-shufflenetv2"])
    ap.add_argument("--data", default=str(ROOT / "data" / "synth"))
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--train-images", type=int, default=None, help="use the first N training images")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    data = generate(args.data, SynthConfig())
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    log = RESULTS_DIR / f"train-{args.model}.log"
    threads = torch.get_num_threads()  # read before training: trainers may change it
    t0 = time.time()
    if args.model == "yolov8n":
        epochs = args.epochs or 40
        trained = train_yolo(data, epochs, args.size, log, f"{args.model}-{Path(args.data).name}")
    else:
        epochs = args.epochs or 60
        trained = train_torchvision(args.model, data, epochs, args.size, log, args.train_images)
    train_seconds = time.time() - t0

    det = load_checkpoint(trained, args.model, args.size)
    val = CocoDetectionSet.from_folder(data, "val", args.size)
    det.category_ids = val.category_ids
    ckpt = REFERENCE_DIR / f"{args.model}-synth.pt"
    meta = {"dataset": "xprune synthetic shapes", "synth_config": SynthConfig().__dict__, "epochs": epochs, "train_images": args.train_images,
            "input_size": args.size, "train_seconds": round(train_seconds, 1), "machine": platform.processor() or platform.machine(),
            "threads": threads, "command": " ".join(sys.argv)}
    save_checkpoint(det, ckpt, meta=meta, half=True)
    # Reference metrics live next to the weights they describe; they are re-measured from the saved fp16 file.
    det = load_checkpoint(ckpt, args.model, args.size)
    metrics = evaluate_map(det, val)
    (REFERENCE_DIR / f"{args.model}-synth.json").write_text(json.dumps(
        {"model": args.model, "checkpoint": ckpt.name, "val_map": metrics["map"], "val_map50": metrics["map50"],
         "val_images": len(val), **meta}, indent=2) + "\n")
    print(f"{args.model}: mAP@[.50:.95] {metrics['map']:.4f}  mAP@.50 {metrics['map50']:.4f}  -> {ckpt}")


if __name__ == "__main__":
    main()
