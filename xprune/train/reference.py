"""Reference models: each family trained from scratch on a dataset folder, on whatever machine runs it, with the
command, the machine, the per-epoch log and the val mAP (re-measured from the saved fp16 file) recorded beside the
checkpoint. Checkpoints over `COMMIT_LIMIT` go to the user's cache folder; only their JSON, log and SHA-256 are kept
in the package. Interrupted runs resume from the cache."""

from __future__ import annotations

import json
import platform
import shutil
import sys
from pathlib import Path
from typing import Callable

import torch

from xprune.data.coco import CocoDetectionSet
from xprune.errors import XpruneError
from xprune.files import atomic_path, file_sha256, read_json, write_json
from xprune.models import build_detector, load_checkpoint, save_checkpoint
from xprune.models.zoo import family
from xprune.reference import HERE as REFERENCE_DIR
from xprune.reference import cache_dir
from xprune.train.loop import TrainSettings, epoch_line, seconds_per_step, train_detector

Log = Callable[[str], None]

COMMIT_LIMIT = 8 * 1024 * 1024  # bytes: bigger checkpoints stay in the cache, not in git
YOLO_FAMILIES = ("yolov8n",)
TORCHVISION_FAMILIES = ("ssdlite320-mbv3", "ssd-mobilenetv2", "ssd-shufflenetv2", "ssd-resnet50",
                        "retinanet-r50-fpn", "fasterrcnn-r50-fpn")
JAX_FAMILIES = ("tinyssd-jax",)  # optax loop of xprune.train.jax_loop (extra `jax`)
FAMILIES = YOLO_FAMILIES + TORCHVISION_FAMILIES + JAX_FAMILIES
# ShuffleNetV2 under SSD's augmentation: 30 epochs gave val 0.241 (the reference at commit f830237), 60 gave 0.391.
DEFAULT_EPOCHS = {"yolov8n": 30, "tinyssd-jax": 40, "ssd-shufflenetv2": 60, "ssd-resnet50": 60}
TORCHVISION_EPOCHS = 30
# SSD's scale augmentation for the families trained from scratch; the ResNet-50 families, not yet trained, start with it.
TORCHVISION_AUGMENT = {"ssd-shufflenetv2": "ssd", "ssd-resnet50": "ssd", "retinanet-r50-fpn": "ssd",
                       "fasterrcnn-r50-fpn": "ssd"}
# bf16 autocast where the backbone is big: a bf16 training step of SSD-ResNet50 (batch 16, 320 px) took 4.22 s on this
# project's 2-core CPU (AVX512-BF16; benchmarks/results/training/step-time.md). Its first run (30 epochs at the default learning rate) underfit
# (loss 5.27, val mAP 0.069), but fp32 did no better over the first three epochs: both stalled at the warm-up's peak
# (bf16 17.5, 15.3, 17.7; fp32 17.5, 17.0, 17.4; benchmarks/results/training/, with precision_check.py's gradients).
TORCHVISION_PRECISION = {"ssd-resnet50": "bf16", "retinanet-r50-fpn": "bf16", "fasterrcnn-r50-fpn": "bf16"}
# So the ResNet-50 backbones, from scratch, take a lower peak learning rate than the default 2e-3 (a choice from the
# SSD run's stall; the two-stage and RetinaNet runs have not tested it) and, like ShuffleNetV2, 60 epochs for SSD:
# 20 epochs at 5e-4 ended at val mAP 0.061, loss 5.46 (benchmarks/results/training/ssd-resnet50-synth-bf16-20ep.*).
TORCHVISION_LR = {"ssd-resnet50": 5e-4, "retinanet-r50-fpn": 5e-4, "fasterrcnn-r50-fpn": 5e-4}
# RetinaNet and Faster R-CNN start from SSD-ResNet50's trained ResNet-50, as the paper's models start from ImageNet
# weights: only their FPN and heads start from scratch. From scratch, such detectors need several times the usual
# schedule and group or synchronised batch norm (He et al., "Rethinking ImageNet Pre-training", 2019).
BACKBONE_FROM = {"retinanet-r50-fpn": "ssd-resnet50", "fasterrcnn-r50-fpn": "ssd-resnet50"}
# RoIs per image that Faster R-CNN's box head samples for its loss (torchvision's default 512; Fast R-CNN used 64).
# The box head's cost grows with them: a bf16 training step (batch 16, 320 px) took 20.5 s at 512 on this CPU,
# 9.7 s at 128 (benchmarks/results/training/step-time.md). Training only: inference is unchanged.
TORCHVISION_ROI_SAMPLES = {"fasterrcnn-r50-fpn": 128}
STAMPS = ("synth.json", "trees.json")  # the files that say which generator wrote a dataset folder


def dataset_stamp(data: Path) -> tuple[str, dict]:
    """(dataset tag, stamp dict) of a folder written by `xprune data synth` or `xprune data trees`."""
    for name in STAMPS:
        if (data / name).is_file():
            return name.removesuffix(".json"), json.loads((data / name).read_text())
    raise XpruneError(f"{data} was not written by `xprune data synth` or `xprune data trees` (no {' or '.join(STAMPS)})")


def default_epochs(model: str) -> int:
    return DEFAULT_EPOCHS.get(model, TORCHVISION_EPOCHS)


def estimate_seconds(model: str, data: Path, epochs: int, size: int = 320, train_images: int | None = None) -> float:
    """Training time on this machine: a few timed steps, times the steps of the whole run (an estimate: data loading,
    augmentation and validation come on top for YOLO)."""
    if model in JAX_FAMILIES:
        from xprune.models.jax import require_jax
        require_jax("optax")
        from xprune.train.jax_loop import TrainConfig
        from xprune.train.jax_loop import seconds_per_step as jax_seconds_per_step
        images = len(CocoDetectionSet.from_folder(data, "train", size, limit=train_images))
        batch = TrainConfig(epochs, size).batch_size
        return jax_seconds_per_step(data, size, batch) * (images // batch) * epochs  # the loop drops a last part batch
    train = CocoDetectionSet.from_folder(data, "train", size, limit=train_images)
    batch = 32 if model in YOLO_FAMILIES else TrainSettings(epochs).batch_size
    det = training_detector(model, train.num_classes, size)
    steps = -(-len(train) // batch) * epochs
    return seconds_per_step(det, train, batch, precision=TORCHVISION_PRECISION.get(model, "fp32")) * steps


def training_detector(model: str, num_classes: int, size: int):
    """An untrained detector of `model` with its training-only settings (`TORCHVISION_ROI_SAMPLES`)."""
    det = build_detector(model, "none", num_classes=num_classes, input_size=size)
    if model in TORCHVISION_ROI_SAMPLES:
        det.model.roi_heads.fg_bg_sampler.batch_size_per_image = TORCHVISION_ROI_SAMPLES[model]
    return det


def missing_references(models: list[str], have: set[str] | dict) -> list[str]:
    """The models of `models` that xprune can train and that have no reference, in training order: a model whose
    backbone starts from another's reference comes after that one, which is added when missing too."""
    out: list[str] = []
    for m in models:
        if m not in FAMILIES or m in have:
            continue
        source = BACKBONE_FROM.get(m)
        for name in ([source] if source and source not in have else []) + [m]:
            if name not in out:
                out.append(name)
    return out


def start_from_backbone(det, model: str, tag: str, size: int) -> dict:
    """Load the ResNet-50 of `model`'s `BACKBONE_FROM` reference on dataset `tag` into `det`'s backbone body; return
    which reference it was (name and SHA-256)."""
    from xprune.models.torchvision_family import resnet50_state_from_ssd
    from xprune.reference import reference_models

    source = BACKBONE_FROM[model]
    refs = reference_models(tag)
    if source not in refs:
        raise XpruneError(f"{model} starts from the trained ResNet-50 of {source}, which has no reference on '{tag}' "
                          f"here: train it first (benchmarks/train_reference.py {source})")
    weights = load_checkpoint(Path(refs[source]["path"]), source, size).model.backbone.state_dict()
    det.model.backbone.body.load_state_dict(resnet50_state_from_ssd(weights))
    return {"reference": f"{source}-{tag}", "sha256": refs[source]["sha256"]}


def _stamp_summary(tag: str, stamp: dict) -> dict:
    return {k: v for k, v in stamp.items() if not k.startswith("size_stats")}


def train_reference(model: str, data: Path, epochs: int | None = None, size: int = 320,
                    train_images: int | None = None, log: Log = print) -> dict:
    """Train `model` on `data` (resuming an interrupted run), save the reference and return its metrics dict."""
    from xprune.evaluate.coco_map import evaluate_map

    if model not in FAMILIES:
        raise XpruneError(f"no reference training for '{model}'; choose one of: {', '.join(FAMILIES)}")
    tag, stamp = dataset_stamp(data)
    epochs = epochs or default_epochs(model)
    name = f"{model}-{tag}"
    work = cache_dir() / "train" / name
    work.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()  # read before training: Ultralytics changes it
    log_path = REFERENCE_DIR / f"{name}.log"
    recipe: dict = {}  # training choices beyond the epochs, recorded in the JSON
    if model in YOLO_FAMILIES:
        from xprune.train.yolo import train_yolo
        best, results_csv = train_yolo(model, data, epochs, size, work / "run", train_images=train_images)
        shutil.copy(results_csv, log_path.with_suffix(".csv"))
        train_seconds = float(results_csv.read_text().strip().splitlines()[-1].split(",")[1])  # cumulative time
        trained = load_checkpoint(best, model, size)
        torch.set_num_threads(threads)
    elif model in JAX_FAMILIES:
        from xprune.models.jax import require_jax
        require_jax("optax")
        from xprune.train.jax_loop import train_tinyssd
        last, history = train_tinyssd(data, epochs, size, log_path, work_dir=work, train_images=train_images, log=log)
        train_seconds = sum(h["seconds"] for h in history)
        trained = load_checkpoint(last, model, size)
    else:
        train = CocoDetectionSet.from_folder(data, "train", size, limit=train_images)
        trained = training_detector(model, train.num_classes, size)
        if model in BACKBONE_FROM:
            start = work / "backbone.json"  # what a fresh run started from; a resumed run's state overrides it
            if not (work / "state.pt").is_file():
                source = start_from_backbone(trained, model, tag, size)
                write_json(start, source)
                log(f"{model}: the backbone starts from the ResNet-50 of {source['reference']}")
            recipe["backbone_from"] = read_json(start) if start.is_file() else None
        if model in TORCHVISION_ROI_SAMPLES:
            recipe["roi_samples"] = TORCHVISION_ROI_SAMPLES[model]
        lines: list[str] = []

        def log_epoch(line: str) -> None:  # progress in the cache: an unfinished run leaves nothing in the package
            log(line)
            lines.append(line)
            with atomic_path(work / log_path.name) as tmp:
                tmp.write_text("\n".join(lines) + "\n")

        augment = TORCHVISION_AUGMENT.get(model, "flip")
        precision = TORCHVISION_PRECISION.get(model, "fp32")
        lr = TORCHVISION_LR.get(model, TrainSettings.lr)
        history = train_detector(trained, train, TrainSettings(epochs, lr=lr, augment=augment, precision=precision),
                                 work / "state.pt", log=log_epoch)
        train_seconds = sum(h["seconds"] for h in history)  # over every run that contributed epochs
        with atomic_path(log_path) as tmp:  # from the state's history: a resumed run's log keeps the epochs before it
            tmp.write_text("".join(epoch_line(h, epochs) + "\n" for h in history))

        recipe.update(augment=augment, precision=precision, lr=lr)

    val = CocoDetectionSet.from_folder(data, "val", size)
    trained.category_ids = val.category_ids
    meta = {"dataset": tag, "dataset_stamp": _stamp_summary(tag, stamp), "epochs": epochs, **recipe,
            "train_images": train_images, "input_size": size, "train_seconds": round(train_seconds, 1),
            "machine": platform.processor() or platform.machine(), "threads": threads,
            "command": " ".join(Path(sys.argv[0]).name if i == 0 else a for i, a in enumerate(sys.argv))}
    staged = work / f"{name}{family(model).checkpoint_suffix}"
    save_checkpoint(trained, staged, meta=meta, half=True)
    size_bytes = staged.stat().st_size
    stored = "package" if size_bytes <= COMMIT_LIMIT else "cache"
    target = (REFERENCE_DIR if stored == "package" else cache_dir() / "reference") / staged.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(staged, target)
    # The metrics describe the saved fp16 file, so they are measured from it.
    det = load_checkpoint(target, model, size)
    metrics = evaluate_map(det, val)
    info = {"model": model, "checkpoint": target.name, "stored": stored, "sha256": file_sha256(target),
            "bytes": size_bytes, "val_map": metrics["map"], "val_map50": metrics["map50"], "val_images": len(val),
            "log": log_path.name if log_path.is_file() else log_path.with_suffix(".csv").name, **meta}
    with atomic_path(REFERENCE_DIR / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")
    log(f"{name}: mAP@[.50:.95] {metrics['map']:.4f}  mAP@.50 {metrics['map50']:.4f}  -> {target} ({stored})")
    return info
