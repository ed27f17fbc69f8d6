"""Compare two backends' raw outputs on the same input, with a tolerance chosen by the lower precision of the pair.

An element passes when |a - b| <= atol + rtol * |b| (numpy.allclose, b the reference). Reduced precision moves raw
head outputs by amounts that are harmless after NMS, so fp16 and int8 get looser bounds than fp32. For int8 an
elementwise bound is only a smoke test: the mAP difference is what decides whether a calibration is good.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xprune.errors import XpruneError

TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"rtol": 1e-3, "atol": 1e-4},
    "fp16": {"rtol": 1e-2, "atol": 1e-2},
    "int8": {"rtol": 1e-1, "atol": 5e-2},
}
DEFAULT_NAMES = ("boxes", "scores")


def tolerance(precision: str) -> dict[str, float]:
    if precision not in TOLERANCES:
        raise XpruneError(f"unknown precision {precision!r}; expected one of {', '.join(TOLERANCES)}")
    return dict(TOLERANCES[precision])


def compare_outputs(a: Sequence[np.ndarray], b: Sequence[np.ndarray], precision: str = "fp32",
                    names: Sequence[str] | None = None) -> dict[str, Any]:
    """Per output: max abs error, max rel error (over elements with |b| > atol), mismatched elements, pass flag.

    `b` is the reference. An element that is NaN or inf in either output counts as mismatched (the error maxima are
    taken over the finite ones). A difference in shape or output count raises XpruneError.
    """
    tol = tolerance(precision)
    rtol, atol = tol["rtol"], tol["atol"]
    if len(a) != len(b):
        raise XpruneError(f"the two models give {len(a)} and {len(b)} outputs; cannot compare")
    if names is None:
        names = DEFAULT_NAMES if len(a) == len(DEFAULT_NAMES) else tuple(f"output{i}" for i in range(len(a)))
    elif len(names) != len(a):
        raise XpruneError(f"{len(names)} output names given for {len(a)} outputs")
    results = []
    for i, (name, x, y) in enumerate(zip(names, a, b)):
        x64, y64 = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x64.shape != y64.shape:
            raise XpruneError(f"output {i} ({name}): shapes {list(x64.shape)} and {list(y64.shape)} differ")
        both_finite = np.isfinite(x64) & np.isfinite(y64)
        nonfinite = int(x64.size - np.count_nonzero(both_finite))
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf; masked out just below
            diff = np.abs(np.where(both_finite, x64 - y64, 0.0))
        ref = np.abs(np.where(both_finite, y64, 0.0))
        mismatched = int(np.count_nonzero(diff > atol + rtol * ref)) + nonfinite
        significant = ref > atol
        max_abs = float(diff.max()) if diff.size else 0.0
        max_rel = float((diff[significant] / ref[significant]).max()) if significant.any() else 0.0
        results.append({"name": name, "shape": list(x64.shape), "max_abs_error": max_abs, "max_rel_error": max_rel,
                        "mismatched": mismatched, "mismatched_fraction": mismatched / x64.size if x64.size else 0.0,
                        "nonfinite": nonfinite, "passed": mismatched == 0})
    return {"precision": precision, "rtol": rtol, "atol": atol, "reference": "b",
            "passed": all(r["passed"] for r in results), "outputs": results}
