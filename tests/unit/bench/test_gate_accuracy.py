"""The accuracy half of the gate: mAP per image recorded in the results rows, a paired bootstrap for the drop,
one verdict with latency; and, end to end (slow), a real L1-pruned model caught and the unchanged one passed."""

import contextlib
import io
import json
import shutil

import numpy as np
import pytest
from pycocotools.coco import COCO

from cli_helpers import one_line_error, run_cli
from xprune.bench.gate import decide_accuracy, gate, run_gate
from xprune.bench.results import new_results, validate, write_results
from xprune.errors import XpruneError
from xprune.evaluate.image_matches import image_matches


def _world(n_img=60, seed=0):
    """In-memory ground truth (3 categories) and a good model's detections: jittered boxes, a few misses, low-score
    false positives."""
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "width": 256, "height": 256, "file_name": f"{i}.jpg"} for i in range(n_img)]
    anns, results = [], []
    for im in images:
        for _ in range(int(rng.integers(1, 5))):
            x, y = rng.uniform(0, 180, 2)
            w, h = rng.uniform(10, 70, 2)
            cat = int(rng.integers(1, 4))
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
            if rng.random() < 0.9:
                results.append({"image_id": im["id"], "category_id": cat, "score": float(rng.uniform(0.4, 1)),
                                "bbox": [x + rng.normal(0, 2), y + rng.normal(0, 2), w, h]})
        for _ in range(5):
            results.append({"image_id": im["id"], "category_id": int(rng.integers(1, 4)),
                            "score": float(rng.uniform(0, 0.5)), "bbox": [*rng.uniform(0, 180, 2), 30, 30]})
    gt = COCO()
    with contextlib.redirect_stdout(io.StringIO()):
        gt.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]}
        gt.createIndex()
    return gt, results, [im["id"] for im in images]


def _doc(matches=None, median=10.0, seed=0, with_map=True):
    rng = np.random.default_rng(seed)
    row = {"model": "m", "engine": "onnxruntime", "variant": None, "method": None, "rate": None, "device": "cpu",
           "precision": "fp32", "input_shape": [1, 3, 64, 64],
           "samples_ms": [float(v) for v in median * np.exp(rng.normal(0, 0.01, 40))]}
    if matches is not None:
        row["map"] = matches.map()
        row["map_matches"] = matches.to_json()
    elif with_map:
        row["map"] = 0.5
    return new_results([row], environment={}, protocol={})


@pytest.fixture(scope="module")
def models():
    gt, results, ids = _world()
    rng = np.random.default_rng(1)
    # "pruned": a third of the confident boxes lost and the rest shifted
    pruned = [{**r, "bbox": [r["bbox"][0] + 3, *r["bbox"][1:]]} for r in results
              if r["score"] < 0.4 or rng.random() < 0.67]
    return {"base": image_matches(gt, results, ids), "same": image_matches(gt, list(results), ids),
            "pruned": image_matches(gt, pruned, ids), "fewer_images": image_matches(gt, results, ids[:-5])}


def test_decide_accuracy():
    assert decide_accuracy(-0.06, -0.08, -0.04, 0.01) == "regression"
    assert decide_accuracy(-0.06, -0.15, 0.01, 0.01) == "inconclusive"
    assert decide_accuracy(-0.005, -0.01, 0.0, 0.01) == "pass"
    assert decide_accuracy(0.0, 0.0, 0.0, 0.0) == "pass"
    assert decide_accuracy(0.05, 0.02, 0.08, 0.01) == "improvement"


def test_unchanged_model_passes_and_pruned_model_fails_on_accuracy_alone(models):
    same = gate(_doc(models["base"]), _doc(models["same"], seed=1), max_map_drop=0.0, map_resamples=200)
    a = same.rows[0].accuracy
    assert same.decision == "pass" and (a.delta, a.delta_low, a.delta_high, a.decision) == (0.0, 0.0, 0.0, "pass")
    # latency unchanged, mAP down by more than 5 points: the verdict fails on accuracy
    v = gate(_doc(models["base"]), _doc(models["pruned"], seed=1), max_map_drop=0.01, map_resamples=200)
    r = v.rows[0]
    assert r.decision == "pass" and r.accuracy.decision == "regression" and v.decision == "regression"
    assert r.accuracy.delta < -0.05 and r.accuracy.delta_high < 0 and r.accuracy.images == 60
    assert r.accuracy.baseline_map == models["base"].map() and r.accuracy.current_map == models["pruned"].map()
    md = v.to_markdown()
    assert "Latency and accuracy gate" in md and "mAP decision" in md and "**REGRESSION**" in md
    d = v.as_dict()
    json.dumps(d)
    assert d["exit_code"] == 1 and d["rows"][0]["accuracy"]["decision"] == "regression"
    # a drop within the tolerance passes
    assert gate(_doc(models["base"]), _doc(models["pruned"], seed=1), max_map_drop=0.5,
                map_resamples=200).decision == "pass"
    # without --max-map-drop the gate is latency only, whatever the files carry
    assert gate(_doc(models["base"]), _doc(models["pruned"], seed=1)).rows[0].accuracy is None


def test_latency_regression_fails_even_when_accuracy_passes(models):
    v = gate(_doc(models["base"]), _doc(models["same"], median=13.0, seed=1), max_map_drop=0.01, map_resamples=200)
    assert v.rows[0].decision == "regression" and v.rows[0].accuracy.decision == "pass" and v.exit_code == 1


def test_accuracy_gate_unusable_input(models):
    with pytest.raises(XpruneError, match="no mAP"):
        gate(_doc(models["base"]), _doc(with_map=False), max_map_drop=0.01)
    with pytest.raises(XpruneError, match="no per-image evaluation"):
        gate(_doc(), _doc(models["base"]), max_map_drop=0.01)
    with pytest.raises(XpruneError, match="different images"):
        gate(_doc(models["base"]), _doc(models["fewer_images"]), max_map_drop=0.01)
    with pytest.raises(XpruneError, match="max_map_drop"):
        gate(_doc(models["base"]), _doc(models["same"]), max_map_drop=-0.1)
    broken = _doc(models["base"])
    broken["rows"][0]["map_matches"] = {"format": "xprune-image-matches-1", "arrays": {}}
    with pytest.raises(XpruneError, match="malformed"):
        gate(_doc(models["base"]), broken, max_map_drop=0.01)
    broken["rows"][0]["map_matches"] = [1, 2]
    with pytest.raises(XpruneError, match="per-image evaluation"):
        validate(broken, "current")


def test_cli_accuracy_gate_exit_codes(models, tmp_path, capsys):
    write_results(tmp_path / "b.json", _doc(models["base"]))
    write_results(tmp_path / "same.json", _doc(models["same"], seed=1))
    write_results(tmp_path / "pruned.json", _doc(models["pruned"], seed=1))
    write_results(tmp_path / "nomap.json", _doc(with_map=False))
    args = ["gate", "--baseline", str(tmp_path / "b.json"), "--max-map-drop", "0.01", "--map-resamples", "200"]
    code, out, _ = run_cli([*args, "--current", str(tmp_path / "same.json")], capsys)
    assert code == 0 and "mAP PASS" in out
    code, out, _ = run_cli([*args, "--current", str(tmp_path / "pruned.json"), "--verdict", str(tmp_path / "v.json")],
                           capsys)
    assert code == 1 and "mAP REGRESSION" in out and out.strip().splitlines()[-1].startswith("gate: REGRESSION")
    assert json.loads((tmp_path / "v.json").read_text())["rows"][0]["accuracy"]["decision"] == "regression"
    code, _, err = run_cli([*args, "--current", str(tmp_path / "nomap.json")], capsys)
    assert code == 2 and "--data" in one_line_error(err)
    code, _, err = run_cli([*args[:3], "--current", str(tmp_path / "same.json"), "--max-map-drop", "2"], capsys)
    assert code == 2 and "--max-map-drop" in one_line_error(err)
    assert run_gate(tmp_path / "b.json", tmp_path / "pruned.json", max_map_drop=0.01, map_resamples=200,
                    log=lambda m: None) == 1


@pytest.mark.slow
def test_real_l1_pruned_yolo_is_caught_and_the_unchanged_model_passes(tmp_path, capsys):
    """The reference YOLOv8n on synthetic images it was not trained on, against the same model with 5 % of its
    layers zeroed by L1 (which costs it many mAP points): bench records per-image mAP, the gate fails the pruned
    model on accuracy and passes the unchanged one."""
    from xprune.cli import main
    from xprune.reference import reference_models

    ref = reference_models()["yolov8n"]["path"]
    data = tmp_path / "data"
    assert main(["data", "synth", "--out", str(data), "--image-size", "320", "--train", "1", "--val", "24",
                 "--calib", "1", "--seed", "3"]) == 0
    assert main(["score", "--model", "yolov8n", "--weights", ref, "--method", "l1", "--out",
                 str(tmp_path / "l1.json")]) == 0
    assert main(["prune", "--model", "yolov8n", "--weights", ref, "--scores", str(tmp_path / "l1.json"),
                 "--rate", "0.05", "--out", str(tmp_path / "pruned.pt")]) == 0
    fast = ["--model", "yolov8n", "--data", str(data), "--runs", "5", "--warmup-runs", "1", "--min-seconds", "0"]
    assert main(["bench", str(tmp_path / "pruned.pt"), "--baseline", ref, *fast, "--out", str(tmp_path / "p.json")]) == 0
    shutil.copy(ref, tmp_path / "same.pt")  # the unchanged model, as another file
    assert main(["bench", str(tmp_path / "same.pt"), "--baseline", ref, *fast, "--out", str(tmp_path / "same.json")]) == 0
    capsys.readouterr()
    gate_args = ["--max-map-drop", "0.01", "--max-regression", "0.9", "--map-resamples", "300"]
    code, out, _ = run_cli(["gate", "--interleaved", str(tmp_path / "p.json"), *gate_args,
                            "--verdict", str(tmp_path / "v.json")], capsys)
    acc = json.loads((tmp_path / "v.json").read_text())["rows"][0]["accuracy"]
    assert acc["delta"] <= -0.05 and acc["decision"] == "regression" and code == 1, out
    code, out, _ = run_cli(["gate", "--interleaved", str(tmp_path / "same.json"), *gate_args,
                            "--verdict", str(tmp_path / "v2.json")], capsys)
    acc = json.loads((tmp_path / "v2.json").read_text())["rows"][0]["accuracy"]
    assert acc["delta"] == 0.0 and acc["decision"] == "pass" and code == 0, out
