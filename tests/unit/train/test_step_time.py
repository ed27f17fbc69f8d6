"""benchmarks/step_time.py: timed training steps under a family's recipe, and a table rendered from the files."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from xprune.errors import XpruneError
from benchmark_scripts import load_benchmark

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "benchmarks" / "step_time.py"


def _script():
    return load_benchmark("step_time")


@pytest.mark.slow  # timed steps of a real detector
def test_step_times_are_recorded_per_step_and_rendered(synth_data, tmp_path):
    step_time = _script()
    records = step_time.measure("ssdlite320-mbv3", synth_data, [], steps=2, size=128)
    assert len(records) == 1 and records[0]["roi_samples"] is None and records[0]["precision"] == "fp32"
    assert len(records[0]["seconds"]) == 2 and all(s > 0 for s in records[0]["seconds"])
    (tmp_path / "step-time-ssdlite320-mbv3.json").write_text(json.dumps(
        {"model": "ssdlite320-mbv3", "threads": 2, "records": [{**records[0], "seconds": [3.0, 1.0, 2.0]}]}))
    assert "| ssdlite320-mbv3 | fp32 | - | 3 | 2.00 | 1.00 | 3.00 | 2 |" in step_time.render(tmp_path)
    with pytest.raises(XpruneError, match="no RoI sampler"):
        step_time.measure("ssdlite320-mbv3", synth_data, [128], steps=1, size=128)


@pytest.mark.slow  # a subprocess that imports torch; the full suite runs it
def test_script_refuses_bad_input_in_one_line(synth_data, tmp_path):
    for args in (["yolov8n"], ["ssd-resnet50", "--steps", "0"]):
        proc = subprocess.run([sys.executable, str(SCRIPT), *args, "--data", str(synth_data), "--out", str(tmp_path)],
                              capture_output=True, text=True)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
