"""Which images each figure of `xprune auto` comes from: the verdict's mAP leaves out the val images the budget
search measured on, the benchmark evaluates enough val images for that, and the search never measures on train."""

import pytest

from xprune.auto.image_sets import bench_val_limit, reported_rows, searched_images
from xprune.auto.run import AutoSettings, check
from xprune.data.coco import CocoDetectionSet
from xprune.errors import XpruneError
from xprune.evaluate.image_matches import ImageMatches, image_matches


@pytest.fixture(scope="module")
def rows(synth_data):
    """Baseline and candidate rows whose per-image evaluations cover the 8 val images (the ground truth as
    detections, the candidate missing every box of the first image)."""
    val = CocoDetectionSet.from_folder(synth_data, "val", 64)
    truth = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
             for a in val.coco.dataset["annotations"]]
    first = val.image_ids[0]
    base = image_matches(val.coco, truth, val.image_ids)
    cand = image_matches(val.coco, [d for d in truth if d["image_id"] != first], val.image_ids)
    return val.image_ids, [{"role": "baseline", "map_matches": base.to_json()},
                           {"role": "candidate", "map_matches": cand.to_json()}]


def test_the_verdict_leaves_out_the_searched_images(rows):
    ids, both = rows
    held = {"split": "val", "first": 0, "images": 3, "of": 8, "image_ids": ids[:3]}
    plan = {"budget": {"search": "iterative+finetune", "held_out": held}}
    assert searched_images(plan) == held and searched_images({"budget": None}) is None
    kept, images = reported_rows(both, searched_images(plan))
    assert images == {"split": "val", "images": 5, "left_out": 3}
    for row in kept:
        assert ImageMatches.from_json(row["map_matches"]).image_ids == ids[3:]
    # the candidate's only miss was on a searched image: on the reported ones both are perfect
    base, cand = (ImageMatches.from_json(r["map_matches"]) for r in kept)
    assert base.map() == cand.map() == pytest.approx(1.0)
    assert ImageMatches.from_json(both[1]["map_matches"]).map() < 1.0
    # a search on another split leaves every val image in; one that took them all is refused in one line
    assert reported_rows(both, {**held, "split": "test"})[1]["left_out"] == 0
    with pytest.raises(XpruneError, match="no image is left for the reported mAP"):
        reported_rows(both, {**held, "image_ids": ids})


def test_the_benchmark_evaluates_the_searched_images_and_val_images_more():
    held = {"split": "val", "first": 0, "images": 64, "image_ids": list(range(1, 65))}
    assert bench_val_limit(300, held) == 364 and bench_val_limit(None, held) is None
    assert bench_val_limit(300, {**held, "split": "test"}) == 300 and bench_val_limit(300, None) == 300


def test_auto_refuses_to_search_on_train(tmp_path):
    s = AutoSettings(weights=str(tmp_path / "w.pt"), data=str(tmp_path), out=str(tmp_path / "job"),
                     search_split="train")
    with pytest.raises(XpruneError, match="never trained on, not on 'train'"):
        check(s)


def test_the_report_names_each_figure_s_images():
    from xprune.auto.report import image_sets
    s = {"method": "attr", "finetune_epochs": 1, "finetune_images": 256}
    held = {"split": "val", "first": 0, "images": 10, "of": 20, "image_ids": list(range(1, 11))}
    stages = {"score": {"calibration": {"split": "calib", "images": 32, "train_images": 32}},
              "verdict": {"accuracy": {"images": 10}, "images": {"split": "val", "images": 10, "left_out": 10}}}
    text = "\n".join(image_sets(s, stages, {"budget": {"held_out": held}}))
    assert "Layer scores (attr): the first 32 calib images (**all of them train images**" in text
    assert "Budget search (every mAP and drop of the search below): val images 1–10 of 20" in text
    assert "Fine-tuning between steps: the first 256 train images." in text
    assert "Reported mAP, ΔmAP and verdict: 10 val images after the search's 10" in text
    stages["score"] = {"calibration": None}  # a data-free criterion
    assert "no images (a data-free criterion)" in "\n".join(image_sets(s, stages, {"budget": {"held_out": held}}))
