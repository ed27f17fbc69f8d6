"""The latency gate on synthetic samples, and interleaved measuring with cheap callables (no timing asserted)."""

import json

import numpy as np
import pytest

from xprune.bench.drift import REFERENCE_SUFFIX, measure_interleaved
from xprune.bench.gate import decide, gate, parse_relative, run_gate, wilson_interval
from xprune.bench.latency import LatencyProtocol
from xprune.bench.results import new_results, write_results
from xprune.errors import XpruneError


def _samples(median, n=60, noise=0.03, seed=0):
    """Lognormal latencies around `median` ms with a few slow outliers, like a CPU benchmark."""
    rng = np.random.default_rng(seed)
    s = median * np.exp(rng.normal(0, noise, n))
    s[rng.random(n) < 0.05] *= 1.5
    return s


def _doc(samples, reference=None, model="m", engine="onnxruntime", **extra):
    row = {"model": model, "engine": engine, "variant": None, "method": None, "rate": None, "device": "cpu",
           "precision": "fp32", "input_shape": [1, 3, 64, 64], "samples_ms": [float(v) for v in samples], **extra}
    if reference is not None:
        row["reference_samples_ms"] = [float(v) for v in reference]
    return new_results([row], environment={}, protocol={})


def test_identical_distributions_pass():
    for seed in range(10):
        v = gate(_doc(_samples(10, seed=2 * seed)), _doc(_samples(10, seed=2 * seed + 1)))
        assert v.decision == "pass" and v.exit_code == 0
        assert 0.95 < v.rows[0].ratio < 1.05
        assert v.rows[0].ci_low <= v.rows[0].ratio <= v.rows[0].ci_high


def test_twenty_percent_slowdown_is_a_regression():
    v = gate(_doc(_samples(10, noise=0.01, seed=1)), _doc(_samples(12, noise=0.01, seed=2)))
    assert v.decision == "regression" and v.exit_code == 1
    r = v.rows[0]
    assert r.decision == "regression" and r.ci_low > 1.1 and r.mode == "absolute"
    assert r.n_baseline == r.n_current == 60


def test_small_shift_within_tolerance_passes():
    v = gate(_doc(_samples(10, noise=0.01, seed=1)), _doc(_samples(10.2, noise=0.01, seed=2)), max_regression=0.05)
    assert v.decision == "pass"
    assert v.rows[0].ci_low > 1.0  # significantly slower, but within the tolerance


def test_speedup_is_an_improvement_and_passes():
    v = gate(_doc(_samples(10, noise=0.01, seed=1)), _doc(_samples(8, noise=0.01, seed=2)))
    assert v.rows[0].decision == "improvement" and v.exit_code == 0


def test_noisy_run_above_tolerance_is_inconclusive_not_a_failure():
    assert decide(1.08, 0.97, 1.2, 0.05) == "inconclusive"
    assert decide(1.08, 1.01, 1.2, 0.05) == "regression"
    assert decide(1.04, 1.02, 1.06, 0.05) == "pass"
    v = gate(_doc(_samples(10, n=8, noise=0.3, seed=3)), _doc(_samples(10.8, n=8, noise=0.3, seed=4)))
    assert v.exit_code == 0


def test_mismatched_models_are_unusable():
    with pytest.raises(XpruneError, match="no rows in common"):
        gate(_doc(_samples(10), model="yolov8n"), _doc(_samples(10), model="ssdlite320"))
    with pytest.raises(XpruneError, match="no rows in common"):
        gate(_doc(_samples(10)), _doc(_samples(10), engine="tensorrt"))


def test_malformed_and_forced_relative_inputs_are_unusable():
    with pytest.raises(XpruneError):
        gate({"format": "xprune-bench-1", "rows": []}, _doc(_samples(10)))
    with pytest.raises(XpruneError, match="too few"):
        gate(_doc([10, 11, 12]), _doc([10, 11, 12]))
    with pytest.raises(XpruneError, match="relative mode needs"):
        gate(_doc(_samples(10), reference=_samples(2)), _doc(_samples(10)), relative=True)
    with pytest.raises(XpruneError, match="max_regression"):
        gate(_doc(_samples(10)), _doc(_samples(10)), max_regression=-0.1)
    a = _doc(_samples(10), reference=_samples(2, seed=5))
    b = _doc(_samples(10, seed=1), reference=_samples(2, seed=6))
    a["protocol"]["reference_workload"] = {"name": "xprune-reference-convnet", "version": 1}
    b["protocol"]["reference_workload"] = {"name": "xprune-reference-convnet", "version": 2}
    with pytest.raises(XpruneError, match="different reference workloads"):
        gate(a, b)


def test_reference_workloads_compare_without_their_thread_count():
    from xprune.bench.gate.workload import reference_workload, workload_name, workloads_differ

    v1 = {"name": "xprune-reference-convnet", "version": 1, "threads": 2}
    assert not workloads_differ(v1, {**v1, "threads": 8})  # threads follow the model's row
    assert workloads_differ(v1, {**v1, "version": 2})
    assert not workloads_differ(v1, None) and not workloads_differ(None, None)  # nothing to compare
    assert workload_name(v1) == "xprune-reference-convnet v1"
    assert reference_workload(_doc(_samples(10))) is None
    assert reference_workload({"protocol": {"reference_workload": v1}}) == v1


def test_relative_mode_cancels_a_slower_machine():
    rng = np.random.default_rng(7)
    drift_b, drift_c = np.exp(rng.normal(0, 0.02, 60)), np.exp(rng.normal(0, 0.02, 60))
    base = _doc(_samples(10, noise=0.01, seed=1) * drift_b, reference=_samples(2, noise=0.01, seed=2) * drift_b)
    # the same model on a machine twice as slow: model and reference both take twice as long
    cur = _doc(2 * _samples(10, noise=0.01, seed=3) * drift_c, reference=2 * _samples(2, noise=0.01, seed=4) * drift_c)
    rel = gate(base, cur)  # auto: both carry reference samples
    assert rel.rows[0].mode == "relative" and rel.decision == "pass"
    assert rel.rows[0].reference_ratio == pytest.approx(2.0, rel=0.05)
    assert gate(base, cur, relative=True).decision == "pass"
    absolute = gate(base, cur, relative=False)
    assert absolute.rows[0].mode == "absolute" and absolute.decision == "regression"
    # and a real 20 % regression on the slow machine is still caught in relative mode
    slow = _doc(2.4 * _samples(10, noise=0.01, seed=3), reference=2 * _samples(2, noise=0.01, seed=4))
    assert gate(base, slow).decision == "regression"


def test_rows_pair_by_key_and_unmatched_rows_are_listed():
    base = _doc(_samples(10))
    base["rows"].append({**base["rows"][0], "model": "other"})
    v = gate(base, _doc(_samples(12, noise=0.01, seed=9)))
    assert len(v.rows) == 1 and v.unmatched_baseline == ["model=other engine=onnxruntime device=cpu precision=fp32 "
                                                         "input_shape=(1, 3, 64, 64)"]
    dup = _doc(_samples(10))
    dup["rows"].append(dup["rows"][0])
    with pytest.raises(XpruneError, match="two rows"):
        gate(dup, _doc(_samples(10)))


def test_deterministic_for_a_seed_and_markdown_has_the_decision():
    b, c = _doc(_samples(10, seed=1)), _doc(_samples(12, seed=2))
    v1, v2 = gate(b, c, seed=3), gate(b, c, seed=3)
    assert v1.as_dict() == v2.as_dict()
    assert gate(b, c, seed=4).rows[0].ci_low != v1.rows[0].ci_low
    md = v1.to_markdown()
    assert "REGRESSION" in md and "| m " not in md and "model=m" in md
    assert len(md.splitlines()) < 30
    assert "PASS" in gate(b, _doc(_samples(10, seed=5))).to_markdown()
    json.dumps(v1.as_dict())  # JSON-serializable as is


def test_run_gate_writes_verdict_and_appends_summary(tmp_path):
    write_results(tmp_path / "b.json", _doc(_samples(10, noise=0.01, seed=1)))
    write_results(tmp_path / "c.json", _doc(_samples(12, noise=0.01, seed=2)))
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    lines = []
    code = run_gate(tmp_path / "b.json", tmp_path / "c.json", summary=summary, verdict_path=tmp_path / "v.json",
                    log=lines.append)
    assert code == 1 and lines[-1].startswith("gate: REGRESSION")
    assert summary.read_text().startswith("earlier step\n## Latency gate")
    assert json.loads((tmp_path / "v.json").read_text())["exit_code"] == 1
    with pytest.raises(XpruneError, match="not found"):
        run_gate(tmp_path / "missing.json", tmp_path / "c.json")
    assert parse_relative("off") is False and parse_relative("auto") == "auto"


def test_wilson_interval():
    lo, hi = wilson_interval(0, 100)
    assert lo == 0 and 0.03 < hi < 0.04
    lo, hi = wilson_interval(50, 100)
    assert lo < 0.5 < hi


def test_measure_interleaved_rotates_and_pairs_reference_samples():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b"), "c": lambda: calls.append("c")}
    protocol = LatencyProtocol(warmup_runs=2, warmup_s=0.0, runs=6, min_s=0.0)
    out = measure_interleaved(fns, protocol, reference=lambda: calls.append("r"))
    assert set(out) == {"a", "b", "c", "a" + REFERENCE_SUFFIX, "b" + REFERENCE_SUFFIX, "c" + REFERENCE_SUFFIX}
    assert all(len(v) == 6 for v in out.values())
    assert all(s >= 0 for v in out.values() for s in v)
    assert calls.count("a") == calls.count("b") == calls.count("c") == 8  # 2 warm-up + 6 timed rounds
    assert calls.count("r") == 24
    models = [c for c in calls if c != "r"]
    assert all(calls[i + 1] == "r" for i, c in enumerate(calls) if c != "r")  # reference right after each sample
    rounds = ["".join(models[i:i + 3]) for i in range(0, len(models), 3)]
    assert rounds[:4] == ["abc", "bca", "abc", "bca"]  # warm-up rotates too; timing restarts the rotation
    assert rounds[2:] == ["abc", "bca", "cab", "abc", "bca", "cab"]
    plain = measure_interleaved({"x": lambda: None}, protocol)
    assert list(plain) == ["x"] and len(plain["x"]) == 6
    with pytest.raises(XpruneError):
        measure_interleaved({}, protocol)


def test_reference_workload_is_deterministic():
    pytest.importorskip("onnxruntime")
    from xprune.bench.drift import ReferenceWorkload
    with ReferenceWorkload(threads=1) as ref:
        out1 = ref.run()
        desc = ref.describe()
    with ReferenceWorkload(threads=1) as ref:
        assert np.array_equal(out1, ref.run())
    assert desc["name"] == "xprune-reference-convnet" and desc["macs"] > 1e8
    with pytest.raises(XpruneError):
        ReferenceWorkload().run()


def test_contended_reference_samples_raise_a_warning():
    quiet = _samples(2, noise=0.01, seed=2)
    busy = quiet.copy()
    busy[::3] += 4.1  # a 4 ms time slice lands on every third reference sample
    base = _doc(_samples(10, noise=0.01, seed=1), reference=quiet)
    v = gate(base, _doc(_samples(10, noise=0.01, seed=3), reference=busy))
    assert v.rows[0].reference_spread > 2 and any(w.startswith("contended") for w in v.warnings)
    assert "contended" in v.to_markdown()
    assert not gate(base, _doc(_samples(10, noise=0.01, seed=3), reference=quiet)).warnings
