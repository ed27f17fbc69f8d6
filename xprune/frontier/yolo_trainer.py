"""A point's recovery through Ultralytics' trainer (`trainer="ultralytics"`, YOLO models): the same pruned start and
the same held layers (`HoldAtZero`), but Ultralytics' augmentation, EMA, warm-up and loss, without distillation.
After each epoch the EMA (what Ultralytics validates and saves) is evaluated with xprune's val mAP on the point's
val images, where the own loop's model is; the point's file is the same as with the own loop.

The run lives in work/<model>/<point>.ultralytics/ (the pruned checkpoint it starts from, Ultralytics' run folder)
and resumes from its last.pt. CPU time per epoch counts the trainer's process and its data-loading workers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from xprune.frontier.settings import FrontierSettings

Log = Callable[[str], None]
# Ultralytics validates every epoch on its own metric by default; the frontier evaluates the EMA itself
RECIPE = {"val": False}


def run_folder(work: Path, model: str, point: str) -> Path:
    return work / model / f"{point}.ultralytics"


def _cpu_seconds() -> float:
    """User and system CPU time of this process and its live children (the trainer's data-loading workers)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:  # a worker that ended meanwhile
            pass
    return total


def recover_with_ultralytics(det, layers: list[str], s: FrontierSettings, data: Path, folder: Path, done: int,
                             after_epoch: Callable[[dict], bool], log: Log) -> dict:
    """Fine-tune the zeroed detector `det` (its `layers` held at zero) with Ultralytics' trainer for `s.epochs`
    epochs, or continue the run in `folder` whose first `done` epochs the point's file records; after each epoch
    `det` takes the EMA's weights and `after_epoch` is told the epoch's record (it evaluates, writes the point's
    file, and may stop the run). Returns what the trainer ran with."""
    import torch

    from xprune.errors import XpruneError
    from xprune.models import save_checkpoint
    from xprune.train.yolo_finetune import finetune_with_ultralytics

    ema = folder / "ema.pt"
    trained = torch.load(ema, map_location="cpu", weights_only=True)["epoch"] if ema.exists() else 0
    if trained != done:  # stopped between Ultralytics' save and the point's file: that epoch has no evaluation
        raise XpruneError(f"the Ultralytics run in {folder} has {trained} epochs, its point file {done}; delete the "
                          "folder to train this point again")
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "pruned.pt"
    if not weights.exists():
        save_checkpoint(det, weights, meta=det.meta)
    clock = {"cpu": _cpu_seconds(), "wall": time.perf_counter()}

    def epoch_end(epoch: int, state: dict) -> bool:
        record = {"epoch": epoch, "seconds": time.perf_counter() - clock["wall"],
                  "cpu_seconds": _cpu_seconds() - clock["cpu"]}
        det.model.load_state_dict(state)
        det.model.eval()
        stop = after_epoch(record)
        clock.update(cpu=_cpu_seconds(), wall=time.perf_counter())  # the evaluation is not training time
        return stop

    ran = finetune_with_ultralytics(weights, layers, data, s.epochs, folder / "recovered.pt", lr0=s.lr,
                                    imgsz=s.size, batch=s.batch_size, recipe={**RECIPE, "seed": s.seed},
                                    work=folder, evaluate=False, log=log, epoch_end=epoch_end)
    state = torch.load(ema, map_location="cpu", weights_only=True)
    det.model.load_state_dict(state["state_dict"])
    det.model.eval()
    return {"trainer": ran["trainer"], "lr0": ran["lr0"], "args": ran["args"], "epochs_run": state["epoch"]}
