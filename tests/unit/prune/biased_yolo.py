"""A random-init YOLOv8n with nonzero fused biases, as a trained model has (random init leaves every BatchNorm's
shift at 0, so every zeroed branch would output zeros): the ranking and MAC-target tests use it."""

import torch

from xprune.models import build_detector


def yolo_with_biases(size: int):
    det = build_detector("yolov8n", "none", num_classes=6, input_size=size)
    g = torch.Generator().manual_seed(3)
    for m in det.model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return det
