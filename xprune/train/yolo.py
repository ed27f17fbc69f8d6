"""YOLO families train with Ultralytics' own trainer; it saves last.pt every epoch, and a rerun resumes from it.
A COCO-format dataset folder reaches that trainer as a data.yaml over Ultralytics-format labels written beside the
run (`ultralytics_data_yaml`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from xprune.errors import XpruneError
from xprune.models.zoo import require_ultralytics
from xprune.resume import Stamp, input_identity

DONE = "done"  # marker beside the weights: the run finished; a rerun reuses it instead of resuming


def train_yolo(model: str, data: Path, epochs: int, size: int, work: Path, batch: int = 32,
               train_images: int | None = None) -> tuple[Path, Path]:
    """Train `model` (e.g. yolov8n) from scratch on a dataset folder with a data.yaml; return (best.pt,
    results.csv). `work` is the run folder; when it holds an unfinished run, training resumes from its last.pt."""
    require_ultralytics()
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


CONVERTED_SPLITS = ("train", "val")


def ultralytics_data_yaml(data: str | Path, folder: str | Path, category_ids: list[int] | None = None) -> Path:
    """The data.yaml Ultralytics' trainer reads for xprune's --data: a data.yaml is used as it is; a COCO-format
    folder is written to `folder` as images/SPLIT (links to the listed images) and labels/SPLIT (one `class cx cy w
    h` line per non-crowd box), for the train and val splits. Class i is the i-th of `category_ids` (the model's),
    else of the dataset's sorted category ids, as xprune reads the folder. The copy is rebuilt only when the
    annotation files or the class map change."""
    from xprune.data.coco import CocoDetectionSet
    from xprune.data.yolo_format import is_data_yaml

    if is_data_yaml(data):
        if not Path(data).is_file():
            raise XpruneError(f"data.yaml not found: {data}")
        return Path(data)
    root, folder = Path(data), Path(folder)
    sets = {split: CocoDetectionSet.from_folder(root, split, 32) for split in CONVERTED_SPLITS}
    ids = list(category_ids) if category_ids is not None else sets["train"].category_ids
    unknown = sorted({c for s in sets.values() for c in s.category_ids} - set(ids))
    if unknown:
        raise XpruneError(f"{root} has categories the model has no class for (ids {unknown[:5]})")
    names = {c["id"]: c["name"] for c in sets["train"].coco.dataset["categories"]}
    identity = input_identity({"root": str(root.resolve()), "category_ids": ids},
                              files={split: root / "annotations" / f"instances_{split}.json" for split in sets})
    yaml_path = folder / "data.yaml"
    if Stamp(folder / "source.json", identity, "converted dataset").claim([yaml_path], refuse=False):
        return yaml_path
    for sub in ("images", "labels"):
        shutil.rmtree(folder / sub, ignore_errors=True)
    yaml_path.unlink(missing_ok=True)
    for split, images in sets.items():
        _write_split(images, folder, split, ids)
    import yaml  # PyYAML, which Ultralytics depends on

    doc = {"path": str(folder.resolve()), **{s: f"images/{s}" for s in CONVERTED_SPLITS},
           "names": {i: str(names.get(c, f"class{i}")) for i, c in enumerate(ids)}}
    yaml_path.write_text(yaml.safe_dump(doc, sort_keys=False))  # last: its presence marks a finished copy
    return yaml_path


def _write_split(images, folder: Path, split: str, category_ids: list[int]) -> None:
    index = {c: i for i, c in enumerate(category_ids)}
    for image_id, source in zip(images.image_ids, images.image_paths()):
        info = images.coco.imgs[image_id]
        link = folder / "images" / split / info["file_name"]
        label = (folder / "labels" / split / info["file_name"]).with_suffix(".txt")
        link.parent.mkdir(parents=True, exist_ok=True)
        label.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.symlink(source.resolve(), link)
        except OSError:  # no symlinks here (e.g. Windows without the privilege): copy
            shutil.copyfile(source, link)
        lines = []
        for a in images.coco.imgToAnns[image_id]:
            if a.get("iscrowd", 0) or a["category_id"] not in index:
                continue
            x, y, w, h = a["bbox"]
            x0, y0 = max(0.0, x) / info["width"], max(0.0, y) / info["height"]
            x1, y1 = min(info["width"], x + w) / info["width"], min(info["height"], y + h) / info["height"]
            if x1 > x0 and y1 > y0:
                lines.append(f"{index[a['category_id']]} {(x0 + x1) / 2:.6f} {(y0 + y1) / 2:.6f} {x1 - x0:.6f} "
                             f"{y1 - y0:.6f}")
        label.write_text("".join(line + "\n" for line in lines))
