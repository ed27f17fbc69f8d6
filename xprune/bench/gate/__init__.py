"""The CI gate: does a results file show a latency (or, with mAP per image, an accuracy) regression?

Against one baseline file (or one interleaved run): per row, ratio = median(current) / median(baseline) with
percentile-bootstrap bounds; a row regresses when the ratio exceeds 1 + max_regression and its lower bound
exceeds 1. Against a history of baseline runs (`history.py`): the threshold comes from the runs' own spread,
set so that an A/A run fails at a stated rate. With max_map_drop, a row also regresses when its mAP fell by more
than that (paired bootstrap over images, `accuracy.py`). The method, why these rules, their limits and the exit
codes are in docs/ci-gate.md.
"""

from xprune.bench.gate.accuracy import AccuracyVerdict, decide_accuracy, judge_accuracy
from xprune.bench.gate.decision import CONTENDED_SPREAD, MIN_SAMPLES, Relative, RowVerdict, Verdict, decide, gate
from xprune.bench.gate.history import (DEFAULT_FALSE_ALARM, DEFAULT_WINDOW, DETECTION_POWER, MIN_HISTORY,
                                       HistoryRowVerdict, HistoryVerdict, history_gate, read_history, record_run)
from xprune.bench.gate.render import append_summary, history_lines, history_markdown, verdict_lines, verdict_markdown
from xprune.bench.gate.run import parse_relative, run_gate, run_record, split_interleaved
from xprune.bench.gate.statistics import (detectable_log_shift, history_factor, history_rank, median_ratio,
                                          robust_center_spread, spread, wilson_interval)

__all__ = ["AccuracyVerdict", "CONTENDED_SPREAD", "DEFAULT_FALSE_ALARM", "DEFAULT_WINDOW", "DETECTION_POWER",
           "HistoryRowVerdict", "HistoryVerdict", "MIN_HISTORY", "MIN_SAMPLES", "Relative", "RowVerdict", "Verdict",
           "append_summary", "decide", "decide_accuracy", "detectable_log_shift", "gate", "history_factor",
           "history_gate", "history_lines", "history_markdown", "history_rank", "judge_accuracy", "median_ratio",
           "parse_relative", "read_history", "record_run", "robust_center_spread", "run_gate", "run_record", "spread",
           "split_interleaved", "verdict_lines", "verdict_markdown", "wilson_interval"]
