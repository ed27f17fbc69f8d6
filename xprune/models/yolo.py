"""Ultralytics YOLOv8 (any size) behind the common interface. The loss is Ultralytics' own v8DetectionLoss,
computed from eval-mode outputs so BatchNorm statistics stay frozen."""

from __future__ import annotations

import torch
from torchvision.ops import box_convert

from xprune.models.detector import Detector


def quiet_ultralytics_env() -> None:
    """Ultralytics pip-installs and downloads at run time unless told not to."""
    import os
    import tempfile

    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "xprune-ultralytics"))


def build_yolo(scale: str, num_classes: int) -> torch.nn.Module:
    quiet_ultralytics_env()
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(f"yolov8{scale}.yaml", nc=num_classes, verbose=False)
    model.args = get_cfg()  # loss gains (box, cls, dfl) come from the default training config
    return model


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


def decode_yolo_output(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """YOLOv8's detection output [B, 4 + C, N] (cx, cy, w, h in input pixels, then per-class sigmoid scores) ->
    (boxes xyxy [B, N, 4], scores [B, N, C]), the raw-head convention of every family."""
    boxes = box_convert(y[:, :4].transpose(1, 2), "cxcywh", "xyxy")
    scores = y[:, 4:].transpose(1, 2)
    return boxes, scores
