"""Output levels: their sizes add up to each one-stage family's raw outputs, and a level whose scores never reach
the threshold is reported silent."""

import pytest
import torch

from xprune.data.coco import CocoDetectionSet
from xprune.errors import XpruneError
from xprune.evaluate.head_levels import level_sizes, level_usage, silent_levels
from xprune.models import build_detector

SIZE = 128


@pytest.mark.parametrize("family", ["yolov8n", "ssdlite320-mbv3", "ssd-mobilenetv2", "retinanet-r50-fpn",
                                    pytest.param("tinyssd-jax", marks=pytest.mark.slow)])
def test_levels_add_up_to_the_raw_outputs(family):
    det = build_detector(family, "none", num_classes=3, input_size=SIZE)
    with torch.no_grad():
        boxes, _ = det.raw(torch.rand(1, 3, SIZE, SIZE))
    sizes = level_sizes(det)
    assert len(sizes) >= 3 and sum(n for _, n in sizes) == boxes.shape[1]


def test_two_stage_detectors_have_no_fixed_levels():
    det = build_detector("fasterrcnn-r50-fpn", "none", num_classes=3, input_size=SIZE)
    with pytest.raises(XpruneError, match="one-stage"):
        level_sizes(det)


def test_usage_counts_scores_per_level_and_names_silent_ones(synth_data, monkeypatch):
    det = build_detector("yolov8n", "none", num_classes=3, input_size=SIZE)
    val = CocoDetectionSet.from_folder(synth_data, "val", SIZE, limit=3)
    sizes = [n for _, n in level_sizes(det)]  # 256, 64, 16 grid cells at 128 px

    def raw(x):  # the first level scores 0.9 on 5 cells per image, the second 0.3 everywhere, the last 0.1
        scores = torch.zeros(len(x), sum(sizes), 3)
        scores[:, :5, 1] = 0.9
        scores[:, sizes[0]:sizes[0] + sizes[1], 2] = 0.3
        scores[:, sizes[0] + sizes[1]:, 0] = 0.1
        return torch.zeros(len(x), sum(sizes), 4), scores

    monkeypatch.setattr(det, "raw", raw)
    usage = level_usage(det, val, threshold=0.25, batch_size=2)
    assert usage["images"] == 3
    assert [lv["above_threshold"] for lv in usage["levels"]] == [15, 3 * sizes[1], 0]
    assert [lv["max_score"] for lv in usage["levels"]] == pytest.approx([0.9, 0.3, 0.1])
    assert silent_levels(usage) == ["stride 32"]
