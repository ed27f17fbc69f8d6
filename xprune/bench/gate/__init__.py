"""The latency gate: does a results file show a latency regression against a baseline?

Per row, ratio = median(current) / median(baseline) with percentile-bootstrap bounds; a row regresses when the
ratio exceeds 1 + max_regression and its lower bound exceeds 1. The method, why this rule, its limits and the exit
codes are in docs/ci-gate.md.
"""

from xprune.bench.gate.decision import CONTENDED_SPREAD, MIN_SAMPLES, Relative, RowVerdict, Verdict, decide, gate
from xprune.bench.gate.render import append_summary, verdict_lines, verdict_markdown
from xprune.bench.gate.run import parse_relative, run_gate, split_interleaved
from xprune.bench.gate.statistics import median_ratio, spread, wilson_interval

__all__ = ["CONTENDED_SPREAD", "MIN_SAMPLES", "Relative", "RowVerdict", "Verdict", "append_summary", "decide", "gate",
           "median_ratio", "parse_relative", "run_gate", "spread", "split_interleaved", "verdict_lines",
           "verdict_markdown", "wilson_interval"]
