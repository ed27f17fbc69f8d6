"""Compare two backends' raw outputs on the same input, with a tolerance chosen by the lower precision of the pair.

An element passes when |a - b| <= atol + rtol * |b| (numpy.allclose, b the reference), plus, for bf16,
rtol_of_max * max|b| over that output. Reduced precision moves raw head outputs by amounts that are harmless after
NMS, so fp16, bf16 and int8 get looser bounds than fp32. bf16 keeps 8 significant bits, so its error follows the
size of the values an output is computed from, not of the element itself: a box coordinate near 0 computed as a
centre minus a distance of 200 px is off by about as much as the distance's rounding (the YOLOv8n reference at
320 px through OpenVINO, 40 synthetic val images: box errors up to 1.6 % of the largest coordinate, 1.3 % beyond
atol + rtol * |b|). For int8 an elementwise bound is only a smoke test: the mAP difference is what decides whether a
calibration is good.

`compare_runners` drives both runners through polygraphy's `Comparator` (any xprune runner fits it through
`PolygraphyRunner`). The verdict stays `compare_outputs`: polygraphy's `CompareFunc.simple` passes an element when
|a - b| <= max(atol, rtol * |b|), a stricter bound than the sum above, and reports neither mismatch counts nor
non-finite elements.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from polygraphy.backend.base import BaseRunner

from xprune.errors import XpruneError

if TYPE_CHECKING:
    from xprune.runtime.base import Runner

TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"rtol": 1e-3, "atol": 1e-4},
    "fp16": {"rtol": 1e-2, "atol": 1e-2},
    "bf16": {"rtol": 5e-2, "atol": 5e-2, "rtol_of_max": 3e-2},
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
    rtol, atol, of_max = tol["rtol"], tol["atol"], tol.get("rtol_of_max", 0.0)
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
        bound = atol + rtol * ref + (of_max * float(ref.max()) if ref.size else 0.0)
        mismatched = int(np.count_nonzero(diff > bound)) + nonfinite
        significant = ref > atol
        max_abs = float(diff.max()) if diff.size else 0.0
        max_rel = float((diff[significant] / ref[significant]).max()) if significant.any() else 0.0
        results.append({"name": name, "shape": list(x64.shape), "max_abs_error": max_abs, "max_rel_error": max_rel,
                        "mismatched": mismatched, "mismatched_fraction": mismatched / x64.size if x64.size else 0.0,
                        "nonfinite": nonfinite, "passed": mismatched == 0})
    return {"precision": precision, "rtol": rtol, "atol": atol, "rtol_of_max": of_max, "reference": "b",
            "passed": all(r["passed"] for r in results), "outputs": results}


INPUT_NAME = "images"


class PolygraphyRunner(BaseRunner):
    """An xprune runner seen as a polygraphy runner: one input named `images`, outputs named output0, output1, ..."""

    def __init__(self, runner: Runner, input_shape: Sequence[int], name: str):
        super().__init__(name=name)
        self.runner, self.input_shape = runner, [int(d) for d in input_shape]

    def activate_impl(self) -> None:
        self.runner.__enter__()

    def deactivate_impl(self) -> None:
        self.runner.__exit__(None, None, None)

    def get_input_metadata_impl(self):
        from polygraphy.common import TensorMetadata

        return TensorMetadata().add(INPUT_NAME, dtype=np.float32, shape=self.input_shape)

    def infer_impl(self, feed_dict):
        start = time.perf_counter()
        outputs = self.runner.infer(feed_dict[INPUT_NAME])
        self.inference_time = time.perf_counter() - start
        return OrderedDict((f"output{i}", out) for i, out in enumerate(outputs))


def compare_runners(a: Runner, b: Runner, input_shape: Sequence[int], inputs: int = 4, seed: int = 0,
                    precision: str | None = None) -> dict[str, Any]:
    """Run `a` and `b` on the same seeded random inputs and compare their outputs (`b` is the reference; its
    precision picks the tolerances unless `precision` is given). polygraphy prints nothing: its progress lines
    would mix with the report on stdout.

    Returns the report of the first input that fails, or else of the input with the largest absolute error.
    """
    from polygraphy.comparator import Comparator
    from polygraphy.exception import PolygraphyException
    from xprune.runtime.base import silent_polygraphy

    precision = precision or b.precision
    tolerance(precision)
    rng = np.random.default_rng(seed)
    feeds = ({INPUT_NAME: rng.random(input_shape, dtype=np.float32)} for _ in range(inputs))
    runners = [PolygraphyRunner(a, input_shape, "a"), PolygraphyRunner(b, input_shape, "b")]
    worst = None
    try:
        with silent_polygraphy(), \
                contextlib.closing(Comparator.run(runners, data_loader=feeds, streaming=True)) as stream:
            for results in stream:
                out_a, out_b = (list(iterations[0].values()) for _, iterations in results.items())
                result = compare_outputs(out_a, out_b, precision)
                if worst is None or not result["passed"] or _largest_error(result) > _largest_error(worst):
                    worst = result
                if not result["passed"]:
                    break
    except PolygraphyException as e:
        raise XpruneError(f"comparison failed: {str(e).strip().splitlines()[0][:200]}") from None
    if worst is None:
        raise XpruneError("no inputs to compare on")
    return worst


def _largest_error(result: dict) -> float:
    return max(o["max_abs_error"] for o in result["outputs"])
