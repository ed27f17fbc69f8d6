"""Ultralytics YOLOv8 and YOLO11 (any size) behind the common interface. The loss is Ultralytics' own
v8DetectionLoss, computed from eval-mode outputs so BatchNorm statistics stay frozen."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch
from torchvision.ops import box_convert

from xprune.errors import XpruneError
from xprune.models.detector import Detector

# The Ultralytics detection families xprune supports, by the stem of their packaged yaml (yolov8.yaml, yolo11.yaml).
YOLO_VERSIONS = {"yolov8": "YOLOv8", "yolo11": "YOLO11"}
YOLO_SCALES = "nsmlx"
TASK_NAMES = {"segment": "segmentation", "semantic": "semantic segmentation", "pose": "pose",
              "classify": "classification", "obb": "oriented-box (OBB)", "depth": "depth"}


def quiet_ultralytics_env() -> None:
    """Ultralytics pip-installs and downloads at run time unless told not to."""
    import os
    import tempfile

    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "xprune-ultralytics"))


def build_yolo(scale: str, num_classes: int, version: str = "yolov8") -> torch.nn.Module:
    """A random-init DetectionModel from Ultralytics' packaged yaml (offline), e.g. version 'yolo11', scale 'n'."""
    quiet_ultralytics_env()
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(f"{version}{scale}.yaml", nc=num_classes, verbose=False)
    model.args = get_cfg()  # loss gains (box, cls, dfl) come from the default training config
    return model


def _architecture(cfg: dict) -> str:
    """Backbone and head of a model yaml, comparable across tuples/lists and None/'None'."""
    return json.dumps([cfg.get("backbone"), cfg.get("head")], default=str).replace("null", '"None"')


@functools.lru_cache(maxsize=None)
def _packaged_architecture(version: str) -> str:
    from ultralytics.nn.tasks import yaml_model_load
    return _architecture(yaml_model_load(f"{version}n.yaml"))


def ultralytics_family(model: torch.nn.Module, source: str) -> str:
    """The zoo name (e.g. 'yolo11s') of an Ultralytics model, read from the model itself: its yaml's backbone and
    head must be those of a packaged family whatever the yaml file was called (or the file have an official name,
    for checkpoints of older releases), and its `scale` picks the size. Other tasks and architectures are refused
    with one line (`source` names the file)."""
    quiet_ultralytics_env()
    from ultralytics.nn.tasks import guess_model_scale, guess_model_task

    cfg = getattr(model, "yaml", None)
    if not isinstance(cfg, dict) or "head" not in cfg:
        raise XpruneError(f"{source} is not an Ultralytics detection checkpoint (its model has no yaml)")
    task = guess_model_task(cfg)
    if task != "detect":
        raise XpruneError(f"{source} holds an Ultralytics {TASK_NAMES.get(task, str(task))} model; xprune prunes "
                          "detection models only")
    arch = _architecture(cfg)
    version = next((v for v in YOLO_VERSIONS if _packaged_architecture(v) == arch), None)
    yaml_name = str(cfg.get("yaml_file") or "an unnamed yaml")
    stem = Path(yaml_name).stem
    if version is None and stem[:-1] in YOLO_VERSIONS and stem[-1:] in YOLO_SCALES:
        version = stem[:-1]  # an official name, from a release whose yaml text differed slightly
    if version is None:
        raise XpruneError(f"{source} holds an Ultralytics detector built from {yaml_name} that is none of "
                          f"{', '.join(YOLO_VERSIONS.values())}; xprune supports those families only")
    scale = cfg.get("scale") or guess_model_scale(yaml_name)
    if scale not in tuple(YOLO_SCALES):
        raise XpruneError(f"{source} holds a {YOLO_VERSIONS[version]} model of unknown size (scale {scale!r})")
    return f"{version}{scale}"


def yolo_predictors(model: torch.nn.Module) -> list[str]:
    """The 1x1 convs that emit box distributions (cv2) and class logits (cv3) per level, and the fixed DFL conv."""
    detect_index = len(model.model) - 1
    names = []
    for n, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d) and n.startswith(f"model.{detect_index}."):
            parts = n.split(".")
            if (parts[2] in ("cv2", "cv3") and parts[-1] == "2") or parts[2] == "dfl":
                names.append(n)
    return names


class YoloDetector(Detector):
    def _batch(self, x: torch.Tensor, targets: list[dict]) -> dict:
        s = float(self.input_size)
        idx, cls, boxes = [], [], []
        for i, t in enumerate(targets):
            b = t["boxes"].float()
            idx.append(torch.full((b.shape[0],), float(i)))
            cls.append(t["labels"].float().reshape(-1, 1))
            xywh = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)
            boxes.append(xywh / s)
        return {"img": x, "batch_idx": torch.cat(idx), "cls": torch.cat(cls), "bboxes": torch.cat(boxes)}

    def loss(self, x, targets):
        self.model.eval()
        preds = self.model(x)
        total, _ = self.model.loss(self._batch(x, targets), preds)
        return total.sum()

    def train_step_loss(self, x, targets):
        self.model.train()
        total, _ = self.model.loss(self._batch(x, targets))
        return total.sum()

    def raw(self, x):
        y = self.model(x)
        return decode_yolo_output(y[0] if isinstance(y, (tuple, list)) else y)

    def output_levels(self) -> list[tuple[str, int]]:
        """One level per detection stride, one output per grid cell."""
        detect: Any = self.model.model[-1]  # type: ignore[index]
        strides = [int(s) for s in detect.stride.tolist()]
        return [(f"stride {s}", (self.input_size // s) ** 2) for s in strides]

    def level_head_layers(self, level: str) -> list[str]:
        """The first conv of the level's box branch (cv2) and class branch (cv3) in the Detect head."""
        names = [n for n, _ in self.output_levels()]
        if level not in names:
            raise XpruneError(f"{self.family} has no output level '{level}' (it has: {', '.join(names)})")
        index, head = names.index(level), len(self.model.model) - 1  # type: ignore[arg-type]
        layers = []
        for branch in ("cv2", "cv3"):
            prefix = f"model.{head}.{branch}.{index}."
            first = next((n for n in self.conv_layers() if n.startswith(prefix)), None)
            if first is None:
                raise XpruneError(f"{self.family}'s head has no conv under {prefix}: not an Ultralytics Detect head")
            layers.append(first)
        return layers


def decode_yolo_output(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """YOLOv8's detection output [B, 4 + C, N] (cx, cy, w, h in input pixels, then per-class sigmoid scores) ->
    (boxes xyxy [B, N, 4], scores [B, N, C]), the raw-head convention of every family."""
    boxes = box_convert(y[:, :4].transpose(1, 2), "cxcywh", "xyxy")
    scores = y[:, 4:].transpose(1, 2)
    return boxes, scores
