"""The gate's statistics: the ratio of medians with percentile-bootstrap bounds, the spread that flags a busy
machine, and the Wilson interval of a rate."""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest, bootstrap

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
