"""Recovery fine-tuning of the YOLO families through Ultralytics' own trainer (its data pipeline, augmentation, EMA,
warm-up, loss and multi-GPU mode), from a pruned checkpoint, with the zeroed layers held exactly at zero.

What holds them at zero (`HoldAtZero`, trainer callbacks that travel with the trainer into multi-GPU workers):
- a gradient hook hands the optimizer a zero gradient for every zeroed conv weight, so SGD's momentum and Adam's
  moments stay zero, and weight decay (a multiple of the weight) adds nothing to a zero weight;
- after every batch those weights are set to zero again in the model and in its EMA, which is what Ultralytics
  validates and saves as last.pt and best.pt (the EMA of two zeros is zero);
- the BatchNorm after a zeroed conv stays and trains: the block outputs a constant, which the fold removes as before
  (Ultralytics fuses Conv and BN only at export, and a fused zero weight is still zero).

The run lives in a work folder beside the output (OUT.ultralytics/): the converted dataset (for a COCO-format
folder), start.pt (the pruned weights as an Ultralytics checkpoint: `yolo train model=start.pt` reads it too),
Ultralytics' run (run/weights/last.pt every epoch, run/results.csv, run/args.yaml) and ema.pt (the EMA in fp32 after
every epoch). A rerun with the same inputs resumes from last.pt, or reuses a finished run.
"""

from __future__ import annotations

import copy
import csv
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from xprune.errors import XpruneError
from xprune.files import atomic_path
from xprune.models.detector import Detector
from xprune.models.yolo import YoloDetector
from xprune.models.zoo import require_ultralytics
from xprune.resume import Stamp, arrays_sha256, input_identity, plain
from xprune.train.yolo import ultralytics_data_yaml

Log = Callable[[str], None]
EpochEnd = Callable[[int, dict], bool]  # (epochs done, the EMA's state in fp32) -> stop here
RUN = "run"
# Fine-tuning starts from trained weights: AdamW at the given lr0, a short warm-up with no bias warm-up from 0.1 (a
# rate for random init), a cosine decay. A recipe's own values replace these; lr0 and epochs are always the caller's.
FINETUNE_DEFAULTS = {"optimizer": "AdamW", "cos_lr": True, "warmup_epochs": 0.5, "warmup_bias_lr": 0.0,
                     "plots": False}
# What names one run rather than a recipe (e.g. in a previous run's args.yaml): this module sets them.
RUN_KEYS = ("model", "data", "epochs", "lr0", "project", "name", "save_dir", "exist_ok", "resume", "mode", "task",
            "pretrained")
MAP_COLUMN = "metrics/mAP50-95(B)"


def _student(model: torch.nn.Module) -> torch.nn.Module:
    """The model being fine-tuned (Ultralytics' DistillationModel, recipe key distill_model, wraps it)."""
    student = getattr(model, "student_model", None)
    return model if student is None else student


def _conv_weights(model: torch.nn.Module, layers: list[str]) -> list[torch.Tensor]:
    convs = {n: m for n, m in _student(model).named_modules() if isinstance(m, torch.nn.Conv2d)}
    missing = [n for n in layers if n not in convs]
    if missing:
        raise XpruneError(f"{len(missing)} zeroed layers are not in the model (first: {missing[0]})")
    return [convs[n].weight for n in layers]


def nonzero_layers(model: torch.nn.Module, layers: list[str]) -> list[str]:
    return [n for n, w in zip(layers, _conv_weights(model, layers)) if bool(w.detach().any())]


def state_digest(model: torch.nn.Module, keys: list[str]) -> str:
    state = _student(model).state_dict()
    return arrays_sha256((k, state[k].float() if state[k].is_floating_point() else state[k]) for k in keys)


class HoldAtZero:
    """Ultralytics trainer callbacks: `layers` stay exactly zero in the model and in its EMA; a fresh run must start
    from the weights `start` names ((keys, digest) of their state); after every saved epoch the EMA goes to
    `ema_path` in fp32, marked finished when training ends, and `epoch_end` (if given) is told the epoch and that
    state: when it answers True, training stops there."""

    def __init__(self, layers: list[str], ema_path: str | Path, start: tuple[list[str], str] | None = None,
                 log: Log = print, epoch_end: EpochEnd | None = None):
        self.layers, self.ema_path, self.start, self.log = list(layers), str(ema_path), start, log
        self.epoch_end = epoch_end
        self._model_weights: list[torch.Tensor] = []
        self._ema: tuple[Any, list[torch.Tensor]] = (None, [])
        self._tick = time.perf_counter()

    def __getstate__(self) -> dict:  # pickled into multi-GPU workers before training starts: no tensors
        # (epoch_end runs where the model is saved, in the first process only)
        return {**self.__dict__, "_model_weights": [], "_ema": (None, []), "epoch_end": None}

    def register(self, trainer) -> None:
        for event in ("on_train_start", "on_train_batch_end", "on_model_save", "on_train_end"):
            trainer.add_callback(event, getattr(self, event))

    def on_train_start(self, trainer) -> None:
        from ultralytics.utils.torch_utils import unwrap_model

        model = unwrap_model(trainer.model)
        if self.start is not None and trainer.start_epoch == 0 and state_digest(model, self.start[0]) != self.start[1]:
            raise XpruneError("Ultralytics' trainer did not start from the pruned weights (a recipe's class count or "
                              "architecture differs from the checkpoint's)")
        self._model_weights = _conv_weights(model, self.layers)
        for w in self._model_weights:
            if w.requires_grad:
                w.register_hook(torch.zeros_like)
        self.rezero(trainer)
        self._tick = time.perf_counter()

    def on_train_batch_end(self, trainer) -> None:
        self.rezero(trainer)

    def rezero(self, trainer) -> None:
        ema = getattr(trainer.ema, "ema", None)
        if ema is not None and self._ema[0] is not ema:  # a resume or a NaN recovery builds a new EMA
            self._ema = (ema, _conv_weights(ema, self.layers))
        with torch.no_grad():
            for w in self._model_weights + self._ema[1]:
                w.zero_()

    def on_model_save(self, trainer) -> None:
        state = self._save_ema(trainer, finished=False)
        done, seconds = trainer.epoch + 1, time.perf_counter() - self._tick
        if self.epoch_end is not None and self.epoch_end(done, state):
            trainer.stop = True  # Ultralytics ends the run after this epoch, as its own early stop does
        self._tick = time.perf_counter()  # what epoch_end took is not the next epoch's
        validated = trainer.args.val or done >= trainer.epochs  # else its metrics are placeholders
        score = (trainer.metrics or {}).get(MAP_COLUMN) if validated else None
        left = (trainer.epochs - done) * seconds
        self.log(f"epoch {done}/{trainer.epochs}" + (f" val mAP50-95 {score:.4f}" if score is not None else "")
                 + f" time {seconds:.0f}s" + (f", about {left / 60:.1f} min left" if left > 0 else ""))

    def on_train_end(self, trainer) -> None:
        self._save_ema(trainer, finished=True)

    def _save_ema(self, trainer, finished: bool) -> dict:
        model = _student(trainer.ema.ema)
        moved = nonzero_layers(model, self.layers)
        if moved:  # never hand on a model whose pruned layers came back
            raise XpruneError(f"{len(moved)} pruned layers are no longer zero in the EMA (first: {moved[0]})")
        state = {k: v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()
                 for k, v in model.state_dict().items()}
        with atomic_path(self.ema_path) as tmp:
            torch.save({"epoch": trainer.epoch + 1, "epochs": trainer.epochs, "finished": finished,
                        "state_dict": state}, tmp)
        return state


def read_recipe(recipe: str | Path | Mapping[str, Any] | None) -> dict:
    """Ultralytics train arguments from a dict or a yaml file (a previous run's args.yaml, a user's cfg)."""
    if recipe is None or isinstance(recipe, Mapping):
        return dict(recipe or {})
    import yaml

    path = Path(recipe)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise XpruneError(f"cannot read the recipe {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise XpruneError(f"{path} is not a recipe (a yaml mapping of Ultralytics train arguments)")
    return doc


def trainer_args(recipe: Mapping[str, Any], epochs: int, lr0: float, defaults: Mapping[str, Any],
                 given: Mapping[str, Any] | None = None) -> dict:
    """Ultralytics' defaults < `FINETUNE_DEFAULTS` and `defaults` < the recipe < `given` (what the caller set: image
    size, batch, device), epochs and lr0. Optimizer 'auto' becomes AdamW: on a short run auto replaces lr0 by its
    own fit for training from scratch."""
    require_ultralytics()
    from ultralytics.utils import DEFAULT_CFG_DICT

    unknown = sorted(set(recipe) - set(DEFAULT_CFG_DICT))
    if unknown:
        raise XpruneError(f"the recipe has keys Ultralytics' trainer does not know: {', '.join(unknown[:5])}")
    args = {**FINETUNE_DEFAULTS, **defaults, **{k: v for k, v in recipe.items() if k not in RUN_KEYS},
            **{k: v for k, v in (given or {}).items() if v is not None}}
    if str(args.get("optimizer", "auto")).lower() == "auto":
        args.update(optimizer="AdamW", warmup_bias_lr=0.0)
    return {**args, "epochs": epochs, "lr0": lr0}


def _read_ema(path: Path) -> dict | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # absent or half-written: the run continues from last.pt
        return None


def _history(results: Path) -> list[dict]:
    """results.csv, one record per epoch (Ultralytics' losses and val metrics)."""
    if not results.is_file():
        return []
    with results.open(newline="") as f:
        return [{k.strip(): float(v) for k, v in row.items() if v not in (None, "")} for row in csv.DictReader(f)]


def _args_beyond_defaults(run: Path) -> dict:
    """What the run's args.yaml sets beyond Ultralytics' defaults: the recipe as it ran."""
    import yaml
    from ultralytics.utils import DEFAULT_CFG_DICT

    args = yaml.safe_load((run / "args.yaml").read_text()) if (run / "args.yaml").is_file() else {}
    return plain({k: v for k, v in (args or {}).items() if DEFAULT_CFG_DICT.get(k) != v})


def _trainer(overrides: dict):
    from ultralytics.models.yolo.detect import DetectionTrainer

    try:
        return DetectionTrainer(overrides=overrides)
    except (TypeError, ValueError, SyntaxError, RuntimeError, FileNotFoundError) as e:
        raise XpruneError(f"Ultralytics' trainer refused the run: {str(e).strip().splitlines()[0]}") from None


def _estimate(det: Detector, data: str | Path, batch: int, log: Log) -> None:
    """Before training on the CPU: seconds per epoch from two timed steps of the same model and loss."""
    from xprune.data.coco import CocoDetectionSet
    from xprune.train.loop import seconds_per_step

    train = CocoDetectionSet.from_folder(data, "train", det.input_size)
    step = seconds_per_step(copy.deepcopy(det), train, min(batch, len(train)))
    steps = math.ceil(len(train) / batch)
    log(f"about {step * steps:.1f} s per epoch of training on this CPU ({steps} steps of {batch} images; "
        "validation extra)")


def finetune_with_ultralytics(weights: str | Path, layers: list[str], data: str | Path, epochs: int,
                              out: str | Path, lr0: float | None = None, imgsz: int | None = None,
                              batch: int | None = None, device: str | None = None,
                              recipe: str | Path | Mapping[str, Any] | None = None,
                              work: str | Path | None = None, val_images: int | None = None, evaluate: bool = True,
                              log: Log = print, epoch_end: EpochEnd | None = None) -> dict:
    """Fine-tune the pruned YOLO checkpoint `weights` with Ultralytics' trainer on DATA (a data.yaml, or a COCO-format
    folder, converted), `layers` (its plan's) held at zero, and write the xprune checkpoint `out`: the final EMA's
    weights, the checkpoint's meta (its plan) and meta['finetune'] (this record, also returned). lr0 defaults to a
    fraction of the family's reference learning rate; `recipe` (dict or yaml) carries a YOLO user's train
    arguments; device: Ultralytics' ('cpu', '0', '0,1' for multi-GPU; None picks). `evaluate`: xprune's val mAP
    before and after, on the first `val_images` val images. `epoch_end`: see `HoldAtZero`."""
    from xprune.data.yolo_format import read_data_yaml, split_images
    from xprune.models import build_detector, save_checkpoint
    from xprune.train.schedule import finetune_lr

    require_ultralytics()
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs <= 0:
        raise XpruneError(f"fine-tuning epochs must be a positive integer, got {epochs}")
    if not Path(weights).is_file():
        raise XpruneError(f"checkpoint not found: {weights} (fine-tuning needs a pruned checkpoint)")
    det = build_detector(None, str(weights), input_size=imgsz)
    if not isinstance(det, YoloDetector):
        raise XpruneError(f"{det.family} is not an Ultralytics family: fine-tune it with xprune's own loop")
    alive = nonzero_layers(det.model, list(layers))
    if alive:
        raise XpruneError(f"layer {alive[0]} of {weights} is not zero: the plan was not applied to it")
    out, layers = Path(out), list(layers)
    work = Path(work) if work is not None else out.with_suffix(".ultralytics")
    data_yaml = ultralytics_data_yaml(data, work / "data", det.category_ids)
    dataset = read_data_yaml(data_yaml)
    if len(dataset.names) != det.num_classes:
        raise XpruneError(f"the model has {det.num_classes} classes, {data} has {len(dataset.names)}")
    lr0 = float(lr0) if lr0 is not None else finetune_lr(det)
    args = trainer_args(read_recipe(recipe), epochs, lr0, {"imgsz": det.input_size, "batch": 16},
                        {"imgsz": imgsz, "batch": batch, "device": device})
    run, ema_path, start = work / RUN, work / "ema.pt", work / "start.pt"
    last = run / "weights" / "last.pt"
    deciding = {k: v for k, v in args.items() if k not in ("device", "workers", "plots", "verbose")}
    converted = work / "data" / "source.json"
    identity = input_identity({**deciding, "layers": layers}, files={
        "weights": weights, "data": data_yaml, "converted": converted if converted.is_file() else None})
    resumed = Stamp(work / "inputs.json", identity, "Ultralytics fine-tuning run").claim([last])

    before = after = None
    val = None
    if evaluate:
        from xprune.data.coco import CocoDetectionSet
        from xprune.evaluate.coco_map import evaluate_map

        val = CocoDetectionSet.from_folder(data, "val", det.input_size, limit=val_images)
        before = evaluate_map(det, val)["map"]
        log(f"val mAP before fine-tuning: {before:.4f} ({len(val)} images)")
    state = _read_ema(ema_path) if resumed else None
    t0, epochs_before = time.perf_counter(), (state or {}).get("epoch", 0)
    if state is not None and (state["finished"] or state["epoch"] >= state["epochs"]):
        log(f"using the finished run in {run} (delete {work} to train again)")
    else:
        if resumed:
            log(f"resuming from {last}")
            trainer = _trainer({"resume": str(last), "data": str(data_yaml),
                                **({"device": device} if device is not None else {})})
            hold = HoldAtZero(layers, ema_path, log=log, epoch_end=epoch_end)
        else:
            shutil.rmtree(run, ignore_errors=True)
            ema_path.unlink(missing_ok=True)
            model = copy.deepcopy(det.model).float()
            with atomic_path(start) as tmp:
                torch.save({"model": model, "train_args": {}}, tmp)
            keys = list(model.state_dict())
            trainer = _trainer({**args, "model": str(start), "data": str(data_yaml), "project": str(work),
                                "name": RUN, "exist_ok": True, "pretrained": True})
            hold = HoldAtZero(layers, ema_path, start=(keys, state_digest(model, keys)), log=log,
                              epoch_end=epoch_end)
        if trainer.device.type == "cpu" and trainer.batch_size >= 1:
            _estimate(det, data, int(trainer.batch_size), log)
        log(f"fine-tuning {epochs} epochs with Ultralytics' trainer, {len(layers)} layers held at zero, lr0 {lr0:g}")
        hold.register(trainer)
        trainer.train()
        state = _read_ema(ema_path)
        if state is None or not state["finished"]:
            raise XpruneError(f"Ultralytics' run in {run} ended without its final weights")
    seconds = time.perf_counter() - t0

    try:
        det.model.load_state_dict(state["state_dict"])
    except RuntimeError as e:
        raise XpruneError(f"the fine-tuned weights do not fit {det.family}: {str(e).splitlines()[0]}") from None
    det.model.eval()
    moved = nonzero_layers(det.model, layers)
    if moved:
        raise XpruneError(f"{len(moved)} pruned layers are no longer zero after fine-tuning (first: {moved[0]})")
    if evaluate:
        after = evaluate_map(det, val)["map"]
        log(f"val mAP after: {after:.4f} ({after - before:+.4f})")
    import ultralytics

    ran = state["epoch"] - epochs_before
    record = {"trainer": f"ultralytics {ultralytics.__version__}", "epochs": epochs, "lr0": lr0,
              "args": _args_beyond_defaults(run), "train_images": len(split_images(dataset, "train")),
              "history": _history(run / "results.csv"), "epochs_this_run": ran, "seconds_this_run": seconds,
              "seconds_per_epoch": seconds / ran if ran else None, "zeroed_layers": len(layers),
              "zeroed_layers_exactly_zero": True, "weights": str(weights), "data": str(data), "run": str(run),
              "val_images": len(val) if val is not None else None, "val_map_before": before, "val_map_after": after}
    save_checkpoint(det, out, meta={**det.meta, "finetune": record})
    return record


__all__ = ["FINETUNE_DEFAULTS", "HoldAtZero", "finetune_with_ultralytics", "nonzero_layers", "read_recipe",
           "trainer_args"]
