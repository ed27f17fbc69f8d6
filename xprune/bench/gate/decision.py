"""The gate's decision: pair the rows of two results files, compare each pair (latency, and mAP when asked),
decide per row and for the file."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from xprune.bench.gate.accuracy import AccuracyVerdict, check_accuracy_params, judge_accuracy
from xprune.bench.gate.render import verdict_markdown
from xprune.bench.gate.statistics import median_ratio, spread
from xprune.bench.gate.workload import reference_workload, workload_name, workloads_differ
from xprune.bench.results import ROW_KEY, describe_key, row_key, validate
from xprune.errors import XpruneError

MIN_SAMPLES = 5
# A reference workload's p90 above this multiple of its median means the run shared its cores with other work
# (time slices of a few ms land on some samples and not others): neither mode's numbers can be trusted then.
CONTENDED_SPREAD = 1.25
Relative = bool | Literal["auto"]


@dataclass
class RowVerdict:
    key: dict                  # ROW_KEY field -> value
    label: str                 # describe_key(...)
    mode: str                  # "absolute" or "relative"
    baseline_median: float     # median of the compared statistic: ms (absolute) or model/reference (relative)
    current_median: float
    ratio: float               # current_median / baseline_median
    ci_low: float              # one-sided lower bound at `confidence`
    ci_high: float             # one-sided upper bound at `confidence`
    n_baseline: int
    n_current: int
    decision: str              # latency: "regression", "inconclusive", "pass", "improvement"
    baseline_median_ms: float  # the model's own medians, for the reader, in either mode
    current_median_ms: float
    reference_ratio: float | None = None  # relative mode: how much slower the reference ran in current
    reference_spread: float | None = None  # max over both files of the reference samples' p90 / median
    accuracy: AccuracyVerdict | None = None  # with max_map_drop: the mAP comparison, decided on its own

    @property
    def regressed(self) -> bool:
        return self.decision == "regression" or (self.accuracy is not None and self.accuracy.decision == "regression")


@dataclass
class Verdict:
    rows: list[RowVerdict]
    decision: str              # "pass" or "regression"
    method: str
    max_regression: float
    confidence: float
    resamples: int
    seed: int
    unmatched_baseline: list[str] = field(default_factory=list)
    unmatched_current: list[str] = field(default_factory=list)
    max_map_drop: float | None = None  # the accuracy gate's tolerance; None: latency only

    @property
    def exit_code(self) -> int:
        return 1 if self.decision == "regression" else 0

    @property
    def warnings(self) -> list[str]:
        out = [f"inconclusive: {r.label} is {100 * (r.ratio - 1):+.1f}% but the run is too noisy to tell "
               f"(CI lower bound {r.ci_low:.3f} <= 1); rerun with more samples" for r in self.rows
               if r.decision == "inconclusive"]
        out += accuracy_warnings(self.rows)
        out += [f"contended: {r.label}: the reference workload's p90 is {r.reference_spread:.2f}x its median, so the "
                f"machine was busy with other work while measuring; treat this ratio with suspicion" for r in self.rows
                if r.reference_spread is not None and r.reference_spread > CONTENDED_SPREAD]
        out += [f"only in baseline (not judged): {k}" for k in self.unmatched_baseline]
        out += [f"only in current (not judged): {k}" for k in self.unmatched_current]
        return out

    def as_dict(self) -> dict:
        d = asdict(self)
        d["exit_code"] = self.exit_code
        d["warnings"] = self.warnings
        return d

    def to_markdown(self, max_rows: int = 20) -> str:
        """One screen for $GITHUB_STEP_SUMMARY: decision, a row table, warnings, the method."""
        return verdict_markdown(self, max_rows)


def accuracy_warnings(rows) -> list[str]:
    return [f"inconclusive: {r.label} lost {100 * -r.accuracy.delta:.2f} mAP points, but on {r.accuracy.images} "
            f"images the interval still reaches no change (upper bound {100 * r.accuracy.delta_high:+.2f}); "
            f"evaluate on more images" for r in rows if r.accuracy is not None and r.accuracy.decision == "inconclusive"]


def accuracy_method(max_map_drop: float | None, confidence: float, map_resamples: int) -> str:
    if max_map_drop is None:
        return ""
    return (f" Accuracy: delta = mAP(current) - mAP(baseline) on the same images with {100 * confidence:g}% "
            f"one-sided bounds from a paired bootstrap over images ({map_resamples} resamples); a row regresses "
            f"when delta < -{max_map_drop:g} and the upper bound < 0.")


def decide(ratio: float, ci_low: float, ci_high: float, max_regression: float) -> str:
    """The per-row decision rule: the point estimate against the tolerance, guarded by the lower bound."""
    if ratio > 1 + max_regression:
        return "regression" if ci_low > 1 else "inconclusive"
    if ratio < 1 - max_regression and ci_high < 1:
        return "improvement"
    return "pass"


def check_gate_params(max_regression: float, confidence: float, resamples: int, relative) -> None:
    """The settings both gate modes share: tolerance, confidence, latency resamples, relative mode."""
    if not (isinstance(max_regression, (int, float)) and 0 <= max_regression < 1):
        raise XpruneError(f"max_regression must be in [0, 1), got {max_regression}")
    if not (isinstance(confidence, (int, float)) and 0.5 < confidence < 1):
        raise XpruneError(f"confidence must be in (0.5, 1), got {confidence}")
    if not isinstance(resamples, int) or resamples < 100:
        raise XpruneError(f"resamples must be an integer >= 100, got {resamples}")
    if relative not in (True, False, "auto"):
        raise XpruneError(f"relative must be true, false or 'auto', got {relative!r}")


def _index(doc: dict, side: str) -> dict[tuple, dict]:
    out: dict[tuple, dict] = {}
    for row in doc["rows"]:
        key = row_key(row)
        if key in out:
            raise XpruneError(f"{side} has two rows for {describe_key(key)}; the gate cannot tell which to compare")
        out[key] = row
    return out


def _judge_row(key: tuple, b: dict, c: dict, relative: Relative, max_regression: float, confidence: float,
               resamples: int, rng: np.random.Generator) -> RowVerdict:
    label = describe_key(key)
    has_ref = b.get("reference_samples_ms") is not None and c.get("reference_samples_ms") is not None
    if relative is True and not has_ref:
        side = "baseline" if b.get("reference_samples_ms") is None else "current"
        raise XpruneError(f"relative mode needs reference_samples_ms in both files, but {side} has none for "
                          f"{label}; record both with --reference-workload or use absolute mode")
    use_rel = has_ref and relative is not False
    b_ms, c_ms = np.asarray(b["samples_ms"], float), np.asarray(c["samples_ms"], float)
    if min(len(b_ms), len(c_ms)) < MIN_SAMPLES:
        raise XpruneError(f"{label}: {min(len(b_ms), len(c_ms))} samples is too few to judge "
                          f"(need >= {MIN_SAMPLES} in each file)")
    ref_spread = ref_ratio = None
    if has_ref:
        ref_spread = max(spread(b["reference_samples_ms"]), spread(c["reference_samples_ms"]))
    if use_rel:
        b_ref, c_ref = np.asarray(b["reference_samples_ms"], float), np.asarray(c["reference_samples_ms"], float)
        b_med, c_med, ratio, lo, hi = median_ratio(b_ms / b_ref, c_ms / c_ref, resamples, confidence, rng)
        ref_ratio = float(np.median(c_ref) / np.median(b_ref))
    else:
        b_med, c_med, ratio, lo, hi = median_ratio(b_ms, c_ms, resamples, confidence, rng)
    return RowVerdict(
        key=dict(zip(ROW_KEY, (list(v) if isinstance(v, tuple) else v for v in key))), label=label,
        mode="relative" if use_rel else "absolute", baseline_median=b_med, current_median=c_med, ratio=ratio,
        ci_low=lo, ci_high=hi, n_baseline=len(b_ms), n_current=len(c_ms),
        decision=decide(ratio, lo, hi, max_regression), baseline_median_ms=float(np.median(b_ms)),
        current_median_ms=float(np.median(c_ms)), reference_ratio=ref_ratio, reference_spread=ref_spread)


def _check_same_reference(baseline_doc: dict, current_doc: dict) -> None:
    wb, wc = reference_workload(baseline_doc), reference_workload(current_doc)
    if workloads_differ(wb, wc):
        raise XpruneError(f"baseline and current timed different reference workloads ({workload_name(wb)} vs "
                          f"{workload_name(wc)}); their relative latencies do not compare")


def gate(baseline_doc: dict, current_doc: dict, max_regression: float = 0.05, confidence: float = 0.95,
         resamples: int = 2000, seed: int = 0, relative: Relative = "auto", max_map_drop: float | None = None,
         map_resamples: int = 1000) -> Verdict:
    """Compare two benchmark results documents (see `xprune.bench.results`).

    relative: "auto" (default) compares model/reference per sample for every row pair where both rows carry
    `reference_samples_ms` and absolute milliseconds elsewhere; True requires reference samples on every pair
    (XpruneError otherwise); False always compares milliseconds. With `max_map_drop`, every pair must also carry
    its per-image evaluation (`xprune bench --data`), and a row whose mAP fell by more than that regresses too.
    Deterministic for a given seed."""
    check_gate_params(max_regression, confidence, resamples, relative)
    check_accuracy_params(max_map_drop, map_resamples)
    validate(baseline_doc, "baseline")
    validate(current_doc, "current")
    base_rows, cur_rows = _index(baseline_doc, "baseline"), _index(current_doc, "current")
    common = [k for k in base_rows if k in cur_rows]
    if not common:
        raise XpruneError(f"baseline and current have no rows in common (baseline: "
                          f"{describe_key(next(iter(base_rows)))}; current: {describe_key(next(iter(cur_rows)))}); "
                          f"rows pair by {', '.join(ROW_KEY)}")
    rows = [_judge_row(key, base_rows[key], cur_rows[key], relative, max_regression, confidence, resamples,
                       np.random.default_rng([seed, i])) for i, key in enumerate(common)]
    if any(r.mode == "relative" for r in rows):
        _check_same_reference(baseline_doc, current_doc)
    if max_map_drop is not None:
        for r, key in zip(rows, common):
            r.accuracy = judge_accuracy(base_rows[key], cur_rows[key], r.label, max_map_drop, confidence,
                                        map_resamples, seed)

    stat = {"absolute": "latency in ms", "relative": "per-sample latency / reference-workload latency"}
    method = (f"ratio = median(current) / median(baseline) of "
              f"{' or '.join(stat[m] for m in sorted({r.mode for r in rows}))}; "
              f"{100 * confidence:g}% one-sided percentile-bootstrap bounds ({resamples} resamples per side, "
              f"seed {seed}); a row regresses when ratio > {1 + max_regression:g} and the lower bound > 1."
              + accuracy_method(max_map_drop, confidence, map_resamples))
    return Verdict(rows=rows, decision="regression" if any(r.regressed for r in rows) else "pass",
                   method=method, max_regression=float(max_regression), confidence=float(confidence),
                   resamples=resamples, seed=seed,
                   unmatched_baseline=[describe_key(k) for k in base_rows if k not in cur_rows],
                   unmatched_current=[describe_key(k) for k in cur_rows if k not in base_rows],
                   max_map_drop=None if max_map_drop is None else float(max_map_drop))
