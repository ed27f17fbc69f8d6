"""benchmarks/gate_quality.py's scoring and report on synthetic runs (the measuring itself starts processes and
takes minutes; it is smoke-run by hand): every comparison kind and mode is counted, and the rates follow."""

import json
from argparse import Namespace

import numpy as np
import pytest

from xprune.bench.results import new_results
from benchmark_scripts import load_benchmark



@pytest.fixture(scope="module")
def gq():
    return load_benchmark("gate_quality")


def _row(median, rng, n=30):
    level = median * np.exp(rng.normal(0, 0.005, n))
    return {"model": "onnx", "variant": "unknown", "method": None, "rate": None, "engine": "onnxruntime",
            "device": "cpu", "precision": "fp32", "input_shape": [1, 3, 48, 48], "threads": 2,
            "samples_ms": [float(v) for v in level], "median_ms": float(np.median(level)),
            "reference_samples_ms": [float(v) for v in 2.0 * np.exp(rng.normal(0, 0.005, n))]}


def _reps(n=30, between=0.01, seed=0):
    """Runs of a quiet machine: each process lands at its own level (between-run scatter `between`); the
    interleaved process times all four at one level."""
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n):
        rep = {name: new_results([_row(10.0 * f * np.exp(rng.normal(0, between)), rng)], {"cpu": "x"}, {})
               for name, f in (("A", 1.0), ("B5", 1.05), ("B10", 1.10))}
        level = np.exp(rng.normal(0, between))
        rep["interleaved"] = new_results([_row(10.0 * f * level, rng) for f in (1.0, 1.0, 1.05, 1.10)], {"cpu": "x"},
                                         {"interleaved": True})
        reps.append(rep)
    return reps


@pytest.mark.slow  # the full suite runs it; the fast loop stays under two minutes
def test_scoring_counts_every_comparison_and_the_rates_follow(gq):
    reps = _reps()
    lat = gq.score_latency(reps, Namespace(lag=None, windows=[10, 5]))
    sep, il = lat["separate"]["analysis"], lat["interleaved"]["analysis"]
    for a in (sep, il):
        for mode in gq.MODES:
            assert {k: a[mode][k]["fails"]["n"] for k in gq.KINDS} == {"A/A": 30, "+5%": 30, "+10%": 30}
    # quiet machine, 1 % between runs: +10 % always caught, A/A never, in one process and across processes
    assert il["absolute"]["+10%"]["fails"]["count"] == 30 and il["absolute"]["A/A"]["fails"]["count"] == 0
    assert sep["absolute"]["A/A"]["fails"]["count"] <= 1 and sep["absolute"]["+10%"]["fails"]["count"] >= 27
    for w, n_trials in (("10", 20), ("5", 25)):
        h = lat["history"][w]["analysis"]
        assert set(h) == {"absolute@0.05", "absolute@0", "relative@0.05", "relative@0"}
        assert h["absolute@0.05"]["A/A"]["fails"]["n"] == n_trials
        assert h["absolute@0.05"]["+10%"]["fails"]["count"] >= n_trials - 2
        assert h["absolute@0.05"]["threshold_median"] >= 1.05  # the tolerance is a floor
    assert lat["true_slowdown"]["B10"]["interleaved_paired_median"] == pytest.approx(1.10, abs=0.01)


def test_report_renders_from_the_json_alone(gq, tmp_path):
    lat = gq.score_latency(_reps(n=8, seed=1), Namespace(lag=None, windows=[5]))
    doc = {"format": gq.FORMAT, "json_name": "q.json", "started": "now", "wall_s": 1.0,
           "environment": {"cpu": "x", "cpu_count": 2, "libraries": {}},
           "settings": {"quick": True, "repetitions": 8, "samples": 30, "threads": 2, "macs": {"A": 1, "B5": 1.05,
                                                                                              "B10": 1.1},
                        "max_regression": 0.05, "confidence": 0.95, "resamples": 2000, "false_alarm": 0.05},
           "latency": lat, "accuracy": None}
    md = gq.render_markdown(doc)
    assert "history mode" in md and "| 5 | relative | normal | 0.05 |" in md and "QUICK" in md
    path = tmp_path / "q.json"
    path.write_text("{}")
    assert gq.main(["--report-only", "--out", str(path)]) == 2  # not this script's JSON: one line, exit 2
    assert gq.main(["--rescore", "--out", str(path)]) == 2


def test_rescore_judges_the_recorded_runs_again(gq, tmp_path):
    reps = _reps(n=8, seed=2)
    lat = gq.score_latency(reps, Namespace(lag=None, windows=[5]))
    stale = {**lat, "history": {}}  # as if an older gate had judged nothing in history mode
    doc = {"format": gq.FORMAT, "json_name": "q.json", "started": "then", "wall_s": 1.0,
           "environment": {"cpu": "x", "cpu_count": 2, "libraries": {}},
           "settings": {"quick": True, "repetitions": 8, "samples": 30, "threads": 2, "windows": [5],
                        "macs": {"A": 1, "B5": 1.05, "B10": 1.1}, "max_regression": 0.05, "confidence": 0.95,
                        "resamples": 2000, "false_alarm": 0.05},
           "latency": stale, "accuracy": None, "repetitions": reps}
    path = tmp_path / "q.json"
    path.write_text(json.dumps(doc))
    assert gq.main(["--rescore", "--out", str(path)]) == 0
    again = json.loads(path.read_text())
    assert again["rescored"] and again["repetitions"] == json.loads(json.dumps(reps))
    assert again["latency"]["history"]["5"]["analysis"] == json.loads(json.dumps(lat["history"]["5"]["analysis"]))
    md = (tmp_path / "q.md").read_text()
    assert "Judged again" in md and "| 5 | absolute | normal | 0.05 |" in md
