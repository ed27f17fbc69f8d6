"""Training augmentation: SSD's policy keeps boxes valid and paired with their labels."""

import torch

from xprune.data.coco import CocoDetectionSet
from xprune.data.transforms import ssd_augment


def test_ssd_augment_keeps_boxes_inside_and_labels_paired(synth_data):
    train = CocoDetectionSet.from_folder(synth_data, "train", 128)
    torch.manual_seed(0)
    changed = 0
    for i in range(len(train)):
        s = train.sample(i)
        for _ in range(4):
            x, boxes, labels = ssd_augment(s["image"], s["boxes"], s["labels"])
            assert x.shape == s["image"].shape and x.min() >= 0 and x.max() <= 1
            assert boxes.shape == (len(labels), 4) and labels.dtype == torch.int64
            assert (boxes[:, 2:] > boxes[:, :2]).all() and boxes.min() >= 0 and boxes.max() <= 128
            assert set(labels.tolist()) <= set(s["labels"].tolist())
            changed += not (torch.equal(x, s["image"]) and torch.equal(boxes, s["boxes"]))
    assert changed > len(train) * 2  # most draws crop, zoom or recolour


def test_ssd_augment_without_objects_leaves_no_boxes():
    torch.manual_seed(0)
    x, boxes, labels = ssd_augment(torch.rand(3, 64, 64), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    assert x.shape == (3, 64, 64) and boxes.shape == (0, 4) and labels.numel() == 0
