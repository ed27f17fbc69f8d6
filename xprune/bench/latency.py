"""Latency protocol: warm-up of at least `warmup_runs` runs and `warmup_s` seconds, then at least `runs` timed runs
and `min_s` seconds; every sample is kept."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class LatencyProtocol:
    warmup_runs: int = 10
    warmup_s: float = 1.0
    runs: int = 100
    min_s: float = 3.0
    max_s: float = 120.0  # a cap so a very slow model on a small CPU still finishes


def time_call_ms(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


def measure(fn: Callable[[], object], protocol: LatencyProtocol = LatencyProtocol()) -> list[float]:
    """Run fn by the protocol; returns the timed samples in milliseconds."""
    start, n = time.perf_counter(), 0
    while n < protocol.warmup_runs or time.perf_counter() - start < protocol.warmup_s:
        fn()
        n += 1
        if time.perf_counter() - start > protocol.max_s:
            break
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < protocol.runs or time.perf_counter() - start < protocol.min_s:
        samples.append(time_call_ms(fn))
        if time.perf_counter() - start > protocol.max_s and len(samples) >= 10:
            break
    return samples


def summarize(samples: list[float]) -> dict:
    """median, p90, p99, mean, std in ms; fps = 1000 / median."""
    median, p90, p99 = (float(v) for v in np.percentile(samples, [50, 90, 99]))
    return {"n": len(samples), "median_ms": median, "p90_ms": p90, "p99_ms": p99,
            "mean_ms": statistics.fmean(samples), "std_ms": statistics.pstdev(samples), "min_ms": min(samples),
            "fps": 1000.0 / median if median > 0 else float("inf")}
