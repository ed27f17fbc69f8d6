"""The shared post-process: per-class NMS via torchvision.ops, score threshold, detection cap."""

import torch

from xprune.models.detector import postprocess


def test_overlapping_boxes_of_one_class_are_suppressed_but_not_across_classes():
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]]])
    scores = torch.tensor([[[0.9, 0.0], [0.8, 0.7], [0.0, 0.6]]])
    (out,) = postprocess(boxes, scores)
    got = sorted(zip(out["scores"].tolist(), out["labels"].tolist()))
    assert got == [(0.6000000238418579, 1), (0.699999988079071, 1), (0.8999999761581421, 0)]


def test_threshold_and_cap():
    n = 300
    boxes = torch.stack([torch.tensor([i * 20.0, 0.0, i * 20.0 + 10.0, 10.0]) for i in range(n)])[None]
    scores = torch.linspace(0.0, 1.0, n)[None, :, None]
    (out,) = postprocess(boxes, scores, score_threshold=0.5, max_detections=100)
    assert len(out["scores"]) == 100
    assert float(out["scores"].min()) > 0.5
    assert torch.all(out["scores"][:-1] >= out["scores"][1:])


def test_per_class_boxes():
    boxes = torch.zeros(1, 2, 3, 4)
    boxes[0, 0, 2] = torch.tensor([5.0, 5.0, 15.0, 15.0])
    scores = torch.zeros(1, 2, 3)
    scores[0, 0, 2] = 0.9
    (out,) = postprocess(boxes, scores)
    assert out["labels"].tolist() == [2]
    assert out["boxes"].tolist() == [[5.0, 5.0, 15.0, 15.0]]
