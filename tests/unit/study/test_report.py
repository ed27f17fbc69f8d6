"""The study report read from committed study files: the reference mAP of weights given by path, the layers that
score zero or next to it, the committed reports being what their JSON renders to, and the demo's one line about a
model it cannot run here."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from xprune.study.report import DASH, load_study, render
from xprune.study.report_models import ZERO_TEXT, reference_cell, zero_counts
from xprune.study.stats import scores_zero, zero_scores

ROOT = Path(__file__).resolve().parents[3]
RESULTS = ROOT / "benchmarks" / "results"
STUDIES = ("study", "study-trees")  # the committed studies, each with its report.md beside its study.json


def _model_rows(md: str) -> dict[str, list[str]]:
    section = md.split("## Models", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("| ")]
    return {r[0]: r for r in rows[1:]}


def _figures(md: str) -> dict[str, Path]:
    """The figures a committed report embeds, in its order: what `make_plots` returned when it was drawn."""
    return {Path(name).stem: Path(name) for name in re.findall(r"^!\[[^\]]*\]\(([^)]+)\)$", md, re.M)}


def test_reference_map_of_weights_given_by_path_comes_from_the_checkpoints_json():
    study = load_study(RESULTS / "study-trees")
    weights = study["models"][0]["weights"]
    assert weights["source"] == "checkpoint" and "reference_val_map" not in weights  # given with --weights
    cell = _model_rows(render(study, {}))["yolov8n"][7]
    assert cell == "0.1176 (20 images; `yolov8n-trees.json`)"
    # another checkpoint, or another dataset's reference, has none
    assert reference_cell(study, {**weights, "sha256": "0" * 64}) == DASH
    assert reference_cell({**study, "dataset": "data/synth"}, weights) == DASH


def test_reference_map_the_study_copied_is_shown_as_copied():
    study = load_study(RESULTS / "study")
    assert _model_rows(render(study, {}))["yolov8n"][7] == "0.4064 (300 images)"


def test_scores_below_1e9_of_the_median_count_as_zero():
    ls = {"layers": ["a", "b", "c", "d", "e"], "candidate": [True, True, True, True, False],
          "criteria": {"attr": {"scores": [2e-20, 0.0, 3.0, 4.0, 1e-15], "bottom": ["b", "a"], "bottom_rate": 0.05},
                       "l1": {"scores": [1e-6, 2.0, 3.0, 4.0, 5.0], "bottom": ["a"], "bottom_rate": 0.05}}}
    assert scores_zero(ls, "attr") == [True, True, False, False, True]  # median of the candidates: 3.5
    z = zero_scores(ls)
    assert z["attr"] == {"layers": 3, "candidates": 2, "candidate_total": 4, "bottom": 2, "bottom_size": 2,
                         "bottom_rate": 0.05}
    assert z["l1"]["candidates"] == 0 and z["l1"]["bottom"] == 0  # small, but 4e-7 of its median: a measurement


def test_report_counts_yolov8n_near_zero_attr_scores_over_a_stale_record():
    study = load_study(RESULTS / "study")
    yolo = next(m for m in study["models"] if m["model"] == "yolov8n")
    yolo["zero_scores"]["attr"]["candidates"] = 0  # as studies recorded it when only exact zeros counted
    assert zero_counts(yolo)["attr"]["candidates"] == 2  # model.22.cv2.2.{0,1}.conv at 2e-20 and 3e-20
    md = render(study, {})
    head = md.split("## Models", 1)[1].split("\n", 3)[2]
    assert f"Candidates scoring {ZERO_TEXT} (in the bottom 5%)" in head and ZERO_TEXT == "0 or < 1e-9 × median"
    assert _model_rows(md)["yolov8n"][8] == "l1 0 of 57 (0 of 3); attr 2 of 57 (2 of 3)"
    assert "model.22.cv2.2.0.conv, model.22.cv2.2.1.conv" in md


@pytest.mark.parametrize("name", STUDIES)
def test_committed_report_is_what_its_study_json_renders(name):
    """Regenerate with `xprune study --render-only --out benchmarks/results/<name>` when this fails."""
    md = (RESULTS / name / "report.md").read_text()
    figures = _figures(md)
    assert all((RESULTS / name / path).is_file() for path in figures.values())
    assert render(load_study(RESULTS / name), figures) == md


def test_demo_says_in_one_line_that_it_leaves_the_jax_model_out(monkeypatch, tmp_path, capsys, synth_data):
    import xprune.models.jax
    import xprune.study.sweep
    from xprune.cli import main
    from xprune.errors import XpruneError
    from xprune.models.jax import EXTRA
    from xprune.study.demo import demo_models_left_out

    assert demo_models_left_out() is None or not xprune.models.jax.jax_available()
    monkeypatch.setitem(sys.modules, "jax", None)  # `import jax` fails from here on, as on a machine without it
    assert not xprune.models.jax.jax_available()
    line = demo_models_left_out()
    assert line.startswith("demo: tinyssd-jax left out: the JAX families need JAX and Flax") and EXTRA in line
    assert demo_models_left_out(["yolov8n"]) is None  # models named: nothing left out behind the user's back

    ran: list[list[str]] = []

    def stop(settings, log):
        ran.append(list(settings.models))
        raise XpruneError("stopped before measuring")

    monkeypatch.setattr(xprune.study.sweep, "run_study", stop)
    assert main(["demo", "--out", str(tmp_path / "d"), "--data", str(synth_data)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err.count(line) == 1
    assert ran and "tinyssd-jax" not in ran[0] and "yolov8n" in ran[0]
