"""The GPU suite's quick run on a real NVIDIA GPU (skipped without one)."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_suite  # noqa: E402

sys.path.pop(0)


@pytest.mark.gpu
def test_quick_suite_on_cuda_measures_fp16_and_cuda_graphs(tmp_path):
    assert gpu_suite.main(["--out", str(tmp_path), "--device", "cuda", "--quick"], log=lambda m: None) == 0
    doc = json.loads((tmp_path / gpu_suite.RESULTS).read_text())
    measured = {(g["runtime"], g["precision"], g["cuda_graph"]) for g in doc["groups"] if g["status"] == "measured"}
    assert {("torch", "fp16", False), ("torch", "fp32", True)} <= measured
    assert all(g["timing"] == "cuda-events" for g in doc["groups"]
               if g["status"] == "measured" and g["runtime"] != "onnxruntime")
