"""benchmarks/openvino_precisions.py's markdown, rendered from a small synthetic results file alone (measuring needs
OpenVINO, NNCF and minutes; it is run by hand), and its one-line refusal of a missing or foreign file."""

import json

import pytest
from benchmark_scripts import load_benchmark



@pytest.fixture(scope="module")
def ovp():
    return load_benchmark("openvino_precisions")


def _ratio(median):
    return {"median": median, "p10": median - 0.02, "p90": median + 0.03, "n": 5}


def _variant(precision, macs, ms, ratio, map_, delta):
    return {"supported": True, "precision": precision, "weights_precision": "int8" if precision == "int8" else "fp32",
            "macs": macs, "threads": 2, "median_ms": ms, "p90_ms": ms * 1.1, "vs_unpruned_fp32": _ratio(ratio),
            "map": map_, "map_ci": [map_ - 0.03, map_ + 0.03], "delta_map": [delta, delta - 0.01, delta + 0.01],
            "val_images": 8, "samples_ms": [ms] * 5}


def _doc(ovp, bf16_supported):
    variants = {"unpruned-fp32": _variant("fp32", 1.0e9, 40.0, 1.0, 0.40, 0.0),
                "unpruned-fp32-copy": _variant("fp32", 1.0e9, 40.4, 1.01, 0.40, 0.0),
                "unpruned-int8": _variant("int8", 1.0e9, 30.0, 0.75, 0.39, -0.01),
                "pruned-unfolded-fp32": _variant("fp32", 1.0e9, 40.0, 1.0, 0.38, -0.02),
                "pruned-folded-fp32": _variant("fp32", 0.8e9, 32.0, 0.8, 0.38, -0.02),
                "pruned-folded-bf16": _variant("bf16", 0.8e9, 20.0, 0.5, 0.38, -0.02),
                "pruned-folded-int8": _variant("int8", 0.8e9, 24.0, 0.6, 0.37, -0.03)}
    if not bf16_supported:
        variants["pruned-folded-bf16"] = {"supported": False, "reason": "this CPU cannot infer in bf16"}
    comparisons = [{"question": q, "candidate": c, "reference": r,
                    "ratio": _ratio(variants[c]["vs_unpruned_fp32"]["median"]
                                    / variants[r]["vs_unpruned_fp32"]["median"]),
                    "delta_map": [-0.01, -0.02, 0.0]}
                   for q, c, r in ovp.COMPARISONS if variants[c]["supported"]]
    model = {"model": "yolov8n", "threads": 2, "variants": variants, "comparisons": comparisons,
             "bf16": {"supported": bf16_supported, "reason": None if bf16_supported else "no bf16 here"},
             "plan": {"zeroed_layers": ["a", "b"], "candidates": 57, "removed_mac_fraction": 0.2, "target": 0.2,
                      "reached": 0.2}}
    return {"format": ovp.FORMAT, "json_name": "ovp.json",
            "environment": {"cpu": "Test CPU", "cpu_count": 2, "libraries": {"openvino": "2026.4", "nncf": "3.4"}},
            "settings": {"size": 320, "runs": 5, "val_images": 8, "calib_images": 8, "target_macs": 0.2,
                         "resamples": 100}, "models": [model]}


def test_render_has_every_variant_the_comparisons_and_the_composition(ovp):
    md = ovp.render(_doc(ovp, bf16_supported=True))
    for variant in ovp.VARIANTS:
        assert f"| {variant} |" in md
    assert "| pruned-folded-int8 | int8 | int8 | 0.800 | 24.00 | 0.600 [0.580-0.630] | 0.3700 [0.3400, 0.4000] |" in md
    assert "| int8 alone | unpruned-int8 / unpruned-fp32 | 0.750 [0.730-0.780] |" in md
    assert "| pruning + fold on top of int8 | pruned-folded-int8 / unpruned-int8 | 0.800 [0.780-0.830] |" in md
    assert "0.750 × 0.800 = 0.600; measured together 0.600" in md  # int8 alone × pruning alone vs both
    assert "A/A control 1.010 [0.990-1.040]" in md
    assert "Test CPU, 2 cores" in md and "inferred in bf16" in md


def test_render_says_when_bf16_is_not_supported(ovp):
    md = ovp.render(_doc(ovp, bf16_supported=False))
    assert "| pruned-folded-bf16 | not supported |" in md
    assert "bf16: not supported (no bf16 here)" in md
    assert "| bf16 on the pruned folded model |" not in md


def test_render_only_writes_the_markdown_from_the_json(ovp, tmp_path):
    path = tmp_path / "ovp.json"
    path.write_text(json.dumps(_doc(ovp, bf16_supported=True)))
    assert ovp.main(["--render-only", "--out", str(path)]) == 0
    assert "| unpruned-int8 | int8 |" in (tmp_path / "ovp.md").read_text()


@pytest.mark.parametrize("content", [None, "{}", '{"format": "xprune-fold-speed-1", "models": []}', "not json"])
def test_render_only_refuses_a_missing_or_foreign_file_in_one_line(ovp, tmp_path, capsys, content):
    path = tmp_path / "other.json"
    if content is not None:
        path.write_text(content)
    assert ovp.main(["--render-only", "--out", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("openvino_precisions: error:")
    assert not (tmp_path / "other.md").exists()
