"""A plain PyTorch training loop over `Detector.train_step_loss` (the torchvision families' own loss dicts, summed),
with a state file written every epoch: rerunning with the same state file resumes after the last finished epoch.
The state file holds the tensors; the stamp beside it (state.pt -> state.json, `xprune.resume`) names the inputs that
made them, so only a run with the same settings, images and caller's inputs resumes from it. With a `Distiller`
(`xprune.train.distill`) the loss is the family's plus the weighted distillation term, and each epoch's record
splits the two."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from xprune.data.coco import CocoDetectionSet
from xprune.data.transforms import collate_targets, ssd_augment
from xprune.errors import XpruneError
from xprune.files import atomic_path
from xprune.models.detector import Detector
from xprune.resume import Stamp, input_identity
from xprune.train.distill import Distiller
from xprune.train.schedule import check_schedule, lr_schedule

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.1  # of all steps
    clip_norm: float = 10.0
    seed: int = 0
    augment: str = "flip"  # "flip", or "ssd": flip then xprune.data.transforms.ssd_augment
    precision: str = "fp32"  # or "bf16": forward and loss under CPU autocast; weights and optimizer stay fp32
    schedule: str = "one-cycle"  # or "cosine" (`xprune.train.schedule`)


AUGMENTS = ("flip", "ssd")
PRECISIONS = ("fp32", "bf16")


def autocast(precision: str):
    """bf16 autocast on the CPU (native on CPUs with AVX512-BF16 or AMX, emulated and slow elsewhere)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def training_batch(train: CocoDetectionSet, indices: list[int], augment: str, generator: torch.Generator):
    """Collated (images, targets) of `indices`, augmented by the named policy."""
    samples = [train.sample(i, augment=True, generator=generator) for i in indices]
    if augment == "ssd":
        for s in samples:
            s["image"], s["boxes"], s["labels"] = ssd_augment(s["image"], s["boxes"], s["labels"])
    return collate_targets(samples)


STATE_KEYS = ("model", "optimizer", "schedule", "generator", "torch_rng", "history")


def _save_state(path: Path, **state) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def training_stamp(state_path: str | Path, settings: TrainSettings, images: int,
                   inputs: Mapping[str, Any] | None = None) -> Stamp:
    """The record beside a training state (state.pt -> state.json) of what decides the training: its settings, the
    number of training images and the caller's `inputs` (the starting weights' SHA-256, the layers held at zero)."""
    identity = input_identity({**asdict(settings), "images": images}, **dict(inputs or {}))
    return Stamp(Path(state_path).with_suffix(".json"), identity, "training state")


def epoch_line(record: dict, epochs: int) -> str:
    """The progress and log line of one finished epoch."""
    split = (f" (task {record['task_loss']:.4f}, distillation {record['distill_loss']:.4f})"
             if "distill_loss" in record else "")
    return f"epoch {record['epoch']}/{epochs} loss {record['loss']:.4f}{split} time {record['seconds']:.0f}s"


def estimate_line(seconds: float, steps: int, batch_size: int, epochs_left: int) -> str:
    """The line printed before training: the estimated time per epoch and for the epochs left."""
    return (f"estimated {seconds:.0f} s per epoch ({steps} steps of {batch_size} images), about "
            f"{seconds * epochs_left / 60:.1f} min for {epochs_left} more epoch{'s' if epochs_left > 1 else ''}")


def check_settings(settings: TrainSettings) -> None:
    if settings.epochs <= 0:
        raise XpruneError(f"epochs must be positive, got {settings.epochs}")
    if settings.augment not in AUGMENTS:
        raise XpruneError(f"unknown augmentation '{settings.augment}'; choose one of: {', '.join(AUGMENTS)}")
    if settings.precision not in PRECISIONS:
        raise XpruneError(f"unknown precision '{settings.precision}'; choose one of: {', '.join(PRECISIONS)}")
    check_schedule(settings.schedule)


def step_loss(det: Detector, x: torch.Tensor, targets: list[dict], precision: str,
              distiller: Distiller | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(loss to minimise, the family's loss, the unweighted distillation term or None) of one batch."""
    with autocast(precision):
        if distiller is None:
            task = det.train_step_loss(x, targets)
            return task, task, None
        term = distiller.term(det, x)  # first: the training-mode forward moves the BatchNorm statistics it reads
        task = det.train_step_loss(x, targets)
    return task + distiller.weight * term, task, term


def train_detector(det: Detector, train: CocoDetectionSet, settings: TrainSettings, state_path: str | Path,
                   log: Log = print, after_step: Callable[[], None] | None = None,
                   inputs: Mapping[str, Any] | None = None, distiller: Distiller | None = None,
                   estimate: bool = False, after_epoch: Callable[[dict], bool] | None = None,
                   epoch_saved: Callable[[int], None] | None = None) -> list[dict]:
    """Train `det` in place; return one record per epoch (loss, wall and process CPU seconds; with a `distiller`,
    also the family's loss `task_loss` and the unweighted distillation term `distill_loss`, both means over the
    epoch's steps). `after_step` runs after every optimizer step (fine-tuning uses it to keep pruned weights at
    zero). `after_epoch` sees each finished epoch's record before its state is written (an evaluation there is
    redone with the epoch when a run stops in between); when it returns True, training ends after that epoch
    (the record says `stopped`) and a resume starts no further epoch. `epoch_saved` is told each epoch once its
    state file is written: a copy of that file is then a checkpoint (a Ray Tune trial reports one). `estimate`
    times a few steps first and logs the estimated time per epoch. The state file holds model, optimizer, schedule
    and random state after each finished epoch; when it exists and its stamp (`training_stamp`, with the caller's
    `inputs`) names the same inputs, training continues from it; another run's state is refused in one line. The
    state stays when training ends: the caller releases it once its own output is written."""
    check_settings(settings)
    state_path = Path(state_path)
    torch.manual_seed(settings.seed)
    params = [p for p in det.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(train) / settings.batch_size)
    total_steps = settings.epochs * steps_per_epoch
    sched = lr_schedule(opt, settings.schedule, settings.lr, total_steps, settings.warmup_fraction)
    generator = torch.Generator().manual_seed(settings.seed)
    history: list[dict] = []
    if training_stamp(state_path, settings, len(train), inputs).claim([state_path]):
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=False)
            model, optimizer, schedule, batches_rng, torch_rng, history = (state[k] for k in STATE_KEYS)
        except Exception as e:  # pickle, zip, EOF and missing-key errors all mean the same here
            raise XpruneError(f"cannot resume from {state_path} ({type(e).__name__}); delete it to start over") from None
        det.model.load_state_dict(model)
        opt.load_state_dict(optimizer)
        sched.load_state_dict(schedule)
        generator.set_state(batches_rng)
        torch.set_rng_state(torch_rng)
        log(f"resuming after epoch {len(history)}/{settings.epochs} from {state_path}")
    if history and history[-1].get("stopped"):
        det.model.eval()
        return history
    if estimate and len(history) < settings.epochs:
        seconds = epoch_seconds(det, train, settings, distiller)
        left = settings.epochs - len(history)
        log(estimate_line(seconds, steps_per_epoch, settings.batch_size, left))
    for epoch in range(len(history), settings.epochs):
        det.model.train()
        order = torch.randperm(len(train), generator=generator).tolist()
        total, task_total, term_total, t0, cpu0 = 0.0, 0.0, 0.0, time.perf_counter(), time.process_time()
        for step in range(steps_per_epoch):
            idx = order[step * settings.batch_size:(step + 1) * settings.batch_size]
            x, targets = training_batch(train, idx, settings.augment, generator)
            loss, task, term = step_loss(det, x, targets, settings.precision, distiller)
            if not torch.isfinite(loss):
                raise XpruneError(f"training diverged at epoch {epoch + 1}, step {step + 1} (loss {float(loss)})")
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, settings.clip_norm)
            opt.step()
            sched.step()
            if after_step is not None:
                after_step()
            total += float(loss.detach())
            task_total += float(task.detach())
            term_total += float(term.detach()) if term is not None else 0.0
        record = {"epoch": epoch + 1, "loss": total / steps_per_epoch, "seconds": time.perf_counter() - t0,
                  "cpu_seconds": time.process_time() - cpu0}
        if distiller is not None:
            record.update(task_loss=task_total / steps_per_epoch, distill_loss=term_total / steps_per_epoch)
        stop = bool(after_epoch(record)) if after_epoch is not None else False
        if stop:
            record["stopped"] = True
        history.append(record)
        _save_state(state_path, model=det.model.state_dict(), optimizer=opt.state_dict(),
                    schedule=sched.state_dict(), generator=generator.get_state(), torch_rng=torch.get_rng_state(),
                    history=history)
        if epoch_saved is not None:
            epoch_saved(epoch + 1)
        log(epoch_line(record, settings.epochs))
        if stop:
            log(f"stopped after epoch {epoch + 1}/{settings.epochs}")
            break
    det.model.eval()
    return history


def epoch_seconds(det: Detector, train: CocoDetectionSet, settings: TrainSettings,
                  distiller: Distiller | None = None, steps: int = 2) -> float:
    """Estimated seconds of one epoch: `steps` timed training steps (forward and backward, distillation included;
    after one untimed step) times the steps of an epoch. The model's weights, BatchNorm statistics and the random
    state are put back afterwards, so the estimate changes nothing of the training that follows."""
    saved, rng = copy.deepcopy(det.model.state_dict()), torch.get_rng_state()
    generator = torch.Generator().manual_seed(settings.seed)
    x, targets = training_batch(train, [i % len(train) for i in range(settings.batch_size)], settings.augment,
                                generator)

    def step() -> float:
        t0 = time.perf_counter()
        det.model.train()
        loss = step_loss(det, x, targets, settings.precision, distiller)[0]
        loss.backward()
        return time.perf_counter() - t0

    try:
        step()
        samples = [step() for _ in range(steps)]
    finally:
        det.model.zero_grad(set_to_none=True)
        det.model.load_state_dict(saved)
        torch.set_rng_state(rng)
    return sum(samples) / steps * math.ceil(len(train) / settings.batch_size)


def step_seconds(det: Detector, train: CocoDetectionSet, batch_size: int, steps: int = 2,
                 precision: str = "fp32") -> list[float]:
    """Time `steps` training steps (forward and backward, no update) after one untimed step, which pays one-time
    costs; one sample per step."""
    det.model.train()
    generator = torch.Generator().manual_seed(0)
    x, targets = collate_targets([train.sample(i % len(train), augment=True, generator=generator)
                                  for i in range(batch_size)])

    def step() -> float:
        t0 = time.perf_counter()
        with autocast(precision):
            loss = det.train_step_loss(x, targets)
        loss.backward()
        return time.perf_counter() - t0

    step()
    samples = [step() for _ in range(steps)]
    det.model.zero_grad(set_to_none=True)
    det.model.eval()
    return samples


def seconds_per_step(det: Detector, train: CocoDetectionSet, batch_size: int, steps: int = 2,
                     precision: str = "fp32") -> float:
    """The mean of a few timed training steps, to estimate how long training will take."""
    return sum(step_seconds(det, train, batch_size, steps, precision)) / steps
