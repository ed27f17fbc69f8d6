"""Accuracy-budget pruning on a dataset: the largest plan whose COCO mAP drop on held-out images stays within a budget.

`budget_plan` runs the rate search (bisection and lookahead over the number of layers), `iterative_budget_plan` the
search that fine-tunes between steps (both in `xprune.prune.budget_search`), on the images of the dataset's calib
split after the ones the scores were computed on (`held_out_split`). The iterative search's training states live in
a work folder with a stamp (`xprune.resume`) naming the search's inputs, so an interrupted search rerun with the
same inputs replays its finished steps instead of training them again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from xprune.data.coco import CocoDetectionSet, has_split
from xprune.errors import XpruneError
from xprune.evaluate.coco_map import evaluate_map
from xprune.files import write_json
from xprune.models.detector import Detector
from xprune.prune.budget_search import check_max_map_drop, check_step_rate, iterative_search, search_rate
from xprune.prune.plan import Plan
from xprune.resume import Stamp, arrays_sha256, input_identity, json_sha256

if TYPE_CHECKING:
    from xprune.export.fold.analysis import FoldAnalysis
    from xprune.prune.finetune import FinetuneSettings

HELD_OUT_SPLIT = "calib"


def scored_calib_images(scores: dict, root: str | Path) -> int:
    """How many images at the start of ROOT's calib split the scores were computed on (0 for data-free criteria
    or scores computed on another annotations file)."""
    calibration = scores.get("calibration")
    if not calibration:
        return 0
    try:  # what a calib set of ROOT records as its annotations: the JSON file, or "data.yaml (calib)"
        ann = CocoDetectionSet.from_folder(root, HELD_OUT_SPLIT, 32, limit=1).annotations
    except XpruneError:
        return 0
    try:
        same = Path(calibration["annotations"]).resolve() == ann.resolve()
    except (KeyError, TypeError, OSError):
        return 0
    return int(calibration.get("images", 0)) if same else 0


def held_out_split(root: str | Path, size: int, images: int, skip: int = 0) -> CocoDetectionSet:
    """The split the budget search evaluates on: images `skip` .. `skip + images - 1` of the dataset's 'calib'
    split (sorted image ids), i.e. the calib images after the ones the scores were computed on
    (`scored_calib_images`); fewer when the split is shorter.

    Why there: 'train' images were seen in training (inflated mAP, the drop under pruning is not the drop on
    new images); 'val' is where final results are reported, so choosing the rate on it would make the reported
    drop optimistic (selection on the test set); the calib images used for scoring are the ones a data-driven
    ranking was fit on (optimistic again). The calib tail is disjoint from all three. It is small: the drop's
    resolution is that of mAP on a few dozen images, so give it as many as the split allows (score on half of
    calib, e.g. `xprune score --calib-images 32` with 64 calib images, or synthesize a larger calib split)."""
    if images < 1 or skip < 0:
        raise XpruneError(f"held-out split needs images >= 1 and skip >= 0, got {images} and {skip}")
    root = Path(root)
    if not has_split(root, HELD_OUT_SPLIT):
        raise XpruneError(f"the budget search evaluates on the '{HELD_OUT_SPLIT}' split, held out from training "
                          f"and from the val results; {root} has none (a data.yaml: add a 'calib:' entry)")
    data = CocoDetectionSet.from_folder(root, HELD_OUT_SPLIT, size, limit=skip + images)
    if len(data) <= skip:
        raise XpruneError(f"all {len(data)} images of the '{HELD_OUT_SPLIT}' split were used for scoring; score on "
                          f"fewer (--calib-images) or use a larger '{HELD_OUT_SPLIT}' split")
    data.image_ids = data.image_ids[skip:]
    return data


def budget_plan(detector: Detector, scores: dict, data: str | Path | None, max_map_drop: float,
                policy: str = "safe", held_out_images: int = 64, max_rate: float | None = None,
                search_report: str | Path | None = None, log: Callable[[str], None] | None = None,
                rank: str = "plain", fold: FoldAnalysis | None = None) -> Plan:
    """The plan at the largest rate whose COCO mAP drop on DATA's held-out calib images (`held_out_split`, after
    the images the scores were computed on) stays within `max_map_drop`; it carries the search as `budget`.
    The search is written to `search_report` when given, also when no rate fits (then XpruneError)."""
    max_map_drop = check_max_map_drop(max_map_drop)
    if not data:
        raise XpruneError("--max-map-drop needs --data DIR: mAP is measured on its calib images after the scored ones")
    held = held_out_split(data, detector.input_size, held_out_images, skip=scored_calib_images(scores, data))
    search = search_rate(detector, scores, lambda d: evaluate_map(d, held)["map"], max_map_drop, policy,
                         max_rate=max_rate, log=log, rank=rank, fold=fold)
    if search_report is not None:
        write_json(search_report, search.to_json())
    if search.plan is None:
        where = f" (search written to {search_report})" if search_report is not None else ""
        raise XpruneError(f"no rate keeps the mAP drop within {max_map_drop}{where}")
    return dataclasses.replace(search.plan, budget=search.record())


def iterative_budget_plan(detector: Detector, scores: dict, data: str | Path | None, max_map_drop: float,
                          settings: FinetuneSettings, work_dir: str | Path, policy: str = "safe",
                          rank: str = "plain", fold: FoldAnalysis | None = None, step_rate: float = 0.05,
                          held_out_images: int = 64, max_rate: float | None = None, train_images: int | None = None,
                          search_report: str | Path | None = None, log: Callable[[str], None] | None = None,
                          progress: bool = False) -> Plan:
    """`iterative_search` on DATA: mAP on the held-out calib images (as `budget_plan`), fine-tuning on the train
    split. Each step's training state lives in `work_dir` (named by its layers), stamped beside the stamp of the
    search's inputs (search.json: the model's weights, the scores, the data, the settings), so an interrupted search
    rerun with the same inputs replays the finished steps without training them again; another search's steps are
    refused in one line. The detector is left fine-tuned at the chosen plan, which carries the search as `budget`."""
    from xprune.prune.finetune import finetune_layers, require_torch, train_split

    require_torch(detector)
    max_map_drop, step_rate = check_max_map_drop(max_map_drop), check_step_rate(step_rate)
    if not data:
        raise XpruneError("--max-map-drop needs --data DIR: mAP is measured on its calib images after the scored ones")
    held = held_out_split(data, detector.input_size, held_out_images, skip=scored_calib_images(scores, data))
    train = train_split(data, detector.input_size, train_images)
    work = Path(work_dir)
    say = log or (lambda message: None)
    identity = input_identity({"data": str(Path(data).resolve()), "held_out": held.image_ids,
                               "train_images": len(train), "finetune": dataclasses.asdict(settings),
                               "step_rate": step_rate, "policy": policy, "rank": rank, "max_map_drop": max_map_drop,
                               "max_rate": max_rate},
                              model=arrays_sha256(detector.model.state_dict().items()), scores=json_sha256(scores))
    stamp = Stamp(work / "search.json", identity, "pruning search steps")
    stamp.claim(work.glob("step-*.state.pt"))

    def finetune(det: Detector, layers: list[str], step: int) -> dict:
        digest = hashlib.sha256("\n".join(layers).encode()).hexdigest()[:12]
        history = finetune_layers(det, train, layers, settings, work / f"step-{len(layers)}-{digest}.state.pt",
                                  log=say, progress=progress)
        return {"epochs": len(history), "loss": history[-1]["loss"],
                "seconds_per_epoch": sum(h["seconds"] for h in history) / len(history)}

    record = {**dataclasses.asdict(settings), "train_images": len(train)}
    search = iterative_search(detector, scores, lambda d: evaluate_map(d, held)["map"], finetune, max_map_drop,
                              step_rate, policy, rank, fold, max_rate, finetune_record=record, log=log)
    if search_report is not None:
        write_json(search_report, search.to_json())
    # the search is complete: nothing left to resume (the steps' states, their stamps, the search's stamp)
    stamp.release(*work.glob("step-*.state.pt"), *work.glob("step-*.state.json"))
    with contextlib.suppress(OSError):
        work.rmdir()
    if search.plan is None:
        where = f" (search written to {search_report})" if search_report is not None else ""
        raise XpruneError(f"no step keeps the mAP drop within {max_map_drop} after fine-tuning{where}")
    return dataclasses.replace(search.plan, budget=search.record())


__all__ = ["HELD_OUT_SPLIT", "budget_plan", "check_max_map_drop", "check_step_rate", "held_out_split",
           "iterative_budget_plan", "scored_calib_images"]
