"""benchmarks/frontier.py: its table and plot come from the JSON alone, its options are checked before anything
runs, a missing or foreign JSON is one line with exit 2. (A real run: `python benchmarks/frontier.py --quick`.)"""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from xprune.errors import XpruneError

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def frontier():
    spec = importlib.util.spec_from_file_location("frontier_benchmark", ROOT / "benchmarks" / "frontier.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def point(criterion, finetuned, rate, ratio, delta, base=0.5, capped=False):
    return {"criterion": criterion, "rank": "per-mac", "rate": rate, "capped": capped, "finetuned": finetuned,
            "id": f"{criterion}-per-mac-{rate:g}-{'finetuned' if finetuned else 'zeroed'}", "k": int(rate * 40),
            "layers": [f"l{i}" for i in range(int(rate * 40))], "removed_mac_fraction": 1 - ratio,
            "map": base + delta, "map_low": base + delta - 0.01, "map_high": base + delta + 0.01,
            "delta_map": delta, "delta_low": delta - 0.005, "delta_high": delta + 0.005,
            "latency": {"median": ratio, "p10": ratio - 0.02, "p90": ratio + 0.02, "n": 30, "median_ms": 20 * ratio},
            "goal": ratio <= 0.77 and delta >= -0.01,
            "finetune": {"seconds_per_epoch": 40.0} if finetuned else None}


def doc(frontier):
    points = [point("attr", False, 0.1, 0.85, -0.004), point("attr", True, 0.1, 0.85, 0.001),
              point("attr", True, 0.2, 0.72, -0.008, capped=True), point("l1", False, 0.1, 0.8, -0.2),
              {"criterion": "l1", "rank": "per-mac", "rate": 0.2, "capped": False, "finetuned": False,
               "infeasible": "only 9 of 11 layers can be zeroed safely at rate 0.2"}]
    model = {"model": "yolov8n", "weights": "reference (yolov8n-synth.pt)", "input_size": 320, "val_images": 100,
             "baseline": {"map": 0.5, "map_low": 0.48, "map_high": 0.52, "macs": 2_000_000_000, "median_ms": 20.0},
             "aa_control": {"median": 1.0, "p10": 0.98, "p90": 1.02, "n": 30}, "points": points}
    settings = {**vars(frontier.Settings()), "data": "data/synth"}
    return {"format": frontier.FORMAT, "command": "python benchmarks/frontier.py", "settings": settings,
            "environment": {"cpu": "test cpu", "cpu_count": 2, "libraries": {"onnxruntime": "1", "torch": "2"}},
            "seconds": 600.0, "models": [model]}


def test_table_and_plot_are_rendered_from_the_json(frontier, tmp_path):
    out = tmp_path / "frontier.json"
    out.write_text(json.dumps(doc(frontier)))
    md, png = frontier.render(out)
    text = md.read_text()
    assert "A/A ratio 1.000 [0.980-1.020]" in text and "40 s per epoch" in text
    assert "| attr | per-mac | yes | 0.2 | 8 (the whole walk) | 28.0 % | 0.720 [0.700-0.740] | 1.39x | 0.4920 |" in text
    assert "infeasible: only 9 of 11" in text
    assert "Fastest point within one mAP point: attr-per-mac-0.2-finetuned, ratio 0.720 (1.39x)" in text
    assert "meets the 1.3x goal" in text
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_options_are_checked_before_anything_runs(frontier, tmp_path, capsys):
    parse = frontier.main
    for argv, message in [(["--criteria", "attr,psychic"], "psychic"), (["--rates", "0,0.1"], "--rate must be"),
                          (["--ranks", "fastest"], "unknown ranking"), (["--models", "yolo-nope"], "unknown model")]:
        assert parse(argv + ["--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("frontier: error:") and message in err[0]
    assert parse(["--render-only", "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "frontier.json").write_text("{}")
    assert parse(["--render-only", "--out", str(tmp_path)]) == 2
    assert "not a frontier results file" in capsys.readouterr().err
    with pytest.raises(XpruneError, match="finetune-epochs"):
        frontier.settings_from(argparse.Namespace(quick=True, finetune_epochs=-1))
