"""`--resume`: a study that stopped part-way keeps the models it measured and runs only the others; a changed
checkpoint is measured again; a file from another protocol, or no study at all, is refused in one line. The models'
measurement is replaced by a stand-in that records which models ran."""

from __future__ import annotations

import json

import pytest

import xprune.study.sweep as sweep
from xprune.errors import XpruneError
from xprune.files import file_sha256
from xprune.study.report import _resumed_text as resumed_text
from xprune.study.settings import StudySettings, default_models


class Interrupted(Exception):
    pass


@pytest.fixture
def measured(monkeypatch):
    """Replaces run_model: records the models measured; a model named in `measured.fail` stops the run there."""
    ran: list[str] = []

    def fake_run_model(name, data, work, backends, settings, command, log):
        if name in fake_run_model.fail:
            raise Interrupted(name)
        ran.append(name)
        weights = {"sha256": sweep.weights_sha(name, settings, {})}
        rows = [{"model": name, "rate": 0.0, "backend": "torch", "median_ms": 1.0}]
        return {"model": name, "seconds": 10.0, "weights": weights}, rows, {}

    fake_run_model.fail = set()
    fake_run_model.ran = ran
    monkeypatch.setattr(sweep, "run_model", fake_run_model)
    return fake_run_model


def _settings(tmp_path, synth_data, models=("yolov8n", "ssdlite320-mbv3"), **changes):
    ckpts = {}
    for name in models:
        path = tmp_path / f"{name}.pt"
        if not path.exists():
            path.write_bytes(name.encode())
        ckpts[name] = str(path)
    base = dict(out=tmp_path / "out", models=list(models), data=synth_data, use_reference=False,
                weights=ckpts, backends=("torch",), progress=False)
    return StudySettings(**{**base, **changes})


def test_an_interrupted_study_resumes_with_the_models_it_measured(tmp_path, synth_data, measured):
    measured.fail = {"ssdlite320-mbv3"}
    with pytest.raises(Interrupted):
        sweep.run_study(_settings(tmp_path, synth_data))
    partial = json.loads((tmp_path / "out" / "study.json").read_text())
    assert partial["complete"] is False and [m["model"] for m in partial["models"]] == ["yolov8n"]

    measured.fail = set()
    lines: list[str] = []
    path = sweep.run_study(_settings(tmp_path, synth_data, resume=True), log=lines.append)
    assert measured.ran == ["yolov8n", "ssdlite320-mbv3"]  # yolov8n once, before the interruption
    doc = json.loads(path.read_text())
    assert doc["complete"] is True and [m["model"] for m in doc["models"]] == ["yolov8n", "ssdlite320-mbv3"]
    assert sorted(r["model"] for r in doc["rows"]) == ["ssdlite320-mbv3", "yolov8n"]
    assert doc["resumed"] == {"kept": ["yolov8n"], "kept_seconds": 10.0}
    assert doc["seconds"] >= 10.0
    assert any("keeping yolov8n" in line for line in lines)
    assert "kept with --resume: yolov8n (" in resumed_text(doc)

    # without --resume the same command starts over, and says what it replaces
    measured.ran.clear()
    sweep.run_study(_settings(tmp_path, synth_data), log=lines.append)
    assert measured.ran == ["yolov8n", "ssdlite320-mbv3"]
    assert any(line.startswith("replacing the study") for line in lines)


def test_a_model_whose_weights_changed_is_measured_again(tmp_path, synth_data, measured):
    sweep.run_study(_settings(tmp_path, synth_data))
    (tmp_path / "yolov8n.pt").write_bytes(b"retrained")
    measured.ran.clear()
    lines: list[str] = []
    path = sweep.run_study(_settings(tmp_path, synth_data, resume=True), log=lines.append)
    assert measured.ran == ["yolov8n"]
    doc = json.loads(path.read_text())
    assert doc["resumed"]["kept"] == ["ssdlite320-mbv3"]
    assert doc["models"][0]["weights"]["sha256"] == file_sha256(tmp_path / "yolov8n.pt")
    assert any("weights changed" in line for line in lines)


def test_resume_extends_a_finished_study_with_more_models(tmp_path, synth_data, measured):
    sweep.run_study(_settings(tmp_path, synth_data, models=("yolov8n",)))
    measured.ran.clear()
    sweep.run_study(_settings(tmp_path, synth_data, resume=True))
    assert measured.ran == ["ssdlite320-mbv3"]


@pytest.mark.parametrize("change, message", [({"rates": (0.05,)}, "setting 'rates'"),
                                             ({"order_seed": 3}, "setting 'order_seed'")])
def test_a_study_under_another_protocol_is_refused(tmp_path, synth_data, measured, change, message):
    sweep.run_study(_settings(tmp_path, synth_data))
    with pytest.raises(XpruneError, match=message):
        sweep.run_study(_settings(tmp_path, synth_data, resume=True, **change))


def test_a_study_from_another_machine_is_refused(tmp_path, synth_data, measured):
    path = sweep.run_study(_settings(tmp_path, synth_data))
    doc = json.loads(path.read_text())
    doc["environment"]["cpu"] = "another CPU"
    path.write_text(json.dumps(doc))
    with pytest.raises(XpruneError, match="machine's cpu differs"):
        sweep.run_study(_settings(tmp_path, synth_data, resume=True))


def test_resume_without_a_study_starts_and_a_corrupt_one_is_refused(tmp_path, synth_data, measured):
    lines: list[str] = []
    sweep.run_study(_settings(tmp_path, synth_data, resume=True), log=lines.append)
    assert measured.ran == ["yolov8n", "ssdlite320-mbv3"] and "no earlier study" in lines[0]
    (tmp_path / "out" / "study.json").write_text('{"format": "something-else"}')
    with pytest.raises(XpruneError, match="not a study file"):
        sweep.run_study(_settings(tmp_path, synth_data, resume=True))


def test_cli_resume_refusal_is_one_line(tmp_path, synth_data, capsys):
    from cli_helpers import one_line_error, run_cli
    out = tmp_path / "out"
    out.mkdir()
    (out / "study.json").write_text("{not json")
    code, _, err = run_cli(["study", "--quick", "--resume", "--data", str(synth_data), "--out", str(out)], capsys)
    assert code == 2 and "not valid JSON" in one_line_error(err)


def test_large_families_join_the_default_study_where_their_reference_is(monkeypatch):
    import xprune.reference as reference
    from xprune.models.zoo import Family
    monkeypatch.setattr(Family, "available", lambda self: True)
    monkeypatch.setattr(reference, "reference_models", lambda dataset="synth": {})
    assert "ssd-resnet50" not in default_models()
    monkeypatch.setattr(reference, "reference_models", lambda dataset="synth": {"ssd-resnet50": {}})
    models = default_models()
    assert models[-1] == "ssd-resnet50" and "retinanet-r50-fpn" not in models and "yolov8n" in models


def test_the_first_difference_is_named_and_an_unset_setting_is_no_difference(tmp_path):
    from xprune.study.resume import kept_models
    from xprune.study.settings import FORMAT
    header = {"format": FORMAT, "settings": {"rates": [0.0, 0.1], "out": "a"}, "dataset": "synth",
              "dataset_stats": {"images": 8}, "threads": 1, "backends": ["torch"],
              "environment": {"cpu": "x", "libraries": {"torch": "2.4"}, "timestamp": "t"},
              "models": [{"model": "m", "weights": {"sha256": "s"}}], "rows": [{"model": "m", "rate": 0.0}]}
    path = tmp_path / "study.json"
    path.write_text(json.dumps(header))
    # tuples read back as lists, an uncompared setting and one an older study did not have are no difference
    same = {**header, "settings": {"rates": (0.0, 0.1), "out": "b", "added_later": None}}
    assert list(kept_models(path, same, lambda name: "s", lambda line: None)) == ["m"]
    for change, message in [({"settings": {"rates": [0.0]}}, "its setting 'rates' differs"),
                            ({"dataset_stats": {"images": 9}}, "its 'dataset_stats.images' differs"),
                            ({"environment": {"cpu": "x", "libraries": {"torch": "2.5"}}},
                             "its machine's libraries.torch differs")]:
        with pytest.raises(XpruneError, match=message) as e:
            kept_models(path, {**header, **change}, lambda name: "s", lambda line: None)
        assert "\n" not in str(e.value)
