"""What installing xprune asks of the user's environment: ranges rather than pins, every range met by the tested
versions in constraints.txt, one ONNX Runtime, no AGPL code without the `yolo` extra, and the YOLO families saying
in one line that they need it when Ultralytics is missing (simulated by making `import ultralytics` fail)."""

import sys
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from cli_helpers import one_line_error, run_cli
from xprune.errors import XpruneError

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRA = 'pip install "xprune[yolo]"'
CI_EXTRAS = ("test", "jax", "yolo")  # what .ci/run and the README's test command install with the constraints


def requirements(extra: str | None = None) -> list[Requirement]:
    lines = PROJECT["dependencies"] if extra is None else PROJECT["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


def pins() -> dict[str, str]:
    """constraints.txt as {canonical name: version}; every line is an exact pin."""
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", line
        assert canonicalize_name(req.name) not in out, f"{req.name} pinned twice"
        out[canonicalize_name(req.name)] = spec.version
    return out


def applies(req: Requirement, extra: str | None) -> bool:
    return req.marker is None or req.marker.evaluate({**default_environment(), "extra": extra or ""})


def test_core_requirements_are_ranges_with_lower_bounds():
    for req in requirements():
        operators = {s.operator for s in req.specifier}
        assert "==" not in operators and "===" not in operators, f"{req} pins an exact version"
        assert ">=" in operators, f"{req} has no lower bound"


def test_extras_pin_nothing():
    for extra in PROJECT["optional-dependencies"]:
        for req in requirements(extra):
            assert not {s.operator for s in req.specifier} & {"==", "==="}, f"[{extra}] {req} pins an exact version"


@pytest.mark.parametrize("extra", [None, *PROJECT["optional-dependencies"]])
def test_tested_versions_meet_every_requirement(extra):
    """Core and the extras CI installs must all be pinned; another extra's packages only where installed here."""
    pinned = pins()
    for req in requirements(extra):
        if not applies(req, extra):
            continue
        name = canonicalize_name(req.name)
        if name not in pinned:
            assert extra not in (None, *CI_EXTRAS), f"{req.name} is not in constraints.txt"
            continue
        assert req.specifier.contains(pinned[name], prereleases=True), f"{req} excludes the tested {pinned[name]}"


def test_one_onnx_runtime_and_no_agpl_in_core():
    core = {canonicalize_name(r.name) for r in requirements()}
    everything = {canonicalize_name(r.name) for e in PROJECT["optional-dependencies"] for r in requirements(e)}
    assert "onnxruntime" in core and "onnxruntime-gpu" not in core | everything
    assert "ultralytics" not in core and "ultralytics" in {canonicalize_name(r.name) for r in requirements("yolo")}
    assert "onnxruntime-gpu" not in pins()


def test_license_is_declared_and_shipped():
    assert PROJECT["license"] == "MIT" and "LICENSE" in PROJECT["license-files"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


# -------------------------------------------------------------------------------------------- YOLO without the extra


@pytest.fixture
def no_ultralytics(monkeypatch):
    for name in [m for m in sys.modules if m.startswith("ultralytics.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ultralytics", None)  # a None entry makes the import raise ImportError


def test_models_lists_the_yolo_families_with_their_extra(no_ultralytics, capsys):
    code, out, _ = run_cli(["models"], capsys)
    lines = [ln for ln in out.splitlines() if ln.startswith(("yolov8", "yolo11"))]
    assert code == 0 and len(lines) == 10 and all(EXTRA in ln for ln in lines)


@pytest.mark.parametrize("command", [
    ["score", "--model", "yolov8n", "--weights", "none", "--method", "l1", "--out", "{tmp}/s.json"],
    ["export", "--model", "yolo11n", "--weights", "none", "--out", "{tmp}/m.onnx"],
    ["export", "--model", "yolov8s", "--weights", "default", "--out", "{tmp}/m.onnx"],
    ["export", "--weights", "{reference}", "--out", "{tmp}/m.onnx"],  # xprune's checkpoint of a YOLO family
])
def test_yolo_without_ultralytics_is_one_line_naming_the_extra(no_ultralytics, command, tmp_path, capsys):
    import xprune.reference

    reference = xprune.reference.HERE / "yolov8n-synth.pt"
    code, _, err = run_cli([a.format(tmp=tmp_path, reference=reference) for a in command], capsys)
    line = one_line_error(err)
    assert code == 2 and EXTRA in line and "the YOLO families need Ultralytics" in line
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_ultralytics_checkpoint_without_ultralytics_names_the_extra(tmp_path, capsys, monkeypatch):
    pytest.importorskip("ultralytics")
    import torch

    from xprune.models.yolo import build_yolo

    path = tmp_path / "best.pt"
    torch.save({"model": build_yolo("n", 2)}, path)  # pickles Ultralytics' classes, as its trainer does
    for name in [m for m in sys.modules if m.startswith("ultralytics.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ultralytics", None)
    code, _, err = run_cli(["export", "--weights", str(path), "--out", str(tmp_path / "m.onnx")], capsys)
    assert code == 2 and EXTRA in one_line_error(err)


def test_yolo_entry_points_without_ultralytics_raise_one_line(no_ultralytics, tmp_path):
    from xprune.study.peer import export_ultralytics
    from xprune.train.yolo import train_yolo
    from xprune.train.yolo_finetune import finetune_with_ultralytics, trainer_args

    calls = [lambda: train_yolo("yolov8n", tmp_path, 1, 64, tmp_path / "run"),
             lambda: finetune_with_ultralytics(tmp_path / "p.pt", [], tmp_path, 1, tmp_path / "ft.pt"),
             lambda: trainer_args({}, 1, 0.001, {}),
             lambda: export_ultralytics(None, tmp_path / "peer.onnx")]  # type: ignore[arg-type]
    for call in calls:
        with pytest.raises(XpruneError, match=r"the YOLO families need Ultralytics .*xprune\[yolo\]"):
            call()
    assert list(tmp_path.iterdir()) == []


def test_demo_leaves_yolo_out_in_one_line(no_ultralytics):
    from xprune.reference import reference_models
    from xprune.study.demo import demo_models_left_out

    line = demo_models_left_out()
    assert line is not None and "yolov8n" in line and EXTRA in line and "\n" not in line
    assert "yolov8n" not in reference_models()
