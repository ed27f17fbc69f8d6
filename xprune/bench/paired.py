"""Paired latency ratios of targets timed interleaved in one run: round i of one target over round i of another,
so drift that hits both in the same round cancels."""

from __future__ import annotations

import numpy as np


def paired_ratios(samples: list[float], base: list[float]) -> list[float]:
    """Per-round latency ratios of two interleaved sample lists (round i of one with round i of the other)."""
    n = min(len(samples), len(base))
    return [samples[i] / base[i] for i in range(n)]


def ratio_summary(ratios: list[float]) -> dict:
    if not ratios:
        return {"median": None, "p10": None, "p90": None, "n": 0}
    p10, median, p90 = (float(v) for v in np.percentile(ratios, [10, 50, 90]))
    return {"median": median, "p10": p10, "p90": p90, "n": len(ratios)}


def paired_summary(row: dict, base: dict) -> dict:
    """`ratio_summary` of two results rows timed in the same interleaved run."""
    return ratio_summary(paired_ratios(row["samples_ms"], base["samples_ms"]))


def baseline_row(doc: dict) -> dict | None:
    """The baseline of an interleaved results document: the row with role "baseline" (`--baseline`), else the one
    row whose variant is "baseline"; None when the run was not interleaved or no single baseline is there."""
    if not doc.get("protocol", {}).get("interleaved"):
        return None
    rows = doc["rows"]
    for r in rows:
        if r.get("role") == "baseline":
            return r
    bases = [r for r in rows if r.get("variant") == "baseline"]
    return bases[0] if len(bases) == 1 else None


def add_speedups(doc: dict) -> None:
    """Give every other row of an interleaved run with a baseline its paired latency ratio to it ("vs_baseline":
    median, p10, p90, n; a ratio below 1 is faster) and the baseline row "vs_baseline": None."""
    base = baseline_row(doc)
    if base is None:
        return
    for r in doc["rows"]:
        r["vs_baseline"] = None if r is base else paired_summary(r, base)
