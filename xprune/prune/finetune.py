"""Recovery fine-tuning of a pruned detector with its family's own loss, distilled from the unpruned model, the
zeroed layers kept exactly zero.

PyTorch families train through `xprune.train.loop.train_detector` (the family's `train_step_loss`, AdamW, a
one-cycle or cosine schedule, a state file every epoch), JAX families through `xprune.train.jax_finetune`.
`ZeroMask` keeps the plan's layers at zero: a gradient hook hands AdamW a zero gradient for their weights, so the
first and second moments stay zero and the update (weight decay included, a multiple of the weight) leaves a zero
weight at zero; after every step the weights are set to zero again all the same. Their biases train: a zeroed conv
outputs its bias, and the rest of the network may use that constant. With a teacher (the unpruned weights the plan
was made from) the loss gains `distill_weight` times the distillation term of `xprune.train.distill`.
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
from xprune.train.distill import FORMULA, Distiller, distillation_unsupported, sums_over_images
from xprune.train.loop import TrainSettings, train_detector, training_stamp
from xprune.train.schedule import check_schedule, finetune_lr

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
    """Fine-tuning: a fraction of the reference recipe's learning rate (the weights are trained already; `lr` None
    takes `xprune.train.schedule.finetune_lr` of the family), a warm-up and a one-cycle or cosine schedule, and
    distillation from the unpruned model with weight `distill_weight` unless `distill` is off."""

    epochs: int
    batch_size: int = 16
    lr: float | None = None
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.1
    clip_norm: float = 10.0
    seed: int = 0
    schedule: str = "one-cycle"
    distill: bool = True
    distill_weight: float = 1.0

    def __post_init__(self):
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs <= 0:
            raise XpruneError(f"fine-tuning epochs must be a positive integer, got {self.epochs}")
        if self.batch_size <= 0 or not (self.lr is None or self.lr > 0):
            raise XpruneError(f"fine-tuning needs a positive batch size and learning rate, got {self.batch_size} "
                              f"and {self.lr}")
        if not 0 <= self.warmup_fraction < 1:
            raise XpruneError(f"the warm-up is a fraction of the steps in [0, 1), got {self.warmup_fraction}")
        if not self.distill_weight > 0:
            raise XpruneError(f"the distillation weight must be positive, got {self.distill_weight}")
        check_schedule(self.schedule)

    def for_detector(self, detector: Detector) -> FinetuneSettings:
        """These settings with the learning rate filled in for `detector`'s family where it was left open."""
        return self if self.lr is not None else dataclasses.replace(self, lr=finetune_lr(detector))

    def train_settings(self) -> TrainSettings:
        if self.lr is None:
            raise XpruneError("the fine-tuning learning rate is not set: resolve it with for_detector first")
        return TrainSettings(self.epochs, self.batch_size, self.lr, self.weight_decay, self.warmup_fraction,
                             self.clip_norm, self.seed, schedule=self.schedule)


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


FRAMEWORKS = ("torch", "jax")  # the frameworks with a fine-tuning loop


def require_trainable(detector: Detector) -> None:
    """A family whose framework has no fine-tuning loop here is refused in one line."""
    if detector.framework not in FRAMEWORKS:
        raise XpruneError(f"fine-tuning with zeroed layers held at zero runs on {' and '.join(FRAMEWORKS)} models; "
                          f"{detector.family} is a {detector.framework} model")




def nonzero_layers(detector: Detector, layers: list[str]) -> list[str]:
    """The layers of `layers` whose weights are not all zero (the detector's own check, in either framework)."""
    return detector.nonzero_layers(layers)


def distilling_teacher(student: Detector, settings: FinetuneSettings,
                       teacher: Detector | None) -> tuple[Detector | None, str]:
    """The teacher fine-tuning distils from (None: none) and a line saying so or why not."""
    if not settings.distill:
        return None, "distillation off (--no-distill)"
    if teacher is None:
        return None, "distillation off: no teacher (the unpruned weights) was given"
    reason = distillation_unsupported(student)
    if reason:
        return None, f"distillation off: {reason}"
    if teacher.family != student.family or teacher.num_classes != student.num_classes:
        raise XpruneError(f"the teacher is a {teacher.family} with {teacher.num_classes} classes, the student a "
                          f"{student.family} with {student.num_classes}: distil from the unpruned model itself")
    return teacher, f"distilling from the unpruned model, weight {settings.distill_weight}"


def distillation_record(settings: FinetuneSettings, teacher: Detector | None, note: str) -> dict:
    """What a fine-tuning report says about distillation: on or off (and why), the formula and its weight."""
    if teacher is None:
        return {"on": False, "note": note}
    return {"on": True, "weight": settings.distill_weight, "formula": FORMULA,
            "images": "summed" if sums_over_images(teacher) else "averaged"}


def stamp_inputs(layers: list[str], inputs: Mapping[str, Any] | None, settings: FinetuneSettings,
                 teacher: Detector | None) -> dict:
    """What a fine-tuning state's stamp records beside the training settings: the layers held at zero, the
    distillation (weight and teacher) and the caller's `inputs` (the weights it started from)."""
    distill = {"weight": settings.distill_weight, "teacher": teacher.state_sha256()} if teacher is not None else None
    return {"layers": list(layers), "distill": distill, **dict(inputs or {})}


def finetune_layers(detector: Detector, train: CocoDetectionSet, layers: list[str], settings: FinetuneSettings,
                    state_path: str | Path, log: Log = print, progress: bool = False,
                    inputs: Mapping[str, Any] | None = None, teacher: Detector | None = None,
                    after_epoch: Callable[[dict], bool] | None = None,
                    epoch_saved: Callable[[int], None] | None = None) -> list[dict]:
    """Fine-tune `detector` in place with `layers` held at zero, distilled from `teacher` (the unpruned model) when
    given and `settings.distill`; returns the per-epoch records (with the task and distillation losses apart when
    distilling). The estimated time per epoch is logged first. The state file (written every epoch, stamped with
    the settings, the layers, the teacher and the caller's `inputs`) resumes an interrupted run; the caller
    releases it when its output is written. `after_epoch` and `epoch_saved` (PyTorch only): see `train_detector`."""
    from tqdm import tqdm

    require_trainable(detector)
    settings = settings.for_detector(detector)
    teacher, note = distilling_teacher(detector, settings, teacher)
    stamp = stamp_inputs(layers, inputs, settings, teacher)
    steps = -(-len(train) // settings.batch_size)
    bar = tqdm(total=settings.epochs * steps, desc="fine-tune", unit="step", disable=not progress, leave=False)

    def log_line(line: str) -> None:
        if line.startswith("resuming after epoch "):
            bar.update(int(line.split()[3].split("/")[0]) * steps)
        bar.clear()
        log(line)
        bar.refresh()

    log_line(f"fine-tuning at lr {settings.lr:g} ({settings.schedule}); {note}")
    try:
        if detector.framework == "jax":
            if after_epoch is not None or epoch_saved is not None:
                raise XpruneError("per-epoch callbacks are not offered by the JAX fine-tuning loop")
            from xprune.train.jax_finetune import finetune_jax_layers
            history = finetune_jax_layers(detector, train, layers, settings.train_settings(),  # type: ignore[arg-type]
                                          state_path, teacher, settings.distill_weight, log=log_line,  # type: ignore[arg-type]
                                          after_step=bar.update, inputs=stamp)
        else:
            distiller = Distiller(teacher, settings.distill_weight) if teacher is not None else None
            with ZeroMask(detector, layers) as mask:
                def after_step() -> None:
                    mask.rezero()
                    bar.update()

                history = train_detector(detector, train, settings.train_settings(), state_path, log=log_line,
                                         after_step=after_step, inputs=stamp, distiller=distiller, estimate=True,
                                         after_epoch=after_epoch, epoch_saved=epoch_saved)
    finally:
        bar.close()
    moved = nonzero_layers(detector, layers)
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
    alive = nonzero_layers(detector, plan.layers)
    if alive:
        raise XpruneError(f"layer {alive[0]} of the plan in {weights} is not zero: the plan was not applied to it")
    return plan


def state_path_for(out: str | Path) -> Path:
    """The resume state beside the output checkpoint: ft.pt -> ft.state.pt."""
    return Path(out).with_suffix(".state.pt")


def report_path_for(out: str | Path) -> Path:
    return Path(out).with_suffix(".finetune.json")


def teacher_weights(plan: Plan, weights: str | Path, teacher: str | Path | None) -> str:
    """The unpruned weights to distil from: `teacher` when given, else those the plan was made from."""
    given = str(teacher) if teacher is not None else plan.weights
    fix = "pass --teacher PATH (the unpruned weights) or --no-distill"
    if not given:
        raise XpruneError(f"the plan in {weights} does not name the weights it was made from; {fix}")
    if given == "none":
        raise XpruneError(f"the plan in {weights} was made from a random init, which is no teacher; {fix}")
    if given != "default" and not Path(given).is_file():
        raise XpruneError(f"the unpruned weights {given} are not here (distillation needs them); {fix}")
    return given


TRAINERS = ("xprune", "ultralytics")  # the project's own loop (distilled), or Ultralytics' trainer (YOLO families)


def finetune_checkpoint(model: str, weights: str | Path, data: str | Path, epochs: int, out: str | Path,
                        settings: FinetuneSettings | None = None, input_size: int | None = None,
                        train_images: int | None = None, val_images: int | None = None, log: Log = print,
                        progress: bool = False, teacher: str | Path | None = None, trainer: str = "xprune") -> dict:
    """Fine-tune the pruned checkpoint `weights` on DATA's train split, keep its plan's layers zero, distil from
    `teacher` (default: the unpruned weights the plan names) unless `settings.distill` is off, and write the
    checkpoint `out` (meta: the plan and the fine-tuning record) and `out` .finetune.json (plan, settings,
    distillation, per-epoch losses and times, val mAP before and after). Returns that report."""
    from xprune.evaluate.coco_map import evaluate_map
    from xprune.models import build_detector, save_checkpoint

    settings = dataclasses.replace(settings, epochs=epochs) if settings else FinetuneSettings(epochs=epochs)
    if not Path(weights).is_file():
        raise XpruneError(f"checkpoint not found: {weights} (fine-tuning needs a pruned checkpoint)")
    if trainer not in TRAINERS:
        raise XpruneError(f"unknown trainer '{trainer}'; choose one of: {', '.join(TRAINERS)}")
    det = build_detector(model, str(weights), input_size=input_size)
    require_trainable(det)
    plan = plan_of(det, weights)
    settings = settings.for_detector(det)
    if trainer == "ultralytics":
        return _finetune_with_ultralytics(model, weights, data, out, plan, settings, input_size, val_images, log)
    source = teacher_weights(plan, weights, teacher) if settings.distill else None
    unpruned = build_detector(model, source, input_size=det.input_size) if source is not None else None
    unpruned, note = distilling_teacher(det, settings, unpruned)
    train = train_split(data, det.input_size, train_images)
    val = CocoDetectionSet.from_folder(data, "val", det.input_size, limit=val_images)
    if det.category_ids is None and det.num_classes != train.num_classes:
        raise XpruneError(f"model has {det.num_classes} classes, dataset {train.num_classes}")
    # a state resumes only the run that wrote it (same weights, layers, data, settings): refused before any work
    state = state_path_for(out)
    inputs = {"weights": file_sha256(weights), "data": str(Path(data).resolve())}
    stamp = training_stamp(state, settings.train_settings(), len(train),
                           stamp_inputs(plan.layers, inputs, settings, unpruned))
    stamp.claim([state])

    log(f"val mAP before fine-tuning ({len(val)} images) ...")
    before = evaluate_map(det, val)["map"]
    log(f"val mAP before: {before:.4f}; fine-tuning {settings.epochs} epochs on {len(train)} train images "
        f"with {len(plan.layers)} layers held at zero")
    t0 = time.perf_counter()
    history = finetune_layers(det, train, plan.layers, settings, state, log=log, progress=progress, inputs=inputs,
                              teacher=unpruned)
    seconds = time.perf_counter() - t0
    after = evaluate_map(det, val)["map"]
    log(f"val mAP after: {after:.4f} ({after - before:+.4f})")

    record = {"epochs": settings.epochs, "settings": asdict(settings), "train_images": len(train),
              "val_images": len(val), "val_map_before": before, "val_map_after": after, "history": history,
              "seconds_per_epoch": sum(h["seconds"] for h in history) / len(history), "seconds_this_run": seconds,
              "zeroed_layers": len(plan.layers), "zeroed_layers_exactly_zero": True, "weights": str(weights),
              "distillation": {**distillation_record(settings, unpruned, note), "teacher": source}}
    save_checkpoint(det, out, meta={**det.meta, "pruning": plan.to_json(), "finetune": record})
    report = {"model": model, "checkpoint": str(out), "data": str(data), **record, "plan": plan.to_json()}
    write_json(report_path_for(out), report)
    stamp.release(state)  # the run is complete: nothing left to resume
    return report


def _finetune_with_ultralytics(model: str | None, weights, data, out, plan: Plan, settings: FinetuneSettings,
                               input_size: int | None, val_images: int | None, log: Log) -> dict:
    """A YOLO family through Ultralytics' own trainer (its augmentation, EMA, warm-up, loss; no distillation here),
    the plan's layers held at zero; the same report file as the project's loop."""
    from xprune.train.yolo_finetune import finetune_with_ultralytics

    log("fine-tuning with Ultralytics' trainer (its recipe; not distilled)")
    record = finetune_with_ultralytics(weights, plan.layers, data, settings.epochs, out, lr0=settings.lr,
                                       imgsz=input_size, batch=settings.batch_size, val_images=val_images, log=log)
    report = {"model": model, "checkpoint": str(out), "data": str(data), "trainer": "ultralytics", **record,
              "distillation": {"on": False, "why": "Ultralytics' trainer path is not distilled"},
              "plan": plan.to_json()}
    write_json(report_path_for(out), report)
    return report


__all__ = ["TRAINERS", "FinetuneSettings", "ZeroMask", "distilling_teacher", "finetune_checkpoint", "finetune_layers",
           "nonzero_layers", "plan_of", "report_path_for", "require_trainable", "state_path_for", "teacher_weights",
           "train_split"]
