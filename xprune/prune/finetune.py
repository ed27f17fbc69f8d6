"""Recovery fine-tuning of a pruned detector with its family's own loss, the zeroed layers kept exactly zero.

Training goes through `xprune.train.loop.train_detector` (the family's `train_step_loss`, AdamW, one-cycle schedule,
a state file every epoch). `ZeroMask` keeps the plan's layers at zero: a gradient hook hands AdamW a zero gradient
for their weights, so the first and second moments stay zero and the update (weight decay included, a multiple of
the weight) leaves a zero weight at zero; after every step the weights are set to zero again all the same. Their
biases train: a zeroed conv outputs its bias, and the rest of the network may use that constant.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from xprune.data.coco import CocoDetectionSet, dataset_exists, has_split
from xprune.errors import XpruneError
from xprune.files import file_sha256, write_json
from xprune.models.detector import Detector
from xprune.prune.plan import Plan
from xprune.train.loop import TrainSettings, train_detector, training_stamp

Log = Callable[[str], None]
TRAIN_SPLIT = "train"


class ZeroMask:
    """While entered, the weights of `layers` stay exactly zero through any optimizer step."""

    def __init__(self, detector: Detector, layers: list[str]):
        convs = detector.conv_layers()
        missing = [n for n in layers if n not in convs]
        if missing:
            raise XpruneError(f"the plan names {len(missing)} layers this model does not have (first: {missing[0]})")
        self.layers = list(layers)
        self.weights = [convs[n].weight for n in layers]
        self._handles: list = []

    def __enter__(self) -> ZeroMask:
        for w in self.weights:
            if w.requires_grad:
                self._handles.append(w.register_hook(torch.zeros_like))
        self.rezero()
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def rezero(self) -> None:
        with torch.no_grad():
            for w in self.weights:
                w.zero_()

    def nonzero_layers(self) -> list[str]:
        return [n for n, w in zip(self.layers, self.weights) if bool(w.detach().any())]


@dataclass(frozen=True)
class FinetuneSettings:
    """Fine-tuning: a lower learning rate than training from scratch (the weights are trained already)."""

    epochs: int
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.1
    clip_norm: float = 10.0
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs <= 0:
            raise XpruneError(f"fine-tuning epochs must be a positive integer, got {self.epochs}")
        if self.batch_size <= 0 or not self.lr > 0:
            raise XpruneError(f"fine-tuning needs a positive batch size and learning rate, got {self.batch_size} "
                              f"and {self.lr}")

    def train_settings(self) -> TrainSettings:
        return TrainSettings(**asdict(self))


def train_split(data: str | Path, size: int, images: int | None = None) -> CocoDetectionSet:
    """The dataset's train split (the first `images` of it), or one clear error when it has none."""
    root = Path(data)
    if not dataset_exists(root):
        raise XpruneError(f"dataset not found: {root}")
    if not has_split(root, TRAIN_SPLIT):
        raise XpruneError(f"{root} has no train split (annotations/instances_{TRAIN_SPLIT}.json or a data.yaml "
                          f"'train:' entry): fine-tuning trains on it")
    train = CocoDetectionSet.from_folder(root, TRAIN_SPLIT, size, limit=images)
    if len(train) == 0:
        raise XpruneError(f"the train split of {root} has no images")
    return train


def require_torch(detector: Detector) -> None:
    """Masked fine-tuning runs torch's autograd and optimizers: a JAX family is refused in one line."""
    framework = detector.framework
    if framework != "torch":
        raise XpruneError(f"fine-tuning with zeroed layers held at zero is implemented for the PyTorch families; "
                          f"{detector.family} is a {framework} model")


def _held_at_zero(layers: list[str], inputs: Mapping[str, Any] | None = None) -> dict:
    """What a fine-tuning state's stamp records beside the training settings: the layers held at zero and the
    caller's `inputs` (the weights it started from)."""
    return {"layers": list(layers), **dict(inputs or {})}


def finetune_layers(detector: Detector, train: CocoDetectionSet, layers: list[str], settings: FinetuneSettings,
                    state_path: str | Path, log: Log = print, progress: bool = False,
                    inputs: Mapping[str, Any] | None = None) -> list[dict]:
    """Fine-tune `detector` in place with `layers` held at zero; returns the per-epoch records. The state file
    (written every epoch, stamped with the settings, the layers and the caller's `inputs`) resumes an interrupted
    run; the caller releases it when its output is written."""
    from tqdm import tqdm

    require_torch(detector)

    steps = -(-len(train) // settings.batch_size)
    bar = tqdm(total=settings.epochs * steps, desc="fine-tune", unit="step", disable=not progress, leave=False)

    def log_line(line: str) -> None:
        if line.startswith("resuming after epoch "):
            bar.update(int(line.split()[3].split("/")[0]) * steps)
        bar.clear()
        log(line)
        bar.refresh()

    with ZeroMask(detector, layers) as mask:
        def after_step() -> None:
            mask.rezero()
            bar.update()

        try:
            history = train_detector(detector, train, settings.train_settings(), state_path, log=log_line,
                                     after_step=after_step, inputs=_held_at_zero(layers, inputs))
        finally:
            bar.close()
        moved = mask.nonzero_layers()
    if moved:  # the mask failed: never hand back a model whose pruned layers came back
        raise XpruneError(f"{len(moved)} pruned layers are no longer zero after fine-tuning (first: {moved[0]})")
    return history


def plan_of(detector: Detector, weights: str | Path) -> Plan:
    """The pruning plan a checkpoint carries (`xprune prune` stores it in meta['pruning']), its layers zero."""
    doc = (detector.meta or {}).get("pruning")
    if not doc:
        raise XpruneError(f"{weights} carries no pruning plan; fine-tune a checkpoint written by `xprune prune`")
    plan = Plan.from_json(doc)
    convs = detector.conv_layers()
    missing = [n for n in plan.layers if n not in convs]
    if missing:
        raise XpruneError(f"the plan in {weights} names layers this model does not have (first: {missing[0]})")
    alive = [n for n in plan.layers if bool(convs[n].weight.detach().any())]
    if alive:
        raise XpruneError(f"layer {alive[0]} of the plan in {weights} is not zero: the plan was not applied to it")
    return plan


def state_path_for(out: str | Path) -> Path:
    """The resume state beside the output checkpoint: ft.pt -> ft.state.pt."""
    return Path(out).with_suffix(".state.pt")


def report_path_for(out: str | Path) -> Path:
    return Path(out).with_suffix(".finetune.json")


def finetune_checkpoint(model: str, weights: str | Path, data: str | Path, epochs: int, out: str | Path,
                        settings: FinetuneSettings | None = None, input_size: int | None = None,
                        train_images: int | None = None, val_images: int | None = None, log: Log = print,
                        progress: bool = False) -> dict:
    """Fine-tune the pruned checkpoint `weights` on DATA's train split, keep its plan's layers zero, and write the
    checkpoint `out` (meta: the plan and the fine-tuning record) and `out` .finetune.json (plan, settings,
    per-epoch losses and times, val mAP before and after). Returns that report."""
    from xprune.evaluate.coco_map import evaluate_map
    from xprune.models import build_detector, save_checkpoint

    settings = dataclasses.replace(settings, epochs=epochs) if settings else FinetuneSettings(epochs=epochs)
    if not Path(weights).is_file():
        raise XpruneError(f"checkpoint not found: {weights} (fine-tuning needs a pruned checkpoint)")
    det = build_detector(model, str(weights), input_size=input_size)
    require_torch(det)
    plan = plan_of(det, weights)
    train = train_split(data, det.input_size, train_images)
    val = CocoDetectionSet.from_folder(data, "val", det.input_size, limit=val_images)
    if det.category_ids is None and det.num_classes != train.num_classes:
        raise XpruneError(f"model has {det.num_classes} classes, dataset {train.num_classes}")
    # a state resumes only the run that wrote it (same weights, layers, data, settings): refused before any work
    state = state_path_for(out)
    inputs = {"weights": file_sha256(weights), "data": str(Path(data).resolve())}
    stamp = training_stamp(state, settings.train_settings(), len(train), _held_at_zero(plan.layers, inputs))
    stamp.claim([state])

    log(f"val mAP before fine-tuning ({len(val)} images) ...")
    before = evaluate_map(det, val)["map"]
    log(f"val mAP before: {before:.4f}; fine-tuning {settings.epochs} epochs on {len(train)} train images "
        f"with {len(plan.layers)} layers held at zero")
    t0 = time.perf_counter()
    history = finetune_layers(det, train, plan.layers, settings, state, log=log, progress=progress, inputs=inputs)
    seconds = time.perf_counter() - t0
    after = evaluate_map(det, val)["map"]
    log(f"val mAP after: {after:.4f} ({after - before:+.4f})")

    record = {"epochs": settings.epochs, "settings": asdict(settings), "train_images": len(train),
              "val_images": len(val), "val_map_before": before, "val_map_after": after, "history": history,
              "seconds_per_epoch": sum(h["seconds"] for h in history) / len(history), "seconds_this_run": seconds,
              "zeroed_layers": len(plan.layers), "zeroed_layers_exactly_zero": True, "weights": str(weights)}
    save_checkpoint(det, out, meta={**det.meta, "pruning": plan.to_json(), "finetune": record})
    report = {"model": model, "checkpoint": str(out), "data": str(data), **record, "plan": plan.to_json()}
    write_json(report_path_for(out), report)
    stamp.release(state)  # the run is complete: nothing left to resume
    return report


__all__ = ["FinetuneSettings", "ZeroMask", "finetune_checkpoint", "finetune_layers", "plan_of", "report_path_for",
           "state_path_for", "train_split"]
