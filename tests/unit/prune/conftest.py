"""A small random-init YOLOv8n and its L1 scores, shared by the budget and iterative-search tests."""

import pytest

from xprune.importance.scores import score_layers
from xprune.models import build_detector

SIZE = 64


@pytest.fixture(scope="module")
def yolo():
    return build_detector("yolov8n", "none", num_classes=6, input_size=SIZE)


@pytest.fixture(scope="module")
def l1(yolo):
    return score_layers(yolo, "l1")
