"""The detector zoo: build any family by name with `--weights default | none | PATH`, and save/load checkpoints."""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torchvision.models import detection as tvd

from xprune.errors import XpruneError
from xprune.files import file_sha256  # noqa: F401 (re-exported)
from xprune.models import jax as jax_family
from xprune.models import torchvision_family as tvf
from xprune.models.detector import CHECKPOINT_FORMAT, Detector
from xprune.models.yolo import (YOLO_SCALES, YOLO_VERSIONS, YoloDetector, build_yolo, quiet_ultralytics_env,
                                ultralytics_family, yolo_predictors)

COCO_TORCHVISION_IDS = list(range(1, 91))  # torchvision's COCO label L is COCO category id L
YOLO_EXTRA = 'pip install "xprune[yolo]"'  # Ultralytics is AGPL-3.0, so an extra of the MIT package


def require_ultralytics() -> None:
    """Raise one XpruneError line naming the `yolo` extra when Ultralytics is not installed. Found, not imported:
    listing what is available (the references, `xprune models`) must not load it."""
    quiet_ultralytics_env()
    if importlib.util.find_spec("ultralytics") is None:
        raise XpruneError(f"the YOLO families need Ultralytics (No module named 'ultralytics'): {YOLO_EXTRA}")


@dataclass(frozen=True)
class Family:
    name: str
    default_size: int
    build: Callable[[int, int], Detector]  # (num_classes, input_size) -> randomly initialised detector
    load_official: Callable[[int], Detector] | None  # (input_size) -> detector with official weights
    about: str
    framework: str = "torch"  # "jax": the model is a Flax module (extra `jax`; see xprune.models.jax)
    # What the family needs installed beyond xprune's own dependencies: raises one XpruneError line naming the extra.
    require: Callable[[], None] | None = None
    # A family whose checkpoints are not xprune's PyTorch format reads them itself: (path, input_size) -> detector.
    read_checkpoint: Callable[[Path, int | None], Detector] | None = None
    checkpoint_suffix: str = ".pt"

    def check_available(self) -> None:
        if self.require is not None:
            self.require()

    def available(self) -> bool:
        """Whether this machine has what the family needs (the `jax` extra for a JAX family)."""
        try:
            self.check_available()
        except XpruneError:
            return False
        return True


def _ssd_family(backbone: str) -> Callable[[int, int], Detector]:
    def build(num_classes: int, size: int) -> Detector:
        model = tvf.build_ssd(backbone, num_classes, size)
        tvf.fixed_size_transform(model, size)
        return tvf.SSDDetector(f"ssd-{backbone}", model, num_classes, size, predictor_layers=tvf.ssd_predictors(model))
    return build


def _ssdlite(num_classes: int, size: int, weights=None) -> Detector:
    model = tvd.ssdlite320_mobilenet_v3_large(weights=weights, weights_backbone=None,
                                              num_classes=None if weights else num_classes + 1)
    tvf.fixed_size_transform(model, size)
    return tvf.SSDDetector("ssdlite320-mbv3", model, num_classes, size, predictor_layers=tvf.ssd_predictors(model),
                           category_ids=COCO_TORCHVISION_IDS if weights else None, nms_iou=0.55)


def _retinanet(num_classes: int, size: int, weights=None) -> Detector:
    model = tvd.retinanet_resnet50_fpn(weights=weights, weights_backbone=None,
                                       num_classes=None if weights else num_classes + 1, min_size=size, max_size=size)
    tvf.fixed_size_transform(model, size)
    preds = ["head.classification_head.cls_logits", "head.regression_head.bbox_reg"]
    return tvf.RetinaNetDetector("retinanet-r50-fpn", model, num_classes, size, predictor_layers=preds,
                                 category_ids=COCO_TORCHVISION_IDS if weights else None)


def _fasterrcnn(num_classes: int, size: int, weights=None) -> Detector:
    model = tvd.fasterrcnn_resnet50_fpn(weights=weights, weights_backbone=None,
                                        num_classes=None if weights else num_classes + 1, min_size=size, max_size=size)
    tvf.fixed_size_transform(model, size)
    preds = ["rpn.head.cls_logits", "rpn.head.bbox_pred"]  # the box predictor itself is Linear, not a conv
    return tvf.FasterRCNNDetector("fasterrcnn-r50-fpn", model, num_classes, size, predictor_layers=preds,
                                  category_ids=COCO_TORCHVISION_IDS if weights else None)


def _torchvision_official(builder, weights_enum) -> Callable[[int], Detector]:
    def load(size: int) -> Detector:
        try:
            return builder(len(COCO_TORCHVISION_IDS), size, weights=weights_enum)
        except OSError as e:  # URLError and friends: no network, no cached file
            raise XpruneError(f"cannot fetch official weights {weights_enum} (offline?): {e}") from None
    return load


def _yolo_family(version: str, scale: str) -> tuple[Callable[[int, int], Detector], Callable[[int], Detector]]:
    name = f"{version}{scale}"

    def build(num_classes: int, size: int) -> Detector:
        model = build_yolo(scale, num_classes, version)
        return YoloDetector(name, model, num_classes, size, predictor_layers=yolo_predictors(model))

    def load(size: int) -> Detector:
        quiet_ultralytics_env()
        from ultralytics.data.converter import coco80_to_coco91_class
        from ultralytics.utils.downloads import attempt_download_asset
        try:
            path = attempt_download_asset(f"{name}.pt")
        except Exception as e:  # Ultralytics raises ConnectionError offline
            raise XpruneError(f"cannot fetch official weights {name}.pt (offline?): {str(e).strip()}") from None
        det = _load_ultralytics_pt(_torch_load(Path(path)), Path(path), name, size)
        det.category_ids = coco80_to_coco91_class()
        return det
    return build, load


def _tinyssd_jax(num_classes: int, size: int) -> Detector:
    from xprune.models.jax.detector import build_tinyssd
    return build_tinyssd(num_classes, size)


def _tinyssd_jax_checkpoint(path: Path, input_size: int | None) -> Detector:
    from xprune.models.jax import checkpoint
    from xprune.models.jax.detector import build_tinyssd
    return checkpoint.load_checkpoint(path, "tinyssd-jax", build_tinyssd, input_size)


def _families() -> dict[str, Family]:
    fams = {
        "ssd-mobilenetv2": Family("ssd-mobilenetv2", 320, _ssd_family("mobilenetv2"), None,
                                  "SSD head on torchvision MobileNetV2 (no official detector weights)"),
        "ssd-resnet50": Family("ssd-resnet50", 320, _ssd_family("resnet50"), None,
                               "SSD head on torchvision ResNet-50 (no official detector weights)"),
        "ssd-shufflenetv2": Family("ssd-shufflenetv2", 320, _ssd_family("shufflenetv2"), None,
                                   "SSD head on torchvision ShuffleNetV2 x1.0 (no official detector weights)"),
        "ssdlite320-mbv3": Family("ssdlite320-mbv3", 320, _ssdlite,
                                  _torchvision_official(_ssdlite, tvd.SSDLite320_MobileNet_V3_Large_Weights.DEFAULT),
                                  "torchvision SSDlite320 MobileNetV3-Large"),
        "retinanet-r50-fpn": Family("retinanet-r50-fpn", 640, _retinanet,
                                    _torchvision_official(_retinanet, tvd.RetinaNet_ResNet50_FPN_Weights.DEFAULT),
                                    "torchvision RetinaNet ResNet-50 FPN"),
        "fasterrcnn-r50-fpn": Family("fasterrcnn-r50-fpn", 640, _fasterrcnn,
                                     _torchvision_official(_fasterrcnn, tvd.FasterRCNN_ResNet50_FPN_Weights.DEFAULT),
                                     "torchvision Faster R-CNN ResNet-50 FPN"),
    }
    for version, title in YOLO_VERSIONS.items():
        for scale in YOLO_SCALES:
            build, load = _yolo_family(version, scale)
            fams[f"{version}{scale}"] = Family(f"{version}{scale}", 640, build, load, f"Ultralytics {title}{scale} "
                                               f"({YOLO_EXTRA})", require=require_ultralytics)
    fams["tinyssd-jax"] = Family("tinyssd-jax", 320, _tinyssd_jax, None,
                                 'TinySSD in JAX/Flax nnx (pip install "xprune[jax]"; no official weights)',
                                 framework=jax_family.FRAMEWORK, require=jax_family.require_jax,
                                 read_checkpoint=_tinyssd_jax_checkpoint,
                                 checkpoint_suffix=jax_family.CHECKPOINT_SUFFIX)
    return fams


FAMILIES = _families()


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise XpruneError(f"unknown model '{name}'; choose one of: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def build_detector(name: str | None, weights: str = "none", num_classes: int | None = None,
                   input_size: int | None = None) -> Detector:
    """weights: 'none' (random init), 'default' (official pretrained, via the library's own loader) or a path.
    `name` may be None for a checkpoint that says which model it holds (xprune's own, Ultralytics')."""
    if name is None and weights in ("none", "default"):
        raise XpruneError(f"--weights {weights} needs --model NAME; only a checkpoint file says which model it holds")
    fam = family(name) if name is not None else None
    if fam is not None:
        fam.check_available()  # before anything else: without the extra, one line naming it
    if input_size is not None and (input_size < 32 or input_size % 32):
        raise XpruneError(f"input size must be a positive multiple of 32, got {input_size}")
    if fam is not None and weights == "none":
        torch.manual_seed(0)
        det = fam.build(num_classes or 80, input_size or fam.default_size)
    elif fam is not None and weights == "default":
        if fam.load_official is None:
            raise XpruneError(f"no official pretrained weights exist for {name}; use --weights PATH or --weights none")
        det = fam.load_official(input_size or fam.default_size)
    else:
        det = load_checkpoint(weights, name, input_size)
    return det.eval()


# --- checkpoints --------------------------------------------------------------------------------------------------

def _torch_load(path: Path):
    if not path.is_file():
        raise XpruneError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # pickle, zip and EOF errors all mean the same to the user
        if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] == "ultralytics":
            require_ultralytics()  # an Ultralytics checkpoint pickles Ultralytics' classes: name the extra
        raise XpruneError(f"checkpoint {path} is corrupt or not a PyTorch file ({type(e).__name__})") from None


def _ultralytics_model(ckpt) -> torch.nn.Module | None:
    """The model of an Ultralytics checkpoint (a dict whose 'ema' or 'model' is a DetectionModel), else None."""
    if not isinstance(ckpt, dict):
        return None
    model = ckpt.get("ema") or ckpt.get("model")
    return model if isinstance(model, torch.nn.Module) and hasattr(model, "yaml") else None


def _load_ultralytics_pt(ckpt, path: Path, name: str | None, size: int | None) -> Detector:
    """An Ultralytics checkpoint; its family and size come from the model's own yaml, and must be `name` if given."""
    model: Any = _ultralytics_model(ckpt)  # an ultralytics DetectionModel
    if model is None:
        raise XpruneError(f"{path} is not an Ultralytics detection checkpoint")
    found = ultralytics_family(model, str(path))
    if name is not None and found != name:
        raise XpruneError(f"checkpoint {path} holds a {found} model, not {name}")
    model = model.float()
    from ultralytics.cfg import get_cfg
    model.args = get_cfg()
    for p in model.parameters():
        p.requires_grad_(True)
    det = YoloDetector(found, model, int(model.yaml["nc"]), size or family(found).default_size,
                       predictor_layers=yolo_predictors(model))
    det.model.model[-1].dfl.conv.weight.requires_grad_(False)
    return det


# The class-logit conv (or linear) of each torchvision family, and the box-regression conv beside it whose output
# count is 4 per anchor: a plain state_dict's class count is logits / anchors - 1 (background).
_STATE_CLASS_KEYS = {
    "ssd-mobilenetv2": ("head.classification_head.module_list.0", "head.regression_head.module_list.0"),
    "ssd-resnet50": ("head.classification_head.module_list.0", "head.regression_head.module_list.0"),
    "ssd-shufflenetv2": ("head.classification_head.module_list.0", "head.regression_head.module_list.0"),
    "ssdlite320-mbv3": ("head.classification_head.module_list.0", "head.regression_head.module_list.0"),
    "retinanet-r50-fpn": ("head.classification_head.cls_logits", "head.regression_head.bbox_reg"),
    "fasterrcnn-r50-fpn": ("roi_heads.box_predictor.cls_score", None),
}


def _plain_state_dict(ckpt) -> dict[str, torch.Tensor] | None:
    """A state_dict as users' own training loops save it: bare, under 'state_dict' or 'model', or a whole module."""
    if isinstance(ckpt, torch.nn.Module):
        return ckpt.state_dict()
    if isinstance(ckpt, dict):
        for key in ("state_dict", "model"):
            inner = ckpt.get(key)
            if isinstance(inner, torch.nn.Module):
                return inner.state_dict()
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            return ckpt
    return None


def _classes_in_state(state: dict[str, torch.Tensor], name: str, path: Path) -> int:
    cls_key, reg_key = _STATE_CLASS_KEYS[name]

    def last_weight(prefix: str) -> torch.Tensor:
        weights = [v for k, v in state.items() if k.startswith(prefix + ".") and k.endswith("weight") and v.dim() >= 2]
        if not weights:
            raise XpruneError(f"checkpoint {path} does not fit {name}: no {prefix} weights")
        return weights[-1]

    logits = last_weight(cls_key).shape[0]
    anchors = last_weight(reg_key).shape[0] // 4 if reg_key else 1
    if anchors < 1 or logits % anchors or logits // anchors < 2:
        raise XpruneError(f"checkpoint {path} does not fit {name}: {logits} class logits for {anchors} anchors")
    return logits // anchors - 1


def _load_state_dict(state: dict[str, torch.Tensor], path: Path, name: str, input_size: int | None) -> Detector:
    """A torchvision family's weights from a user's own training: the class count is read off the predictor."""
    if all(k.startswith("module.") for k in state):  # saved from DataParallel / DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    fam = family(name)
    det = fam.build(_classes_in_state(state, name, path), input_size or fam.default_size)
    try:
        det.model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as e:
        raise XpruneError(f"checkpoint {path} does not fit {name}: {str(e).splitlines()[0]}") from None
    return det.eval()


def load_checkpoint(path: str | os.PathLike, name: str | None = None, input_size: int | None = None) -> Detector:
    """An xprune checkpoint, an Ultralytics detection .pt (YOLOv8, YOLO11) or a torchvision family's plain
    state_dict. The first two say which model they hold, so `name` may be None; if given, it must agree."""
    path = Path(path)
    fam = family(name) if name is not None else None
    if fam is not None and fam.read_checkpoint is not None:
        fam.check_available()
        return fam.read_checkpoint(path, input_size)
    if fam is None and path.suffix in {f.checkpoint_suffix for f in FAMILIES.values() if f.read_checkpoint}:
        raise XpruneError(f"{path} does not say which model it holds; give --model")
    ckpt = _torch_load(path)
    if isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT:
        if name is not None and ckpt["family"] != name:
            raise XpruneError(f"checkpoint {path} holds a {ckpt['family']} model, not {name}")
        fam = family(ckpt["family"])
        fam.check_available()
        size = input_size or ckpt["input_size"]
        det = fam.build(ckpt["num_classes"], size)
        state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
        try:
            det.model.load_state_dict(state)
        except RuntimeError as e:
            raise XpruneError(f"checkpoint {path} does not fit {fam.name}: {str(e).splitlines()[0]}") from None
        det.category_ids = ckpt.get("category_ids")
        det.meta = ckpt.get("meta") or {}
        return det.eval()
    if _ultralytics_model(ckpt) is not None:
        return _load_ultralytics_pt(ckpt, path, name, input_size).eval()
    if name is None:
        raise XpruneError(f"{path} does not say which model it holds; give --model")
    plain = _plain_state_dict(ckpt)
    if plain is not None and name in _STATE_CLASS_KEYS:
        return _load_state_dict(plain, path, name, input_size)
    raise XpruneError(f"{path} is not an xprune checkpoint for {name}")


def save_checkpoint(det: Detector, path: str | os.PathLike, meta: dict | None = None, half: bool = False) -> None:
    """Save weights and the settings needed to rebuild, in the family's checkpoint format; `half` stores floats as
    fp16 (for small committed files)."""
    det.save_checkpoint(path, meta, half)
