"""torchvision detectors behind the common interface: SSD-style heads on three backbones, SSDlite, RetinaNet,
Faster R-CNN. Training losses are torchvision's own; `raw` re-runs the model's parts without its post-process so
the shared NMS step (and an exported graph) sees decoded boxes and class probabilities."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSDHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from xprune.models.detector import Detector, freeze_batchnorm


def _to_torchvision_targets(targets: list[dict]) -> list[dict]:
    # torchvision reserves label 0 for background.
    return [{"boxes": t["boxes"].float(), "labels": t["labels"].long() + 1} for t in targets]


class TorchvisionDetector(Detector):
    def _loss(self, x: torch.Tensor, targets: list[dict], freeze_bn: bool) -> torch.Tensor:
        was_training = self.model.training
        self.model.train()
        if freeze_bn:
            freeze_batchnorm(self.model)
        try:
            losses = self.model(list(x), _to_torchvision_targets(targets))
        finally:
            self.model.train(was_training)
        return sum(losses.values())

    def loss(self, x, targets):
        return self._loss(x, targets, freeze_bn=True)

    def train_step_loss(self, x, targets):
        return self._loss(x, targets, freeze_bn=False)

    def _image_list(self, x: torch.Tensor) -> ImageList:
        normed = torch.stack([self.model.transform.normalize(img) for img in x])
        return ImageList(normed, [tuple(x.shape[-2:])] * x.shape[0])


class SingleStageDetector(TorchvisionDetector):
    """One-stage anchor heads (SSD, SSDlite, RetinaNet): every anchor decoded in-graph; class 0 is background."""

    def class_probabilities(self, logits: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def raw(self, x):
        m = self.model
        images = self._image_list(x)
        features = list(m.backbone(images.tensors).values())
        head = m.head(features)
        anchors = m.anchor_generator(images, features)
        boxes = torch.stack([m.box_coder.decode_single(r, a) for r, a in zip(head["bbox_regression"], anchors)])
        boxes = boxes.clamp(0, float(self.input_size))
        scores = self.class_probabilities(head["cls_logits"])[..., 1:]
        return boxes, scores

    def output_levels(self) -> list[tuple[str, int]]:
        """One level per feature map, anchors per location times its cells, as the head concatenates them."""
        m: Any = self.model
        size = self.input_size
        with torch.no_grad():
            features = list(m.backbone(self._image_list(torch.zeros(1, 3, size, size)).tensors).values())
        per_location = m.anchor_generator.num_anchors_per_location()
        return [(f"{f.shape[-1]}x{f.shape[-2]}", f.shape[-1] * f.shape[-2] * a) for f, a in zip(features, per_location)]


class SSDDetector(SingleStageDetector):
    """torchvision SSD / SSDlite: softmax scores over background + classes."""

    def class_probabilities(self, logits):
        return logits.softmax(-1)


class RetinaNetDetector(SingleStageDetector):
    """torchvision RetinaNet: independent sigmoid scores per class."""

    def class_probabilities(self, logits):
        return logits.sigmoid()


class FasterRCNNDetector(TorchvisionDetector):
    """Two stages: the RPN (with its own NMS, part of the model) feeds per-class box regression."""

    def raw(self, x):
        m = self.model
        images = self._image_list(x)
        features = m.backbone(images.tensors)
        proposals, _ = m.rpn(images, features)
        rh = m.roi_heads
        if sum(p.shape[0] for p in proposals) == 0:  # nothing survived the RPN (e.g. a heavily pruned model)
            return (x.new_zeros((x.shape[0], 0, self.num_classes, 4)), x.new_zeros((x.shape[0], 0, self.num_classes)))
        box_features = rh.box_head(rh.box_roi_pool(features, proposals, images.image_sizes))
        class_logits, box_regression = rh.box_predictor(box_features)
        boxes = rh.box_coder.decode(box_regression, proposals).clamp(0, float(self.input_size))
        scores = class_logits.softmax(-1)
        per_image = [p.shape[0] for p in proposals]
        n = max(per_image)
        out_boxes = boxes.new_zeros((len(proposals), n, self.num_classes, 4))
        out_scores = scores.new_zeros((len(proposals), n, self.num_classes))
        for i, (b, s) in enumerate(zip(boxes.split(per_image), scores.split(per_image))):
            out_boxes[i, : b.shape[0]] = b[:, 1:]
            out_scores[i, : s.shape[0]] = s[:, 1:]
        return out_boxes, out_scores


# --- SSD-style heads on torchvision classification backbones -------------------------------------------------------

def _extra_block(cin: int, mid: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
        nn.Conv2d(mid, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class MultiScaleBackbone(nn.Module):
    """Two backbone stages (stride 16 and 32) followed by extra stride-2 blocks: five feature maps for SSD."""

    def __init__(self, stage16: nn.Module, stage32: nn.Module, c16: int, c32: int):
        super().__init__()
        self.stage16 = stage16
        self.stage32 = stage32
        self.extras = nn.ModuleList([_extra_block(c32, 256, 512), _extra_block(512, 128, 256), _extra_block(256, 128, 256)])
        self.out_channels = [c16, c32, 512, 256, 256]

    def forward(self, x):
        feats = OrderedDict()
        x = self.stage16(x)
        feats["0"] = x
        x = self.stage32(x)
        feats["1"] = x
        for i, block in enumerate(self.extras):
            x = block(x)
            feats[str(i + 2)] = x
        return feats


def _mobilenetv2_stages(pretrained: bool):
    w = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1 if pretrained else None
    f = torchvision.models.mobilenet_v2(weights=w).features
    return f[:14], f[14:], 96, 1280


def _resnet50_stages(pretrained: bool):
    w = torchvision.models.ResNet50_Weights.IMAGENET1K_V2 if pretrained else None
    r = torchvision.models.resnet50(weights=w)
    return nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3), r.layer4, 1024, 2048


# Where torchvision's ResNet-50 modules sit in SSD-ResNet50's backbone (the layout _resnet50_stages builds).
SSD_RESNET50_MODULES = {"stage16.0.": "conv1.", "stage16.1.": "bn1.", "stage16.4.": "layer1.", "stage16.5.": "layer2.",
                        "stage16.6.": "layer3.", "stage32.": "layer4."}


def resnet50_state_from_ssd(ssd_backbone_state: dict) -> dict:
    """The torchvision ResNet-50 weights (conv1 to layer4, by torchvision's names) inside an SSD-ResNet50 backbone's
    state dict; SSD's extra blocks are left out."""
    out = {}
    for key, value in ssd_backbone_state.items():
        for ssd_prefix, resnet_prefix in SSD_RESNET50_MODULES.items():
            if key.startswith(ssd_prefix):
                out[resnet_prefix + key.removeprefix(ssd_prefix)] = value
    return out


def _shufflenetv2_stages(pretrained: bool):
    w = torchvision.models.ShuffleNet_V2_X1_0_Weights.IMAGENET1K_V1 if pretrained else None
    s = torchvision.models.shufflenet_v2_x1_0(weights=w)
    return nn.Sequential(s.conv1, s.maxpool, s.stage2, s.stage3), nn.Sequential(s.stage4, s.conv5), 232, 1024


BACKBONES = {"mobilenetv2": _mobilenetv2_stages, "resnet50": _resnet50_stages, "shufflenetv2": _shufflenetv2_stages}
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def build_ssd(backbone_name: str, num_classes: int, size: int, pretrained_backbone: bool = False) -> SSD:
    s16, s32, c16, c32 = BACKBONES[backbone_name](pretrained_backbone)
    backbone = MultiScaleBackbone(s16, s32, c16, c32)
    anchors = DefaultBoxGenerator([[2], [2, 3], [2, 3], [2, 3], [2]], min_ratio=0.1, max_ratio=0.9)
    head = SSDHead(backbone.out_channels, anchors.num_anchors_per_location(), num_classes + 1)
    return SSD(backbone, anchors, (size, size), num_classes + 1, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
               head=head)


def fixed_size_transform(model: nn.Module, size: int) -> None:
    """Make the model's own transform a no-op resize at `size` (images arrive letterboxed to size x size)."""
    t = model.transform
    model.transform = GeneralizedRCNNTransform(size, size, t.image_mean, t.image_std, size_divisible=1,
                                               fixed_size=(size, size))


def last_conv_under(model: nn.Module, prefixes: list[str]) -> list[str]:
    """For each prefix, the qualified name of the last Conv2d inside it: the conv that emits that head's output."""
    out = []
    for prefix in prefixes:
        convs = [n for n, m in model.named_modules() if n.startswith(prefix + ".") or n == prefix
                 if isinstance(m, nn.Conv2d)]
        if convs:
            out.append(convs[-1])
    return out


def ssd_predictors(model: SSD) -> list[str]:
    """The last conv of every per-level classification and regression head (SSD and SSDlite)."""
    prefixes = [f"head.{h}.module_list.{i}" for h in ("classification_head", "regression_head")
                for i in range(len(model.head.classification_head.module_list))]
    return last_conv_under(model, prefixes)
