"""Pruning a checkpoint, the one way `xprune prune` and `xprune auto` both do it.

    scores + checkpoint -> layers chosen by a fixed rate, by a fraction of the exported MACs to remove, by the
    largest rate within an mAP budget, or by steps within the budget with fine-tuning after each -> the layers
    zeroed -> OUT (the pruned checkpoint, carrying its plan), OUT .plan.json and, for a budget, OUT .search.json

Every output is written atomically; an interrupted iterative search resumes from its steps in OUT .steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from xprune.errors import XpruneError

if TYPE_CHECKING:
    from xprune.models.detector import Detector
    from xprune.prune.plan import Plan

Log = Callable[[str], None]
DEFAULT_RATE = 0.05  # without a rate or a budget


@dataclass(frozen=True)
class PruneRequest:
    """What to prune and how. `rate` excludes `target_macs` and `max_map_drop`. `max_map_drop` alone searches the
    largest rate within the budget; with `target_macs`, it walks toward the target in steps of `step_macs` of the
    MACs and stops where the budget does. `finetune_epochs` goes with `max_map_drop`: that many epochs of
    fine-tuning on the train split after a step over budget (steps of `step_rate` of the candidates without a
    target)."""

    weights: str  # a checkpoint path, 'default' (official weights) or 'none' (random init)
    scores: str  # the scores file of this model
    out: str  # the pruned checkpoint
    model: str | None = None  # family; optional when the checkpoint says
    input_size: int | None = None
    data: str | None = None  # the budget's held-out images, the train split; the class count for 'none'
    rate: float | None = None  # fraction of candidate layers zeroed (default DEFAULT_RATE)
    max_map_drop: float | None = None  # instead of a rate: the largest one within this absolute mAP drop
    target_macs: float | None = None  # instead of a rate: remove this fraction of the exported MACs, least importance
    policy: str = "safe"  # candidate layers: "safe" or "all"
    rank: str = "plain"  # "plain" or "per-mac"
    held_out_images: int = 64  # where the budget's mAP is measured: the first N images of search_split
    search_split: str = "val"  # never train; val's first images by default, results reported on the rest
    max_rate: float | None = None  # upper bound of the budget search
    finetune_epochs: int | None = None
    finetune_batch_size: int = 16
    finetune_lr: float | None = None  # default: a fraction of the family's reference learning rate
    finetune_schedule: str = "one-cycle"
    distill: bool = True  # fine-tuning distils from the unpruned model
    distill_weight: float = 1.0
    finetune_images: int | None = None  # fine-tune on the first N train images
    step_rate: float = 0.05
    step_macs: float = 0.05  # toward a MAC target under a budget: each step removes this much more of the MACs
    plan_file: str | None = None  # default: OUT with .plan.json
    search_file: str | None = None  # default: OUT with .search.json

    @property
    def plan_path(self) -> Path:
        return Path(self.plan_file) if self.plan_file else Path(self.out).with_suffix(".plan.json")

    @property
    def search_path(self) -> Path:
        return Path(self.search_file) if self.search_file else Path(self.out).with_suffix(".search.json")

    @property
    def steps_path(self) -> Path:
        """The iterative search's per-step training states, kept until it completes."""
        return Path(self.out).with_suffix(".steps")

    def check(self) -> None:
        """Bad settings fail before the model is loaded or exported, in one line: a typo costs nothing."""
        from xprune.prune.budget import check_max_map_drop, check_search_split, check_step_rate
        from xprune.prune.mac_target import check_target_macs
        from xprune.prune.target_steps import check_step_macs
        from xprune.prune.plan import check_policy, check_rank, check_rate

        if self.max_map_drop is not None and self.rate is not None:
            raise XpruneError("--rate and --max-map-drop are exclusive: give one")
        if self.target_macs is not None and self.rate is not None:
            raise XpruneError("--rate and --target-macs are exclusive: give one")
        if self.finetune_epochs is not None and self.max_map_drop is None:
            raise XpruneError("--finetune-epochs goes with --max-map-drop (iterative pruning under a budget)")
        check_rank(self.rank)
        check_policy(self.policy)
        check_step_rate(self.step_rate)
        check_step_macs(self.step_macs)
        check_search_split(self.search_split)
        if self.rate is not None:
            check_rate(self.rate)
        if self.max_map_drop is not None:
            check_max_map_drop(self.max_map_drop)
        if self.target_macs is not None:
            check_target_macs(self.target_macs)


def prune_checkpoint(request: PruneRequest, log: Log | None = None, progress: bool = False) -> Plan:
    """Choose the layers, zero them, write the pruned checkpoint and the plan (and the budget search's record);
    returns the plan, which names the weights it was made from."""
    from xprune.files import write_json
    from xprune.importance.scores import read_scores
    from xprune.models import save_checkpoint
    from xprune.prune.plan import apply_plan

    say = log or (lambda message: None)
    request.check()
    scores = read_scores(request.scores)
    detector = load_for_pruning(request)
    plan = choose_layers(detector, scores, request, say, progress)
    plan.weights = str(request.weights)
    apply_plan(detector, plan)
    save_checkpoint(detector, request.out, meta={"pruning": plan.to_json()})
    write_json(request.plan_path, plan.to_json())
    return plan


def load_for_pruning(request: PruneRequest) -> Detector:
    """The detector to prune; random init ('none') takes its class count from the data."""
    from xprune.models import build_detector

    classes = None
    if request.weights == "none" and request.data:
        from xprune.data.coco import dataset_num_classes
        classes = dataset_num_classes(request.data)
    return build_detector(request.model, request.weights, num_classes=classes, input_size=request.input_size)


def choose_layers(detector: Detector, scores: dict, request: PruneRequest, log: Log, progress: bool) -> Plan:
    """The plan: at the fixed rate, at the MAC target, searched under the budget (iteratively with fine-tuning
    when asked), or walked toward the MAC target under the budget (the detector is then left as the search left it:
    fine-tuned at the chosen plan where it trained)."""
    from xprune.export.fold.analysis import fold_analysis_for  # the fold's per-layer view of the exported graph
    from xprune.prune.budget import budget_plan, iterative_budget_plan, iterative_target_plan
    from xprune.prune.plan import plan_pruning

    settings = None
    if request.finetune_epochs is not None:
        from xprune.prune.finetune import FinetuneSettings
        settings = FinetuneSettings(epochs=request.finetune_epochs, batch_size=request.finetune_batch_size,
                                    lr=request.finetune_lr, schedule=request.finetune_schedule,
                                    distill=request.distill, distill_weight=request.distill_weight)
    if request.target_macs is not None and request.max_map_drop is not None:
        return iterative_target_plan(detector, scores, request.data, request.target_macs, request.max_map_drop,
                                     settings, request.steps_path, request.policy, request.step_macs,
                                     request.held_out_images, request.finetune_images,
                                     search_report=request.search_path, log=log, progress=progress,
                                     search_split=request.search_split)
    if request.target_macs is not None:
        from xprune.prune.mac_target import plan_for_target
        fold = fold_analysis_for(detector, "--target-macs", log=log)
        return plan_for_target(detector, scores, request.target_macs, request.policy, fold)
    fold = fold_analysis_for(detector, "the per-mac ranking" if request.rank == "per-mac" else None, log=log)
    if request.max_map_drop is None:
        rate = DEFAULT_RATE if request.rate is None else request.rate
        return plan_pruning(detector, scores, rate, request.policy, request.rank, fold)
    if settings is None:
        return budget_plan(detector, scores, request.data, request.max_map_drop, request.policy,
                           held_out_images=request.held_out_images, max_rate=request.max_rate,
                           search_report=request.search_path, log=log, rank=request.rank, fold=fold,
                           search_split=request.search_split)
    return iterative_budget_plan(detector, scores, request.data, request.max_map_drop, settings, request.steps_path,
                                 request.policy, request.rank, fold, request.step_rate, request.held_out_images,
                                 request.max_rate, request.finetune_images, search_report=request.search_path,
                                 log=log, progress=progress, search_split=request.search_split)


__all__ = ["DEFAULT_RATE", "PruneRequest", "choose_layers", "load_for_pruning", "prune_checkpoint"]
