"""What a frontier run measures: the models (and where each starts), the criteria, the removed-MAC targets, the
recovery recipe and the epochs at which each point is evaluated.

A point is one (model, criterion, target): the model's start is pruned at the target, fine-tuned once for
`epochs` epochs, and evaluated after each epoch of `evaluate_at` (epoch 0: zeroed, before any recovery). The
control point of a model is its unpruned start fine-tuned with the same recipe, evaluated at the same epochs: every
mAP change is measured against it, never against the reference, whose training had not converged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from xprune.errors import XpruneError

FORMAT = "xprune-frontier-point-2"
CONTROL = "control"
BUDGET = 0.01  # one mAP point
GOAL_RATIO = 0.77  # a 1.3x speedup


@dataclass(frozen=True)
class Start:
    """A frontier model: a zoo family's reference checkpoint, optionally with an output level that never fires
    already removed, so that the speed bought beyond it shows."""

    family: str
    remove_level: str | None = None

    def describe(self) -> str:
        return self.family + (f" with its silent {self.remove_level} level removed" if self.remove_level else "")


MODELS = {
    "ssdlite320-mbv3": Start("ssdlite320-mbv3"),
    "yolov8n": Start("yolov8n"),
    "yolov8n-beyond-silent": Start("yolov8n", remove_level="stride 32"),
    "ssd-mobilenetv2": Start("ssd-mobilenetv2"),
    "ssd-shufflenetv2": Start("ssd-shufflenetv2"),
}


@dataclass(frozen=True)
class FrontierSettings:
    models: tuple[str, ...] = ("yolov8n-beyond-silent", "ssdlite320-mbv3")
    criteria: tuple[str, ...] = ("attr", "taylor")
    targets: tuple[float, ...] = (0.1, 0.2, 0.3)  # fractions of the start's exported MACs the fold removes
    size: int = 320
    val_images: int = 300
    calib_images: int = 64
    train_images: int | None = None  # None: the whole train split
    epochs: int = 10
    evaluate_at: tuple[int, ...] = (0, 2, 5, 10)
    batch_size: int = 16
    lr: float | None = None  # None: the family's fine-tuning default (`xprune.train.schedule.finetune_lr`)
    distill: bool = True
    # "xprune": the project's own loop (distilled); "ultralytics": Ultralytics' trainer (YOLO models, not distilled)
    trainer: str = "xprune"
    # a point whose mAP after `stop_after` epochs is more than `hopeless` below the budget (against the control at
    # that epoch) stops there; 0 never stops
    stop_after: int = 2
    hopeless: float = 0.10
    seed: int = 0
    weights: str = "reference"  # or "none": random initialisation (the quick preset on a fresh machine)
    # timing (one process, every point of a model interleaved with its baseline and an A/A copy)
    runs: int = 100
    warmup_runs: int = 10
    threads: int | None = None
    resamples: int = 1000

    @classmethod
    def quick(cls, **over) -> FrontierSettings:
        """A smoke run for CI: YOLOv8n's reference beyond its silent level, two criteria, one target, a handful
        of images, two epochs (minutes)."""
        quick = dict(models=("yolov8n-beyond-silent",), criteria=("l1", "random"), targets=(0.1,), val_images=16,
                     calib_images=8, train_images=16, epochs=2, evaluate_at=(0, 1, 2), batch_size=8, stop_after=1,
                     runs=8, warmup_runs=2, resamples=200)
        return cls(**{**quick, **over})

    def check(self) -> FrontierSettings:
        from xprune.importance.criteria import get_criterion
        from xprune.prune.mac_target import check_target_macs

        for name in self.models:
            if name not in MODELS:
                raise XpruneError(f"unknown frontier model '{name}'; choose from: {', '.join(MODELS)}")
        from xprune.frontier.peer import PEER_CRITERIA

        for c in self.criteria:
            if c not in PEER_CRITERIA:  # the peer's channel pruning is not an xprune criterion
                get_criterion(c)
        for t in self.targets:
            check_target_macs(t)
        if self.epochs < 0 or any(e < 0 or e > self.epochs for e in self.evaluate_at):
            raise XpruneError(f"evaluation epochs must lie in [0, {self.epochs}], got {list(self.evaluate_at)}")
        if self.stop_after and self.stop_after not in self.evaluate_at:
            raise XpruneError(f"the early stop after epoch {self.stop_after} needs an evaluation there")
        if self.val_images < 1 or self.runs < 1 or self.batch_size < 1:
            raise XpruneError("--val-images, --runs and --batch-size must be >= 1")
        self._check_trainer()
        return self

    def _check_trainer(self) -> None:
        from xprune.models.zoo import family, require_ultralytics
        from xprune.prune.finetune import TRAINERS

        if self.trainer not in TRAINERS:
            raise XpruneError(f"unknown trainer '{self.trainer}'; choose one of: {', '.join(TRAINERS)}")
        if self.trainer != "ultralytics":
            return
        others = [m for m in self.models if family(MODELS[m].family).require is not require_ultralytics]
        if others:
            raise XpruneError(f"Ultralytics' trainer fine-tunes YOLO models only, not {others[0]}")
        if self.distill:
            raise XpruneError("Ultralytics' trainer is not distilled here: add --no-distill")
        if self.train_images is not None:
            raise XpruneError("Ultralytics' trainer reads the whole train split: leave out --train-images")

    def recipe(self) -> dict:
        """What decides a point's recovery: a point file made with another recipe is not resumed."""
        keys = ("size", "val_images", "calib_images", "train_images", "epochs", "evaluate_at", "batch_size", "lr",
                "distill", "stop_after", "hopeless", "seed", "weights")
        recipe = {k: getattr(self, k) for k in keys}
        if self.trainer != "xprune":  # files of the own loop predate the choice and do not name it
            recipe["trainer"] = self.trainer
        return recipe

    def replace(self, **over) -> FrontierSettings:
        return dataclasses.replace(self, **over)


def point_id(criterion: str | None, target: float | None) -> str:
    """'attr-10' for attr at 10 % of the MACs; 'control' for the unpruned start."""
    if criterion is None:
        return CONTROL
    return f"{criterion}-{round(100 * target, 1):g}"


def grid(s: FrontierSettings) -> list[tuple[str, str | None, float | None]]:
    """(model, criterion, target) in the order they run: per model the control first (the early stop reads it),
    then targets in increasing order, criteria in the given order at each."""
    order = []
    for model in s.models:
        order.append((model, None, None))
        order += [(model, c, t) for t in sorted(s.targets) for c in s.criteria]
    return order
