"""The benchmark results file: every timed sample plus the environment, so reports and the CI gate recompute
statistics from raw data instead of trusting summaries.

    {"format": "xprune-bench-1", "command": "...", "environment": {...}, "protocol": {...},
     "rows": [{"model", "variant", "method", "rate", "engine", "device", "precision", "input_shape",
               "samples_ms": [...], "median_ms", "p90_ms", "p99_ms", "fps", ... optional "map", "map50",
               "map_matches" (the per-image COCO evaluation, `xprune.evaluate.image_matches.ImageMatches.to_json`,
               from which the gate bootstraps mAP differences), "macs", "params", "reference_samples_ms" (a fixed
               workload timed interleaved with the model)}]}
"""

from __future__ import annotations

import math
from pathlib import Path

from xprune.errors import XpruneError
from xprune.files import read_json, write_json

FORMAT = "xprune-bench-1"
# Two rows measure the same thing when these agree; the gate pairs baseline and current rows by them.
ROW_KEY = ("model", "variant", "method", "rate", "engine", "device", "precision", "input_shape", "threads")


def row_key(row: dict) -> tuple:
    return tuple(tuple(v) if isinstance(v, list) else v for v in (row.get(k) for k in ROW_KEY))


def describe_key(key: tuple) -> str:
    return " ".join(f"{k}={v}" for k, v in zip(ROW_KEY, key) if v is not None)


def new_results(rows: list[dict], environment: dict, protocol: dict | None = None, command: str | None = None) -> dict:
    return {"format": FORMAT, "command": command, "environment": environment, "protocol": protocol or {},
            "rows": rows}


def write_results(path: str | Path, doc: dict) -> None:
    validate(doc, str(path))
    write_json(path, doc)


def read_results(path: str | Path) -> dict:
    """Load and validate a results file; any problem is one XpruneError line naming the file."""
    doc = read_json(path, "results file")
    validate(doc, str(path))
    return doc


def validate(doc, where: str) -> None:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise XpruneError(f"{where} is not an xprune benchmark results file (expected format '{FORMAT}')")
    rows = doc.get("rows")
    if not isinstance(rows, list) or not rows:
        raise XpruneError(f"{where} has no result rows")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not row.get("model") or not row.get("engine"):
            raise XpruneError(f"{where}: row {i} lacks 'model' or 'engine'")
        samples = row.get("samples_ms")
        if not isinstance(samples, list) or not samples:
            raise XpruneError(f"{where}: row {i} ({row.get('model')}) has no latency samples")
        if not all(isinstance(s, (int, float)) and math.isfinite(s) and s > 0 for s in samples):
            raise XpruneError(f"{where}: row {i} ({row.get('model')}) has non-positive or non-numeric samples")
        ref = row.get("reference_samples_ms")
        if ref is not None and (not isinstance(ref, list) or len(ref) != len(samples)
                                or not all(isinstance(s, (int, float)) and math.isfinite(s) and s > 0 for s in ref)):
            raise XpruneError(f"{where}: row {i} ({row.get('model')}) has malformed reference samples")
        matches = row.get("map_matches")
        if matches is not None and (not isinstance(matches, dict) or not isinstance(matches.get("arrays"), dict)):
            # the full check (`ImageMatches.from_json`) runs where the matches are used
            raise XpruneError(f"{where}: row {i} ({row.get('model')}) has a malformed per-image evaluation")
