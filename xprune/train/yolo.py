"""YOLO families train with Ultralytics' own trainer; it saves last.pt every epoch, and a rerun resumes from it."""

from __future__ import annotations

import shutil
from pathlib import Path

from xprune.errors import XpruneError
from xprune.models.yolo import quiet_ultralytics_env

DONE = "done"  # marker beside the weights: the run finished; a rerun reuses it instead of resuming


def train_yolo(model: str, data: Path, epochs: int, size: int, work: Path, batch: int = 32,
               train_images: int | None = None) -> tuple[Path, Path]:
    """Train `model` (e.g. yolov8n) from scratch on a dataset folder with a data.yaml; return (best.pt,
    results.csv). `work` is the run folder; when it holds an unfinished run, training resumes from its last.pt."""
    quiet_ultralytics_env()
    from ultralytics import YOLO

    if not (data / "data.yaml").is_file():
        raise XpruneError(f"{data} has no data.yaml (the Ultralytics trainer needs one)")
    if train_images is not None:
        raise XpruneError("--train-images is not supported for YOLO families (Ultralytics reads the whole split)")
    last, best = work / "weights" / "last.pt", work / "weights" / "best.pt"
    if (work / "weights" / DONE).is_file() and best.is_file():
        print(f"using the finished run in {work} (delete it to train again)", flush=True)
        return best, work / "results.csv"
    if last.is_file():
        print(f"resuming from {last}", flush=True)
        YOLO(str(last)).train(resume=True)
    else:
        if work.exists():
            shutil.rmtree(work)
        YOLO(f"{model}.yaml").train(
            data=str(data / "data.yaml"), epochs=epochs, imgsz=size, batch=batch, workers=2, device="cpu",
            project=str(work.parent), name=work.name, exist_ok=True, plots=False, amp=False, pretrained=False,
            seed=0, deterministic=True, close_mosaic=max(2, epochs // 4), val=True, verbose=True)
    (work / "weights" / DONE).write_text("finished\n")
    return best, work / "results.csv"
