"""Frontier v2 from its files: the summary pairs every point with the control at the same epoch, reads latency from
the timing file, picks the fastest point within one and two mAP points and renders the table and plot from
frontier.json alone; the early-stop rule; point files of other inputs, or without --resume, are refused in one
line; bad settings exit 2 before anything runs."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from xprune.evaluate.image_matches import image_matches
from xprune.errors import XpruneError
from xprune.frontier import render, summary
from xprune.frontier.point import early_stop, point_path, run_point
from xprune.frontier.settings import CONTROL, FORMAT, FrontierSettings, grid, point_id
from xprune.frontier.timing import TIMING_FORMAT, timing_path
from benchmark_scripts import load_benchmark



def world(n_img=30, seed=0):
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "width": 320, "height": 320, "file_name": f"{i}.jpg"} for i in range(n_img)]
    anns = []
    for im in images:
        for _ in range(3):
            x, y = rng.uniform(0, 200, 2)
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": 1, "bbox": [x, y, 60, 60],
                         "area": 3600.0, "iscrowd": 0})
    gt = COCO()
    with contextlib.redirect_stdout(io.StringIO()):
        gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}
        gt.createIndex()
    return gt, anns


def matches(gt, anns, keep: float, seed: int):
    """Detections of a fraction `keep` of the boxes: mAP grows with it."""
    rng = np.random.default_rng(seed)
    results = [{"image_id": a["image_id"], "category_id": 1, "score": float(rng.uniform(0.5, 1)), "bbox": a["bbox"]}
               for a in anns if rng.random() < keep]
    ev = image_matches(gt, results, sorted(gt.getImgIds()))
    return {"map": ev.map(), "matches": ev.to_json()}


def write_point(out, pid, criterion, target, evaluations, removed, status="done", stopped=None):
    doc = {"format": FORMAT, "model": "m", "point": pid, "criterion": criterion, "target": target,
           "identity": {}, "start": {"model": "m", "describe": "m", "weights": "m.pt"}, "status": status,
           "evaluations": [{"epoch": e, "map50": 0.0, "seconds": 1.0, **ev} for e, ev in evaluations.items()],
           "layers": ["a"] * (0 if criterion is None else 3), "macs": {"removed_fraction": removed},
           "finetune": {"history": [{"epoch": i + 1, "cpu_seconds": 60.0, "seconds": 30.0} for i in range(2)]}}
    if stopped:
        doc["stopped"] = stopped
    path = point_path(out, "m", pid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def write_timing(out, ratios):
    rows = [{"variant_id": "baseline", "point": CONTROL, "median_ms": 10.0,
             "vs_baseline": {"median": 1.0, "p10": 1.0, "p90": 1.0, "n": 20}},
            {"variant_id": "baseline-copy", "point": CONTROL, "median_ms": 10.0,
             "vs_baseline": {"median": 1.01, "p10": 0.98, "p90": 1.03, "n": 20}}]
    rows += [{"variant_id": pid, "point": pid, "median_ms": 10 * r,
              "vs_baseline": {"median": r, "p10": r - 0.02, "p90": r + 0.02, "n": 20}} for pid, r in ratios.items()]
    path = timing_path(out, "m")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": TIMING_FORMAT, "model": "m", "protocol": {"runs": 20}, "seconds": 5.0,
                                "environment": {}, "aa_control": rows[1]["vs_baseline"], "rows": rows}))


def test_the_summary_pairs_each_point_with_the_control_at_its_epoch(tmp_path):
    gt, anns = world()
    ctrl = {0: matches(gt, anns, 0.9, 1), 2: matches(gt, anns, 0.95, 2)}
    write_point(tmp_path, CONTROL, None, None, ctrl, 0.0)
    write_point(tmp_path, "attr-20", "attr", 0.2, {0: matches(gt, anns, 0.5, 3), 2: ctrl[2]}, 0.21)
    write_point(tmp_path, "taylor-30", "taylor", 0.3, {0: matches(gt, anns, 0.1, 4), 2: matches(gt, anns, 0.2, 5)},
                0.33, status="stopped", stopped={"after_epoch": 2, "map": 0.1, "control_map": 0.9, "rule": "r",
                                                 "epochs_not_run": 8})
    write_timing(tmp_path, {"attr-20": 0.75, "taylor-30": 0.7})
    m = summary.summarize_model(tmp_path, "m", resamples=200)
    rows = {(r["point"], r["epoch"]): r for r in m["rows"]}
    assert rows[("attr-20", 2)]["delta_map"] == 0.0 and rows[("attr-20", 2)]["delta_low"] == 0.0
    assert rows[("attr-20", 0)]["delta_map"] == pytest.approx(rows[("attr-20", 0)]["map"] - ctrl[0]["map"])
    assert rows[("attr-20", 0)]["delta_high"] < 0  # half the boxes found: a loss the interval sees
    assert rows[("attr-20", 2)]["latency"]["median"] == 0.75 and rows[("attr-20", 2)]["finetune_cpu_seconds"] == 120
    assert m["aa_control"]["median"] == 1.01 and list(m["stopped"]) == ["taylor-30"]
    # the stopped point ran 2 epochs at 60 CPU s each: its 8 epochs not run would have taken 8 min
    assert m["early_stop"] == {"points": 1, "epochs_not_run": 8, "cpu_seconds_saved_estimate": 480.0}
    best = {b["criterion"]: b for b in summary.best_points(m)}
    assert best["attr"]["within_1"]["epoch"] == 2 and summary.goal_met(best["attr"]["within_1"])
    assert best["taylor"]["within_2"] is None

    doc = {"settings": {**vars(FrontierSettings()), "data": "data/synth"}, "planned": 4, "measured": 3,
           "to_come": ["m attr-30"], "models": [m]}
    text = render.render_markdown(json.loads(json.dumps(doc)))
    assert "still to come: m attr-30" in text and "A/A ratio 1.010 [0.980-1.030] over 20 rounds" in text
    assert "| attr-20 | 21.0 % | 3 | 0.750 [0.730-0.770] | 1.33x |" in text
    assert "attr-20 after 2 epochs: ratio 0.750 (1.33x), ΔmAP +0.0000 [+0.0000, +0.0000] - meets the 1.3x goal" in text
    assert "taylor-30 after epoch 2" in text and "8 epochs not run" in text
    assert "The early stop saved 8 epochs of recovery, about 8 CPU min" in text
    render.render_plot(doc, tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_a_hopeless_point_stops_after_its_epoch_and_others_do_not():
    s = FrontierSettings(stop_after=2, hopeless=0.1)
    control = {"evaluations": [{"epoch": 2, "map": 0.40}]}
    doc = {"point": "attr-30"}
    stop = early_stop(doc, {"epoch": 2, "map": 0.28}, control, s)
    assert stop["after_epoch"] == 2 and stop["epochs_not_run"] == 8 and "0.2900" in stop["rule"]
    assert early_stop(doc, {"epoch": 2, "map": 0.30}, control, s) is None
    assert early_stop(doc, {"epoch": 5, "map": 0.0}, control, s) is None  # only after the stop epoch
    assert early_stop({"point": CONTROL}, {"epoch": 2, "map": 0.0}, control, s) is None
    assert early_stop(doc, {"epoch": 2, "map": 0.0}, None, s) is None  # no control to judge by
    assert early_stop(doc, {"epoch": 2, "map": 0.0}, control, FrontierSettings(stop_after=0)) is None


def test_the_grid_runs_each_control_first():
    s = FrontierSettings(models=("a", "b"), criteria=("attr", "l1"), targets=(0.2, 0.1))
    order = [(m, point_id(c, t)) for m, c, t in grid(s)]
    assert order == [("a", "control"), ("a", "attr-10"), ("a", "l1-10"), ("a", "attr-20"), ("a", "l1-20"),
                     ("b", "control"), ("b", "attr-10"), ("b", "l1-10"), ("b", "attr-20"), ("b", "l1-20")]
    assert point_id("taylor", 0.125) == "taylor-12.5"


class FakeStart:
    name = "m"
    record = {"start_sha256": "abc"}


def test_point_files_are_resumed_only_when_asked_and_only_their_own(tmp_path):
    s = FrontierSettings()
    path = point_path(tmp_path, "m", "attr-10")
    path.parent.mkdir(parents=True)
    from xprune.frontier.point import identity
    mine = identity(FakeStart(), s, "attr", 0.1)
    path.write_text(json.dumps({"format": FORMAT, "identity": mine, "status": "done", "point": "attr-10"}))
    with pytest.raises(XpruneError, match="exists: pass --resume"):
        run_point(FakeStart(), "attr", 0.1, s, tmp_path, tmp_path / "work", False, print)
    assert run_point(FakeStart(), "attr", 0.1, s, tmp_path, tmp_path / "work", True, print)["status"] == "done"
    with pytest.raises(XpruneError, match=r"made with other inputs \(recipe.epochs differs\)"):
        run_point(FakeStart(), "attr", 0.1, s.replace(epochs=5, evaluate_at=(0, 5)), tmp_path, tmp_path / "w", True,
                  print)
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(XpruneError, match="is not a frontier point file"):
        run_point(FakeStart(), "attr", 0.1, s, tmp_path, tmp_path / "work", True, print)


@pytest.fixture(scope="module")
def frontier_cli():
    return load_benchmark("frontier")


@pytest.mark.parametrize("args, message", [
    (["--models", "yolov9"], "unknown frontier model 'yolov9'"),
    (["--criteria", "magic"], "magic"),
    (["--targets", "0.1,1.2"], "--target-macs must be in (0, 1), got 1.2"),
    (["--epochs", "4", "--evaluate-at", "0,5"], "evaluation epochs must lie in [0, 4]"),
    (["--stop-after", "3"], "the early stop after epoch 3 needs an evaluation there"),
    (["--data", "/nonexistent/data"], "dataset not found: /nonexistent/data"),
    (["--trainer", "ultralytics", "--models", "yolov8n"], "not distilled here: add --no-distill"),
    (["--trainer", "ultralytics", "--no-distill"], "YOLO models only, not ssdlite320-mbv3"),
    (["--trainer", "ultralytics", "--no-distill", "--models", "yolov8n", "--train-images", "8"],
     "leave out --train-images"),
])
def test_bad_settings_exit_2_in_one_line_before_anything_runs(frontier_cli, tmp_path, capsys, args, message):
    code = frontier_cli.main(["train", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "w"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("frontier: error: ") and message in err[0]
    assert not (tmp_path / "out").exists()


def test_ultralytics_trainer_refuses_ray_and_names_itself_in_the_recipe_only_when_chosen(frontier_cli, tmp_path,
                                                                                           capsys, synth_data):
    code = frontier_cli.main(["train", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "w"), "--data",
                              str(synth_data), "--trainer", "ultralytics", "--no-distill", "--models", "yolov8n", "--ray"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "runs without --ray" in err[0] and not (tmp_path / "out").exists()
    assert "trainer" not in FrontierSettings().recipe()  # the own loop's files from before the choice still resume
    assert FrontierSettings(trainer="ultralytics", distill=False).recipe()["trainer"] == "ultralytics"


def test_the_trainers_comparison_pairs_the_same_point_of_two_folders(tmp_path, capsys):
    trainers = load_benchmark("trainers")
    gt, anns = world()
    own, ultra = tmp_path / "own", tmp_path / "ultra"
    for out, keep in ((own, 0.9), (ultra, 0.6)):
        write_point(out, CONTROL, None, None, {0: matches(gt, anns, 0.95, 1), 2: matches(gt, anns, 0.95, 2)}, 0.0)
        write_point(out, "attr-10", "attr", 0.1, {0: matches(gt, anns, 0.5, 3), 2: matches(gt, anns, keep, 4)}, 0.1)
    args = ["--own", str(own), "--ultralytics", str(ultra), "--model", "m", "--resamples", "200"]
    assert trainers.main(args) == 0
    doc = json.loads((ultra / "trainers.json").read_text())
    rows = {r["epoch"]: r for r in doc["points"][1]["rows"]}
    assert rows[0]["delta"] == 0.0  # the same zeroed model before either trainer ran
    assert rows[2]["delta"] == pytest.approx(rows[2]["ultralytics_map"] - rows[2]["own_map"]) and rows[2]["delta_high"] < 0
    assert rows[2]["own_vs_control"]["delta"] > rows[2]["ultralytics_vs_control"]["delta"]
    assert doc["points"][1]["cpu_seconds_per_epoch"] == {"own": 60.0, "ultralytics": 60.0}
    assert "| 2 |" in (ultra / "trainers.md").read_text()
    point_path(ultra, "m", CONTROL).unlink()
    capsys.readouterr()
    assert trainers.main(args) == 2 and "need m's control point" in capsys.readouterr().err


def test_same_points_tells_equal_runs_from_different_ones_and_counts_the_early_stop(tmp_path, capsys):
    same_points = load_benchmark("same_points")
    gt, anns = world()
    first, second = tmp_path / "first", tmp_path / "second"
    ctrl = {0: matches(gt, anns, 0.9, 1), 2: matches(gt, anns, 0.95, 2)}
    for out in (first, second):
        write_point(out, CONTROL, None, None, ctrl, 0.0)
        write_point(out, "attr-10", "attr", 0.1, {0: matches(gt, anns, 0.5, 3), 2: matches(gt, anns, 0.8, 4)}, 0.1)
    write_point(second, "random-50", "random", 0.5, {0: matches(gt, anns, 0.1, 5), 2: matches(gt, anns, 0.2, 6)},
                0.5, status="stopped", stopped={"after_epoch": 2, "map": 0.1, "control_map": 0.9, "rule": "r",
                                                "epochs_not_run": 8})
    args = ["--first", str(first), "--second", str(second), "--model", "m", "--out", str(tmp_path / "r")]
    assert same_points.main(args) == 0
    doc = json.loads((tmp_path / "r" / "same_points.json").read_text())
    assert doc["all_equal"] and [p["point"] for p in doc["points"]] == ["attr-10", "control"]
    assert doc["only_second"] == ["random-50"] and doc["early_stop_second"]["epochs_not_run"] == 8
    assert doc["early_stop_second"]["cpu_seconds_saved_estimate"] == 480.0
    write_point(second, "attr-10", "attr", 0.1, {0: matches(gt, anns, 0.5, 3), 2: matches(gt, anns, 0.8, 7)}, 0.1)
    assert same_points.main(args) == 1
    rows = json.loads((tmp_path / "r" / "same_points.json").read_text())["points"][0]["rows"]
    assert [r["matches_equal"] for r in rows] == [True, False]
    assert "All equal: **no**" in (tmp_path / "r" / "same_points.md").read_text()
    capsys.readouterr()
    assert same_points.main([*args[:-4], "--model", "other", "--out", str(tmp_path / "r")]) == 2
    assert "no finished point of other" in capsys.readouterr().err
