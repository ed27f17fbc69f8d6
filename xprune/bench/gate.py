"""The latency gate: does the current results file show a latency regression against the baseline?

Method
------
Rows of the two files are paired by `row_key` (model, variant, method, rate, engine, device, precision, input
shape). For each pair the statistic is

    ratio = median(current) / median(baseline)

of the raw samples: milliseconds in *absolute* mode; in *relative* mode (both rows carry `reference_samples_ms`, a
fixed workload timed right after each model sample, see `xprune.bench.drift`) the per-sample relative latency
model / reference, which cancels changes of machine speed that hit model and reference alike - clock drift during
a run, memory bandwidth shared with a neighbour, a baseline recorded on another machine of the same type.

Its uncertainty is a percentile bootstrap: each side's samples (in relative mode, its (model, reference) pairs) are
resampled independently with replacement `resamples` times from a seeded numpy generator, giving `resamples`
ratios. `ci_low` / `ci_high` are their (1 - confidence) and confidence quantiles: the one-sided lower and upper
bounds at `confidence` (together a two-sided interval at 2 * confidence - 1, 90 % for the default 0.95).

Decision rule (per row)
-----------------------
    REGRESSION  when  ratio > 1 + max_regression  AND  ci_low > 1
    improvement when  ratio < 1 - max_regression  AND  ci_high < 1      (informational; passes)
    inconclusive when ratio > 1 + max_regression but ci_low <= 1        (passes, with a warning: rerun)
    pass        otherwise

The file fails (exit 1) when any row is a REGRESSION.

Why this rule and not a pure confidence-interval test: the bootstrap sees only the noise *within* one run. The
noise that makes CI gates cry wolf is *between* runs - a different runner, CPU frequency, a neighbour's load, the
memory layout of a new process - and it shifts every sample of a run together, so no amount of samples averages it
away and no within-run interval covers it.

* "ci_low > 1" alone (significantly slower at all) fires on any between-run shift once runs are long enough to make
  it significant: an A/A pair 2 % apart with tight samples is a false alarm.
* "ci_low > 1 + max_regression" (confidently beyond the tolerance) fails the other way: a true 10 % slowdown is
  caught only when the ratio lands above 1.05 by more than the CI half-width, and the median of 30 samples on a
  noisy CPU easily has a half-width of 3-5 %, so detection falls to a coin toss.
* The point estimate against the tolerance is the unbiased call. If between-run noise in log(ratio) is roughly
  symmetric with spread s, an A/A pair false-alarms with P(noise > m) and a true slowdown of 2m is missed with
  P(noise < -m), which are the same number: max_regression = 0.05 gives <= 5 % false alarms *and* >= 95 %
  detection of a 10 % slowdown exactly when s <= 0.05 / 1.645 = 3.0 %, and 1 % / 99 % when s <= 2.1 %. No rule
  can do better on both with one pair of runs; moving the threshold only trades one error for the other.
* The "ci_low > 1" guard costs almost nothing at that point (a ratio above 1.05 whose interval still reaches 1
  means the run itself is too noisy to tell 5 % apart) and stops single noisy runs from failing a build; such rows
  are reported "inconclusive" so they are not silently green.

Limits. Relative mode cancels changes of *speed* (clock, a slower machine of the same kind, memory bandwidth shared
with a neighbour). It does not cancel *time-sharing*: when other work needs the same cores, the scheduler takes
whole slices of a few ms, which land on some samples and miss others depending on their length, so model and
reference are no longer slowed alike. Such runs are flagged ("contended": the reference's
p90 above 1.25x its median) but not repaired; the remedy is a runner with idle cores, or measuring baseline and
candidate interleaved in one process.

`benchmarks/gate_quality.py` measures what this gives on a real machine (A/A false alarms, detection of an injected
~10 % slowdown, for this rule and the alternatives above) and writes `benchmarks/results/gate_quality.md`.

Exit codes (see `run_gate`): 0 pass, 1 regression, 2 unusable input (any XpruneError: a file that is missing,
malformed or empty, no rows in common, relative mode forced without reference samples, different reference
workloads, too few samples).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from xprune.bench.results import ROW_KEY, describe_key, read_results, row_key, validate
from xprune.errors import XpruneError
from xprune.files import write_json

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
    decision: str              # "regression", "inconclusive", "pass", "improvement"
    baseline_median_ms: float  # the model's own medians, for the reader, in either mode
    current_median_ms: float
    reference_ratio: float | None = None  # relative mode: how much slower the reference ran in current
    reference_spread: float | None = None  # max over both files of the reference samples' p90 / median


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

    @property
    def exit_code(self) -> int:
        return 1 if self.decision == "regression" else 0

    @property
    def warnings(self) -> list[str]:
        out = [f"inconclusive: {r.label} is {100 * (r.ratio - 1):+.1f}% but the run is too noisy to tell "
               f"(CI lower bound {r.ci_low:.3f} <= 1); rerun with more samples" for r in self.rows
               if r.decision == "inconclusive"]
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
        head = ("## Latency gate: :x: REGRESSION" if self.decision == "regression"
                else "## Latency gate: :white_check_mark: PASS")
        n_reg = sum(r.decision == "regression" for r in self.rows)
        lines = [head, "",
                 f"{len(self.rows)} row(s) compared, {n_reg} regression(s); tolerance +{100 * self.max_regression:g}%.",
                 "", f"| row | mode | baseline | current | ratio | {100 * self.confidence:g}% bounds | n (b/c) | decision |",
                 "|---|---|---:|---:|---:|---|---|---|"]
        shown = sorted(self.rows, key=lambda r: (r.decision != "regression", r.decision != "inconclusive",
                                                 -r.ratio))[:max_rows]
        for r in shown:
            unit = "" if r.mode == "relative" else " ms"
            dec = f"**{r.decision.upper()}**" if r.decision == "regression" else r.decision
            lines.append(f"| {r.label} | {r.mode} | {r.baseline_median:.4g}{unit} | {r.current_median:.4g}{unit} "
                         f"| {r.ratio:.3f} | {r.ci_low:.3f} - {r.ci_high:.3f} | {r.n_baseline}/{r.n_current} "
                         f"| {dec} |")
        if len(self.rows) > max_rows:
            lines.append(f"| ... {len(self.rows) - max_rows} more row(s) in the JSON verdict | | | | | | | |")
        warnings = self.warnings
        if warnings:
            lines += [""] + [f"- {w}" for w in warnings[:10]]
            if len(warnings) > 10:
                lines.append(f"- ... {len(warnings) - 10} more")
        lines += ["", f"<sub>{self.method}</sub>", ""]
        return "\n".join(lines)


def _check_params(max_regression: float, confidence: float, resamples: int, relative) -> None:
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


def _reference_workload(doc: dict):
    protocol = doc.get("protocol")
    return protocol.get("reference_workload") if isinstance(protocol, dict) else None


def _bootstrap_medians(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    n = len(values)
    step = max(1, 4_000_000 // n)  # bounded memory for long runs (a 0.1 ms model timed for 3 s has 30k samples)
    out = np.empty(resamples)
    for start in range(0, resamples, step):
        k = min(step, resamples - start)
        out[start:start + k] = np.median(values[rng.integers(0, n, size=(k, n))], axis=1)
    return out


def _compare(base: np.ndarray, cur: np.ndarray, resamples: int, confidence: float,
             rng: np.random.Generator) -> tuple[float, float, float, float, float]:
    b_med, c_med = float(np.median(base)), float(np.median(cur))
    ratios = _bootstrap_medians(cur, resamples, rng) / _bootstrap_medians(base, resamples, rng)
    lo, hi = np.quantile(ratios, [1 - confidence, confidence])
    return b_med, c_med, c_med / b_med, float(lo), float(hi)


def spread(samples) -> float:
    """p90 / median: 1.0-1.1 for a quiet machine, well above for one shared with other work."""
    p50, p90 = np.quantile(np.asarray(samples, float), [0.5, 0.9])
    return float(p90 / p50)


def decide(ratio: float, ci_low: float, ci_high: float, max_regression: float) -> str:
    """The per-row decision rule (see the module docstring)."""
    if ratio > 1 + max_regression:
        return "regression" if ci_low > 1 else "inconclusive"
    if ratio < 1 - max_regression and ci_high < 1:
        return "improvement"
    return "pass"


def gate(baseline_doc: dict, current_doc: dict, max_regression: float = 0.05, confidence: float = 0.95,
         resamples: int = 2000, seed: int = 0, relative: Relative = "auto") -> Verdict:
    """Compare two benchmark results documents (see `xprune.bench.results`).

    relative: "auto" (default) compares model/reference per sample for every row pair where both rows carry
    `reference_samples_ms` and absolute milliseconds elsewhere; True requires reference samples on every pair
    (XpruneError otherwise); False always compares milliseconds. Deterministic for a given seed."""
    _check_params(max_regression, confidence, resamples, relative)
    validate(baseline_doc, "baseline")
    validate(current_doc, "current")
    base_rows, cur_rows = _index(baseline_doc, "baseline"), _index(current_doc, "current")
    common = [k for k in base_rows if k in cur_rows]
    if not common:
        raise XpruneError(f"baseline and current have no rows in common (baseline: "
                          f"{describe_key(next(iter(base_rows)))}; current: {describe_key(next(iter(cur_rows)))}); "
                          f"rows pair by {', '.join(ROW_KEY)}")

    rows: list[RowVerdict] = []
    for i, key in enumerate(common):
        b, c = base_rows[key], cur_rows[key]
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
        rng = np.random.default_rng([seed, i])
        ref_spread = None
        if has_ref:
            ref_spread = max(spread(b["reference_samples_ms"]), spread(c["reference_samples_ms"]))
        if use_rel:
            b_ref, c_ref = np.asarray(b["reference_samples_ms"], float), np.asarray(c["reference_samples_ms"], float)
            b_med, c_med, ratio, lo, hi = _compare(b_ms / b_ref, c_ms / c_ref, resamples, confidence, rng)
            ref_ratio = float(np.median(c_ref) / np.median(b_ref))
        else:
            b_med, c_med, ratio, lo, hi = _compare(b_ms, c_ms, resamples, confidence, rng)
            ref_ratio = None
        rows.append(RowVerdict(
            key=dict(zip(ROW_KEY, (list(v) if isinstance(v, tuple) else v for v in key))), label=label,
            mode="relative" if use_rel else "absolute", baseline_median=b_med, current_median=c_med, ratio=ratio,
            ci_low=lo, ci_high=hi, n_baseline=len(b_ms), n_current=len(c_ms),
            decision=decide(ratio, lo, hi, max_regression), baseline_median_ms=float(np.median(b_ms)),
            current_median_ms=float(np.median(c_ms)), reference_ratio=ref_ratio, reference_spread=ref_spread))

    if any(r.mode == "relative" for r in rows):
        wb, wc = _reference_workload(baseline_doc), _reference_workload(current_doc)
        if wb is not None and wc is not None and _strip_threads(wb) != _strip_threads(wc):
            raise XpruneError(f"baseline and current timed different reference workloads ({_name(wb)} vs "
                              f"{_name(wc)}); their relative latencies do not compare")

    modes = sorted({r.mode for r in rows})
    stat = {"absolute": "latency in ms", "relative": "per-sample latency / reference-workload latency"}
    method = (f"ratio = median(current) / median(baseline) of {' or '.join(stat[m] for m in modes)}; "
              f"{100 * confidence:g}% one-sided percentile-bootstrap bounds ({resamples} resamples per side, "
              f"seed {seed}); a row regresses when ratio > {1 + max_regression:g} and the lower bound > 1.")
    return Verdict(rows=rows, decision="regression" if any(r.decision == "regression" for r in rows) else "pass",
                   method=method, max_regression=float(max_regression), confidence=float(confidence),
                   resamples=resamples, seed=seed,
                   unmatched_baseline=[describe_key(k) for k in base_rows if k not in cur_rows],
                   unmatched_current=[describe_key(k) for k in cur_rows if k not in base_rows])


def _strip_threads(desc) -> object:
    # thread count follows the model's setting and is part of the model's row, not of the workload's identity
    return {k: v for k, v in desc.items() if k != "threads"} if isinstance(desc, dict) else desc


def _name(desc) -> str:
    return f"{desc.get('name')} v{desc.get('version')}" if isinstance(desc, dict) else str(desc)


def parse_relative(value: str | bool) -> Relative:
    """'auto' | 'on'/'true'/'yes' | 'off'/'false'/'no' (as from a CLI flag) -> gate's `relative`."""
    if isinstance(value, bool) or value == "auto":
        return value
    v = str(value).strip().lower()
    if v in ("auto",):
        return "auto"
    if v in ("1", "on", "true", "yes", "relative"):
        return True
    if v in ("0", "off", "false", "no", "absolute"):
        return False
    raise XpruneError(f"--relative must be auto, on or off, got '{value}'")


def append_summary(path: str | Path, markdown: str) -> None:
    """Append to a step summary file. $GITHUB_STEP_SUMMARY is appended to by every step of a job, so it is not
    replaced atomically like the other outputs."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(markdown if markdown.endswith("\n") else markdown + "\n")
    except OSError as e:
        raise XpruneError(f"cannot write the summary to {path}: {e.strerror or e}") from None


def split_interleaved(doc: dict, where: str = "results file") -> tuple[dict, dict]:
    """A run of `xprune bench CANDIDATE --baseline BASELINE --interleave` as (baseline doc, current doc): the
    candidate row takes the baseline row's key so the two are paired, whatever their files are called."""
    base = [r for r in doc["rows"] if r.get("role") == "baseline"]
    cands = [r for r in doc["rows"] if r.get("role") == "candidate"]
    if len(base) != 1 or len(cands) != 1:
        raise XpruneError(f"{where} is not one baseline and one candidate measured together "
                          "(record it with `xprune bench CANDIDATE --baseline BASELINE --interleave`)")
    if not doc.get("protocol", {}).get("interleaved"):
        raise XpruneError(f"{where} was not measured interleaved")
    paired = {**cands[0], **{k: base[0].get(k) for k in ROW_KEY}}
    return {**doc, "rows": base}, {**doc, "rows": [paired]}


def run_gate(baseline: str | Path | None, current: str | Path | None, *, interleaved: str | Path | None = None, max_regression: float = 0.05, confidence: float = 0.95,
             resamples: int = 2000, seed: int = 0, relative: Relative | str = "auto",
             summary: str | Path | None = None, verdict_path: str | Path | None = None,
             log: Callable[[str], None] = print) -> int:
    """`xprune gate`: read both files, judge, print one line per row and the decision, append the markdown to
    `summary`, write the JSON verdict atomically to `verdict_path`; returns the exit code (0 pass, 1 regression).
    Unusable input raises XpruneError (exit 2 in the CLI)."""
    if interleaved is not None:
        base_doc, current_doc = split_interleaved(read_results(interleaved), str(interleaved))
    elif baseline is None or current is None:
        raise XpruneError("give --baseline and --current files, or one --interleaved run")
    else:
        base_doc, current_doc = read_results(baseline), read_results(current)
    verdict = gate(base_doc, current_doc, max_regression=max_regression,
                   confidence=confidence, resamples=resamples, seed=seed, relative=parse_relative(relative))
    for r in verdict.rows:
        log(f"{r.decision.upper():<12} {r.ratio:6.3f}x  [{r.ci_low:.3f}, {r.ci_high:.3f}]  {r.mode:<8}  {r.label}")
    for w in verdict.warnings:
        log(f"warning: {w}")
    log(f"gate: {verdict.decision.upper()} ({len(verdict.rows)} row(s), tolerance +{100 * max_regression:g}%)")
    if verdict_path:
        write_json(verdict_path, verdict.as_dict())
    if summary:
        append_summary(summary, verdict.to_markdown())
    return verdict.exit_code


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a rate k/n (for reporting false-alarm and detection rates)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))
