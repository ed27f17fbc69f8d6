"""mAP through pycocotools: our conversion (input pixels -> original pixels, labels -> category ids) must give the
numbers COCOeval gives on the same detections written directly in COCO form."""

import contextlib
import io

import torch
from pycocotools.cocoeval import COCOeval

from xprune.data.coco import CocoDetectionSet
from xprune.evaluate.coco_map import evaluate_map
from xprune.models.detector import Detector


class _OracleDetector(Detector):
    """Predicts ground truth shifted by `shift` input pixels, skipping every third object."""

    def __init__(self, dataset, shift):
        super().__init__("oracle", torch.nn.Identity(), dataset.num_classes, dataset.size)
        self.dataset, self.shift, self.calls = dataset, shift, 0

    def predict(self, x):
        out = []
        for _ in range(x.shape[0]):
            s = self.dataset.sample(self.calls)
            self.calls += 1
            keep = torch.arange(len(s["labels"])) % 3 != 2
            out.append({"boxes": s["boxes"][keep] + self.shift, "scores": torch.linspace(0.9, 0.5, int(keep.sum())),
                        "labels": s["labels"][keep]})
        return out


def _direct_cocoeval(ds: CocoDetectionSet, shift: float) -> float:
    results = []
    for img_id in ds.image_ids:
        anns = [a for a in ds.coco.imgToAnns[img_id]]
        info = ds.coco.imgs[img_id]
        scale = ds.size / max(info["width"], info["height"])
        keep = [a for i, a in enumerate(anns) if i % 3 != 2]
        for a, score in zip(keep, torch.linspace(0.9, 0.5, len(keep)).tolist()):
            x, y, w, h = a["bbox"]
            results.append({"image_id": img_id, "category_id": a["category_id"],
                            "bbox": [x + shift / scale, y + shift / scale, w, h], "score": score})
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(ds.coco, ds.coco.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[0]


def test_map_matches_direct_cocoeval(synth_data):
    ds = CocoDetectionSet.from_folder(synth_data, "val", 64)  # 128 px images at 64: exercises the un-scaling
    for shift in (0.0, 1.5):
        got = evaluate_map(_OracleDetector(ds, shift), ds, batch_size=3)
        assert abs(got["map"] - _direct_cocoeval(ds, shift)) < 1e-9
    assert 0.0 < evaluate_map(_OracleDetector(ds, 1.5), ds)["map"] < 1.0


def test_perfect_and_empty_predictions(synth_data):
    ds = CocoDetectionSet.from_folder(synth_data, "val", 128)

    class Perfect(_OracleDetector):
        def predict(self, x):
            out = []
            for _ in range(x.shape[0]):
                s = self.dataset.sample(self.calls)
                self.calls += 1
                out.append({"boxes": s["boxes"], "scores": torch.ones(len(s["labels"])), "labels": s["labels"]})
            return out

    assert evaluate_map(Perfect(ds, 0.0), ds)["map"] == 1.0

    class Nothing(_OracleDetector):
        def predict(self, x):
            return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
                    for _ in range(x.shape[0])]

    assert evaluate_map(Nothing(ds, 0.0), ds)["map"] == 0.0
