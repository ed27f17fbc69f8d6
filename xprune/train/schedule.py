"""Learning-rate schedules of the PyTorch loop, and the learning rate a fine-tuning run starts from.

Two schedules, both over every step of the run:
- `one-cycle`: torch's OneCycleLR (cosine rise from lr/25 to lr over the warm-up fraction, cosine fall to lr/25e4);
- `cosine`: a linear warm-up from 0 to lr over the warm-up fraction, then a cosine decay to lr/100 (the recipe of
  the JAX loop).

Fine-tuning starts from trained weights, so it takes a fraction of the learning rate its family's reference was
trained with (`reference_lr`), not that rate itself.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from xprune.errors import XpruneError

if TYPE_CHECKING:
    import torch

    from xprune.models.detector import Detector

SCHEDULES = ("one-cycle", "cosine")
COSINE_FLOOR = 0.01  # the cosine schedule ends at this fraction of the peak
FINETUNE_LR_FRACTION = 0.25  # of the reference recipe's peak: 5e-4 for the torchvision and JAX families at 2e-3
FALLBACK_FINETUNE_LR = 1e-4  # a family without a known reference recipe


def check_schedule(schedule: str) -> str:
    if schedule not in SCHEDULES:
        raise XpruneError(f"unknown schedule '{schedule}'; choose one of: {', '.join(SCHEDULES)}")
    return schedule


def warmup_cosine_factor(step: int, total: int, warmup: int) -> float:
    """The cosine schedule's multiple of the peak learning rate before optimizer step `step` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return COSINE_FLOOR + (1.0 - COSINE_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_schedule(opt: torch.optim.Optimizer, schedule: str, lr: float, total_steps: int,
                warmup_fraction: float) -> torch.optim.lr_scheduler.LRScheduler:
    """The scheduler of `schedule` over `total_steps` optimizer steps, stepped once after each."""
    import torch  # here, so the command line lists the schedules without loading torch

    check_schedule(schedule)
    if schedule == "one-cycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps, pct_start=warmup_fraction)
    warmup = max(1, round(warmup_fraction * total_steps)) if warmup_fraction > 0 else 0
    for group in opt.param_groups:
        group["lr"] = lr
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine_factor(step, total_steps, warmup))


def reference_lr(detector: Detector) -> float | None:
    """The peak learning rate of the recipe this family's reference was trained with (AdamW in every case), or
    None where xprune has no recipe for the family."""
    from xprune.train.reference import FAMILIES, JAX_FAMILIES, TORCHVISION_LR, YOLO_FAMILIES
    from xprune.train.loop import TrainSettings

    family = detector.family
    if family in YOLO_FAMILIES:
        # Ultralytics' optimizer 'auto' on a run under 10,000 iterations: AdamW at its fitted lr0
        return round(0.002 * 5 / (4 + detector.num_classes), 6)
    if family in JAX_FAMILIES:
        from xprune.train.jax_loop import TrainConfig
        return TrainConfig.lr
    if family in FAMILIES:
        return TORCHVISION_LR.get(family, TrainSettings.lr)
    return None


def finetune_lr(detector: Detector) -> float:
    """The default fine-tuning learning rate: `FINETUNE_LR_FRACTION` of the reference recipe's."""
    reference = reference_lr(detector)
    return FALLBACK_FINETUNE_LR if reference is None else FINETUNE_LR_FRACTION * reference
