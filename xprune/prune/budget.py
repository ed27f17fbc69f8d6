"""Accuracy-budget pruning on a dataset: the largest plan whose COCO mAP drop on held-out images stays within a budget.

`budget_plan` runs the rate search (bisection and lookahead over the number of layers), `iterative_budget_plan` the
search that fine-tunes between steps (both in `xprune.prune.budget_search`), on images the model never trained on:
by default the first images of the val split, the rest of val being where results are reported (`held_out_split`).
Which images those were is recorded with the search (`HeldOut.record`). The iterative search's training states live
in a work folder with a stamp (`xprune.resume`) naming the search's inputs, so an interrupted search rerun with the
same inputs replays its finished steps instead of training them again.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from xprune.data.coco import CocoDetectionSet, has_split
from xprune.data.splits import shared_images
from xprune.errors import XpruneError
from xprune.evaluate.coco_map import evaluate_map
from xprune.files import display_path, write_json
from xprune.models.detector import Detector
from xprune.prune.budget_search import check_max_map_drop, check_step_rate, iterative_search, search_rate
from xprune.prune.plan import Plan
from xprune.resume import Stamp, input_identity, json_sha256

if TYPE_CHECKING:
    from xprune.export.fold.analysis import FoldAnalysis
    from xprune.prune.finetune import FinetuneSettings

SEARCH_SPLIT = "val"  # where the budget search measures by default: its first images; results on the rest
TRAIN_SPLIT = "train"


def check_search_split(split: str) -> str:
    if not isinstance(split, str) or not split:
        raise XpruneError(f"the budget search's split must be a split name such as 'val', got {split!r}")
    if split == TRAIN_SPLIT:
        raise XpruneError("the budget search measures mAP on images the model never trained on, not on 'train': "
                          "use val (the default) or a split held out from training")
    return split


def scored_images(scores: dict, root: str | Path, split: str) -> int:
    """How many images at the start of ROOT's SPLIT the scores were computed on (0 for data-free criteria or scores
    computed on another split or dataset)."""
    calibration = scores.get("calibration")
    if not calibration or not has_split(root, split):
        return 0
    try:  # what a set of ROOT's split records as its annotations: the JSON file, or "data.yaml (calib)"
        ann = CocoDetectionSet.from_folder(root, split, 32, limit=1).annotations
    except XpruneError:
        return 0
    try:
        same = Path(calibration["annotations"]).resolve() == ann.resolve()
    except (KeyError, TypeError, OSError):
        return 0
    return int(calibration.get("images", 0)) if same else 0


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """The images the budget search measures on: `data`, images `first` .. `first + len(data) - 1` (in image-id
    order) of the `total` images of `split`."""

    data: CocoDetectionSet
    split: str
    first: int
    total: int

    def record(self) -> dict:
        """What the search records of them: enough to leave exactly these images out of a later report."""
        return {"split": self.split, "first": self.first, "images": len(self.data), "of": self.total,
                "annotations": display_path(self.data.annotations), "image_ids": list(self.data.image_ids)}

    def describe(self) -> str:
        return (f"{self.split} images {self.first + 1}-{self.first + len(self.data)} of {self.total} "
                "(in image-id order)")


def held_out_split(root: str | Path, size: int, images: int, skip: int = 0, split: str = SEARCH_SPLIT) -> HeldOut:
    """The images the budget search measures mAP on: images `skip` .. `skip + images - 1` of ROOT's SPLIT (sorted
    image ids); `skip` leaves out the images the scores were computed on (`scored_images`).

    Why val by default: 'train' images were seen in training, so the drop under pruning measured there is not the
    drop on new images (a data.yaml without 'calib' and the trees set draw their calib images from train, so calib
    is no better there). Choosing the rate on the images the results are reported on would make the reported drop
    optimistic, so the search takes the first images of val, at most half of those after `skip`, and the rest of
    val is left for reporting (`xprune auto` reports on it). Another split held out from training (a 'test' split,
    or a calib split disjoint from train) takes `images` of its images after `skip`, fewer when it is shorter.

    Refused in one line: 'train'; a split ROOT lacks; a split too short; held-out images that are train images too
    (the same file or the same bytes, `xprune.data.splits.shared_images`)."""
    check_search_split(split)
    if images < 1 or skip < 0:
        raise XpruneError(f"held-out split needs images >= 1 and skip >= 0, got {images} and {skip}")
    root = Path(root)
    if not has_split(root, split):
        raise XpruneError(f"the budget search measures on the '{split}' split, held out from training; {root} has "
                          "none")
    total = len(CocoDetectionSet.from_folder(root, split, size))
    if split == SEARCH_SPLIT:
        if total - skip < 2:
            raise XpruneError(f"the budget search needs at least 2 '{split}' images after the {skip} scored on, "
                              f"{root} has {total}: it measures on the first half at most, and reports on the rest")
        images = min(images, (total - skip) // 2)
    data = CocoDetectionSet.from_folder(root, split, size, limit=skip + images)
    if len(data) <= skip:
        raise XpruneError(f"all {len(data)} images of the '{split}' split were used for scoring; score on fewer "
                          f"(--calib-images) or use a larger '{split}' split")
    data.image_ids = data.image_ids[skip:]
    shared = shared_images(data.image_paths(), root, TRAIN_SPLIT)
    if shared:
        raise XpruneError(f"{len(shared)} of the {len(data)} '{split}' images the budget search would measure on are "
                          f"train images too (e.g. {shared[0].name}): mAP on images the model trained on understates "
                          "what pruning costs; measure on images held out from training (the val split by default)")
    return HeldOut(data, split, skip, total)


def search_images(detector: Detector, scores: dict, data: str | Path | None, images: int, split: str,
                  log: Callable[[str], None] | None = None) -> HeldOut:
    """`held_out_split` after the images the scores were computed on, announced in one line."""
    if not data:
        raise XpruneError("--max-map-drop needs --data DIR: mAP is measured on its val images (the first ones)")
    held = held_out_split(data, detector.input_size, images, skip=scored_images(scores, data, split), split=split)
    if log:
        log(f"budget search on {held.describe()}, held out from training")
    return held


def budget_plan(detector: Detector, scores: dict, data: str | Path | None, max_map_drop: float,
                policy: str = "safe", held_out_images: int = 64, max_rate: float | None = None,
                search_report: str | Path | None = None, log: Callable[[str], None] | None = None,
                rank: str = "plain", fold: FoldAnalysis | None = None, search_split: str = SEARCH_SPLIT) -> Plan:
    """The plan at the largest rate whose COCO mAP drop on DATA's held-out images (`held_out_split` of
    `search_split`, after any images the scores were computed on) stays within `max_map_drop`; it carries the
    search, and which images it measured on (`held_out`), as `budget`. The search is written to `search_report`
    when given, also when no rate fits (then XpruneError)."""
    max_map_drop = check_max_map_drop(max_map_drop)
    held = search_images(detector, scores, data, held_out_images, search_split, log)
    search = search_rate(detector, scores, lambda d: evaluate_map(d, held.data)["map"], max_map_drop, policy,
                         max_rate=max_rate, log=log, rank=rank, fold=fold)
    if search_report is not None:
        write_json(search_report, {**search.to_json(), "held_out": held.record()})
    if search.plan is None:
        where = f" (search written to {search_report})" if search_report is not None else ""
        raise XpruneError(f"no rate keeps the mAP drop within {max_map_drop}{where}")
    return dataclasses.replace(search.plan, budget={**search.record(), "held_out": held.record()})


class StepTraining:
    """Fine-tuning between a search's steps on DATA's train split, distilled from the model as it came: each step's
    training state lives in `work_dir` (named by its layers), stamped beside the stamp of the search's inputs
    (search.json: the model's weights, the scores, the data, the settings), so an interrupted search rerun with the
    same inputs replays the finished steps without training them again; another search's steps are refused in one
    line. `release` removes them once the search is complete."""

    def __init__(self, detector: Detector, scores: dict, data: str | Path, settings: FinetuneSettings,
                 work_dir: str | Path, held: HeldOut, search: dict, train_images: int | None = None,
                 log: Callable[[str], None] | None = None, progress: bool = False):
        from xprune.prune.finetune import train_split

        if detector.framework != "torch":  # its steps' identity and the fold analysis read a torch model
            raise XpruneError(f"the iterative search with fine-tuning is implemented for the PyTorch families; "
                              f"{detector.family} is a {detector.framework} model")
        self.settings, self.log, self.progress = settings, log or (lambda message: None), progress
        self.teacher = copy.deepcopy(detector) if settings.distill else None  # every step distils from the start
        self.train = train_split(data, detector.input_size, train_images)
        self.work = Path(work_dir)
        identity = input_identity({"data": str(Path(data).resolve()), "held_out": [held.split, held.data.image_ids],
                                   "train_images": len(self.train), "finetune": dataclasses.asdict(settings),
                                   **search},
                                  model=detector.state_sha256(), scores=json_sha256(scores))
        self.stamp = Stamp(self.work / "search.json", identity, "pruning search steps")
        self.stamp.claim(self.work.glob("step-*.state.pt"))

    def record(self) -> dict:
        return {**dataclasses.asdict(self.settings), "train_images": len(self.train)}

    def __call__(self, det: Detector, layers: list[str], step: int) -> dict:
        from xprune.prune.finetune import finetune_layers

        digest = hashlib.sha256("\n".join(layers).encode()).hexdigest()[:12]
        history = finetune_layers(det, self.train, layers, self.settings,
                                  self.work / f"step-{len(layers)}-{digest}.state.pt", log=self.log,
                                  progress=self.progress, teacher=self.teacher)
        return {"epochs": len(history), "loss": history[-1]["loss"],
                "seconds_per_epoch": sum(h["seconds"] for h in history) / len(history)}

    def release(self) -> None:
        """The search is complete: nothing left to resume (the steps' states, their stamps, the search's stamp)."""
        self.stamp.release(*self.work.glob("step-*.state.pt"), *self.work.glob("step-*.state.json"))
        with contextlib.suppress(OSError):
            self.work.rmdir()


def iterative_budget_plan(detector: Detector, scores: dict, data: str | Path | None, max_map_drop: float,
                          settings: FinetuneSettings, work_dir: str | Path, policy: str = "safe",
                          rank: str = "plain", fold: FoldAnalysis | None = None, step_rate: float = 0.05,
                          held_out_images: int = 64, max_rate: float | None = None, train_images: int | None = None,
                          search_report: str | Path | None = None, log: Callable[[str], None] | None = None,
                          progress: bool = False, search_split: str = SEARCH_SPLIT) -> Plan:
    """`iterative_search` on DATA: mAP on the held-out images (as `budget_plan`), fine-tuning on the train
    split between steps (`StepTraining`, resumable). The detector is left fine-tuned at the chosen plan, which
    carries the search and its held-out images as `budget`."""
    max_map_drop, step_rate = check_max_map_drop(max_map_drop), check_step_rate(step_rate)
    held = search_images(detector, scores, data, held_out_images, search_split, log)
    assert data is not None  # search_images refuses a search without data
    training = StepTraining(detector, scores, data, settings, work_dir, held,
                            {"step_rate": step_rate, "policy": policy, "rank": rank, "max_map_drop": max_map_drop,
                             "max_rate": max_rate}, train_images, log, progress)
    search = iterative_search(detector, scores, lambda d: evaluate_map(d, held.data)["map"], training,
                              max_map_drop, step_rate, policy, rank, fold, max_rate, finetune_record=training.record(),
                              log=log)
    return finished(search, held, training, search_report, max_map_drop, "after fine-tuning")


def iterative_target_plan(detector: Detector, scores: dict, data: str | Path | None, target: float,
                          max_map_drop: float, settings: FinetuneSettings | None, work_dir: str | Path,
                          policy: str = "safe", step_macs: float = 0.05, held_out_images: int = 64,
                          train_images: int | None = None, search_report: str | Path | None = None,
                          log: Callable[[str], None] | None = None, progress: bool = False,
                          search_split: str = SEARCH_SPLIT) -> Plan:
    """`iterative_target_search` on DATA: steps of `step_macs` of the MACs toward `target`, mAP on the held-out
    images, fine-tuning (with `settings`; None: never) on the train split after a step over budget. The detector
    is left at the last kept step; the plan carries the search and its held-out images as `budget`."""
    from xprune.prune.target_steps import check_step_macs, iterative_target_search

    max_map_drop, step_macs = check_max_map_drop(max_map_drop), check_step_macs(step_macs)
    held = search_images(detector, scores, data, held_out_images, search_split, log)
    assert data is not None
    training = None if settings is None else StepTraining(
        detector, scores, data, settings, work_dir, held,
        {"target_macs": target, "step_macs": step_macs, "policy": policy, "max_map_drop": max_map_drop},
        train_images, log, progress)
    search = iterative_target_search(detector, scores, lambda d: evaluate_map(d, held.data)["map"], training, target,
                                     max_map_drop, step_macs, policy,
                                     finetune_record=training.record() if training else None, log=log)
    return finished(search, held, training, search_report, max_map_drop, "toward the MAC target")


def finished(search, held: HeldOut, training: StepTraining | None, search_report: str | Path | None,
             max_map_drop: float, how: str) -> Plan:
    """Write the search's record, release its training states, and return its plan (or say none was kept)."""
    if search_report is not None:
        write_json(search_report, {**search.to_json(), "held_out": held.record()})
    if training is not None:
        training.release()
    if search.plan is None:
        where = f" (search written to {search_report})" if search_report is not None else ""
        raise XpruneError(f"no step keeps the mAP drop within {max_map_drop} {how}{where}")
    return dataclasses.replace(search.plan, budget={**search.record(), "held_out": held.record()})


__all__ = ["SEARCH_SPLIT", "HeldOut", "StepTraining", "budget_plan", "check_max_map_drop", "check_search_split",
           "check_step_rate", "finished", "held_out_split", "iterative_budget_plan", "iterative_target_plan",
           "scored_images", "search_images"]
