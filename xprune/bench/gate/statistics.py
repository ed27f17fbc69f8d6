"""The gate's statistics: the ratio of medians with percentile-bootstrap bounds, the spread that flags a busy
machine, the Wilson interval of a rate, and the run-to-run threshold of history mode."""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy.stats import binomtest, bootstrap, median_abs_deviation, norm

# Bounds memory for long runs (a 0.1 ms model timed for 3 s has 30k samples): resampled values per batch.
BOOTSTRAP_BATCH_VALUES = 4_000_000


def _ratio_of_medians(current: np.ndarray, baseline: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.median(current, axis=axis) / np.median(baseline, axis=axis)


def median_ratio(baseline, current, resamples: int, confidence: float,
                 rng: np.random.Generator) -> tuple[float, float, float, float, float]:
    """(median of baseline, median of current, their ratio current / baseline, lower bound, upper bound).

    The bounds are one-sided at `confidence` (together a two-sided interval at 2 * confidence - 1): a percentile
    bootstrap resampling each side independently."""
    base, cur = np.asarray(baseline, float), np.asarray(current, float)
    b_med, c_med = float(np.median(base)), float(np.median(cur))
    # random_state, not rng: the spelling every supported scipy accepts
    result = bootstrap((cur, base), _ratio_of_medians, n_resamples=resamples, paired=False, vectorized=True,
                       confidence_level=2 * confidence - 1, method="percentile", random_state=rng,
                       batch=max(1, BOOTSTRAP_BATCH_VALUES // max(len(base), len(cur))))
    ci = result.confidence_interval
    return b_med, c_med, c_med / b_med, float(ci.low), float(ci.high)


def spread(samples) -> float:
    """p90 / median: 1.0-1.1 for a quiet machine, well above for one shared with other work."""
    p50, p90 = np.quantile(np.asarray(samples, float), [0.5, 0.9])
    return float(p90 / p50)


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a rate k/n (for reporting false-alarm and detection rates); (0, 1) when n = 0."""
    if n == 0:
        return (0.0, 1.0)
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


# History mode. A run's statistic is the log of its median; runs of one baseline on one runner type scatter around
# a centre with a between-run spread. Both are estimated robustly (median, normal-consistent MAD), so one odd
# run in the history (a busy neighbour, a slow node) moves neither much.
HISTORY_SIMULATIONS = 200_000
# Spreads below this (0.2 %) are below what a latency median can resolve; a history of identical medians would
# otherwise give a zero threshold.
MIN_LOG_SPREAD = 0.002


def robust_center_spread(log_values) -> tuple[float, float]:
    """(median, normal-consistent MAD) of the runs' log statistics, the spread floored at MIN_LOG_SPREAD."""
    x = np.asarray(log_values, float)
    return float(np.median(x)), max(float(median_abs_deviation(x, scale="normal")), MIN_LOG_SPREAD)


@functools.lru_cache(maxsize=64)
def history_factor(runs: int, false_alarm: float) -> float:
    """k such that a new run of the same baseline lands more than k robust spreads above the history's median
    with probability `false_alarm`, when the history holds `runs` runs.

    Median and MAD of a handful of runs are themselves uncertain, so k is larger than the normal quantile
    (at 5 %: about 4.0 for 5 runs, 2.35 for 10, 1.95 for 20, against 1.645 for a known centre and spread). The statistic (new - median) / MAD
    is pivotal for normally scattered runs, so k does not depend on the unknown centre or spread: it is the
    (1 - false_alarm) quantile of that statistic over seeded simulated histories, the same every call."""
    rng = np.random.default_rng([runs, 20240601])
    stats = []
    for _ in range(HISTORY_SIMULATIONS // 20_000):
        x = rng.standard_normal((20_000, runs + 1))
        hist, new = x[:, :runs], x[:, runs]
        center = np.median(hist, axis=1)
        spread = median_abs_deviation(hist, axis=1, scale="normal")
        stats.append((new - center) / spread)
    return float(np.quantile(np.concatenate(stats), 1 - false_alarm))


def history_rank(runs: int, false_alarm: float) -> int | None:
    """The rank k (1-based, ascending) of the history run a new run must exceed to fail, so that a run of the same
    baseline fails with probability <= `false_alarm` whatever the shape of the run-to-run scatter: for N
    exchangeable runs a new one lands above the k-th smallest with probability (N + 1 - k) / (N + 1). None when
    the history is too short for that rate (N + 1 < 1 / false_alarm: 19 runs at 5 %)."""
    k = math.ceil((runs + 1) * (1 - false_alarm) - 1e-9)
    return k if k <= runs else None


def detectable_log_shift(threshold: float, spread: float, runs: int, power: float) -> float:
    """The slowdown (log) a single current run exceeds `threshold` with probability `power`, at the estimated
    spread: the run's own scatter and the uncertainty of the history's median (variance pi/2 * s^2 / runs)."""
    return threshold + float(norm.ppf(power)) * spread * float(np.sqrt(1 + np.pi / (2 * runs)))
