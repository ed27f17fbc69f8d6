"""History mode: judge one run against the recorded runs of the baseline on the same runner type.

One pair of separate runs cannot tell a slowdown from the between-run scatter of a noisy machine (that scatter
shifts every sample of a run together; see docs/ci-gate.md). A history of N runs of the baseline measures that
scatter directly: each run contributes one number (the log of its median, or of its median model/reference
ratio in relative mode), the centre is their median and the spread their normal-consistent MAD. The threshold
above the centre is set so that an A/A run (the baseline itself, measured again) fails with probability at most
`false_alarm`, two ways:

- "rank" (N + 1 >= 1 / false_alarm, so 19 runs or more at 5 %): the current run fails when it lies above the
  ceil((N + 1)(1 - false_alarm))-th smallest history run. That promise needs no assumption on the shape of the
  scatter, only that the runs are exchangeable (no drift between them). Runs on a shared CPU can scatter in two
  clusters (benchmarks/results/gate_quality.md), where a normal model underestimates the tail.
- "normal" (shorter histories): `history_factor(N, false_alarm) * spread`, exact when runs scatter normally.

Either way the row also has to lie more than `max_regression` above the centre (a tolerated slowdown never
fails).

A history is a folder of record files, one per run (`run-<UTC time>-<hash>.json`), each written atomically by
`record_run`; concurrent recorders cannot corrupt each other, and recording the same results file twice is a
no-op (a duplicated run would shrink the spread).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from xprune.bench.gate.accuracy import AccuracyVerdict, check_accuracy_params, judge_accuracy
from xprune.bench.gate.decision import CONTENDED_SPREAD, Relative, accuracy_method, accuracy_warnings, check_gate_params
from xprune.bench.gate.statistics import (MIN_LOG_SPREAD, detectable_log_shift, history_factor, history_rank,
                                          robust_center_spread, spread)
from xprune.bench.gate.workload import reference_workload, workload_name, workloads_differ
from xprune.bench.results import ROW_KEY, describe_key, read_results, row_key, validate
from xprune.errors import XpruneError
from xprune.files import display_path, read_json, write_json

HISTORY_FORMAT = "xprune-gate-history-1"
MIN_HISTORY = 5
DEFAULT_WINDOW = 20
DEFAULT_FALSE_ALARM = 0.05
DETECTION_POWER = 0.8  # "the smallest slowdown it can detect": caught by 80 % of current runs


@dataclass
class HistoryRecord:
    path: Path
    recorded_at: str
    sha256: str
    doc: dict


def _keys(doc: dict) -> list[tuple]:
    return sorted((row_key(r) for r in doc["rows"]), key=repr)


def read_history(history_dir: str | Path, missing_ok: bool = False) -> list[HistoryRecord]:
    """The records of a history folder, oldest first. Every `*.json` in it must be a history record: anything
    else (a results file copied in by hand, a truncated file) is refused rather than silently skipped."""
    folder = Path(history_dir)
    if not folder.is_dir():
        if missing_ok and not folder.exists():
            return []
        raise XpruneError(f"history folder not found: {folder}")
    records = []
    for path in sorted(folder.glob("*.json")):
        d = read_json(path, "history record")
        if not isinstance(d, dict) or d.get("format") != HISTORY_FORMAT or not isinstance(d.get("run"), dict) \
                or not isinstance(d.get("recorded_at"), str) or not isinstance(d.get("sha256"), str):
            raise XpruneError(f"{path} is not an xprune history record (record runs with `xprune gate --record "
                              f"{folder} RUN.json`; keep other files out of the history folder)")
        validate(d["run"], str(path))
        records.append(HistoryRecord(path, d["recorded_at"], d["sha256"], d["run"]))
    records.sort(key=lambda r: (r.recorded_at, r.path.name))
    return records


def _check_plain_run(doc: dict, where: str) -> None:
    if any(r.get("role") for r in doc["rows"]):
        raise XpruneError(f"{where} is an interleaved baseline/candidate pair; a history holds plain runs of the "
                          f"baseline (`xprune bench BASELINE.onnx --reference-workload --out run.json`)")


def record_run(history_dir: str | Path, run_path: str | Path,
               now: _dt.datetime | None = None) -> tuple[Path, bool, int]:
    """Append a results file to a history: (record path, whether it was new, runs in the history now).

    Refused with one line: a file that is not a valid results file, an interleaved pair, a corrupt record in
    the folder, or a run of other rows (another model, engine, device, precision, input shape or thread count)
    or another reference workload than the runs already there."""
    run_path, folder = Path(run_path), Path(history_dir)
    doc = read_results(run_path)
    _check_plain_run(doc, str(run_path))
    sha = hashlib.sha256(run_path.read_bytes()).hexdigest()
    records = read_history(folder, missing_ok=True)
    for r in records:
        if r.sha256 == sha:
            return r.path, False, len(records)
    if records:
        last = records[-1].doc
        if _keys(last) != _keys(doc):
            raise XpruneError(f"{run_path} measures {'; '.join(describe_key(k) for k in _keys(doc))}, but the "
                              f"history in {folder} holds runs of "
                              f"{'; '.join(describe_key(k) for k in _keys(last))}: keep one history per model and "
                              f"runner type")
        wl, wn = reference_workload(last), reference_workload(doc)
        if workloads_differ(wl, wn):
            raise XpruneError(f"{run_path} timed reference workload {workload_name(wn)}, the history in {folder} "
                              f"{workload_name(wl)}: start a new history")
    stamp = (now or _dt.datetime.now(_dt.timezone.utc)).astimezone(_dt.timezone.utc)
    target = folder / f"run-{stamp.strftime('%Y%m%dT%H%M%S%fZ')}-{sha[:12]}.json"
    write_json(target, {"format": HISTORY_FORMAT, "recorded_at": stamp.isoformat(timespec="microseconds"),
                        "source": display_path(run_path), "sha256": sha, "run": doc})
    return target, True, len(records) + 1


@dataclass
class HistoryRowVerdict:
    key: dict
    label: str
    mode: str                  # "absolute" or "relative"
    runs: int                  # history runs judged against (the last `window`)
    center: float              # median over runs of each run's median (ms, or model/reference in relative mode)
    current: float             # the current run's median of the same statistic
    ratio: float               # current / center
    spread: float              # between-run spread: normal-consistent MAD of log(run median)
    rule: str                  # "rank" (distribution-free, N + 1 >= 1 / false_alarm) or "normal" (fewer runs)
    factor: float              # the threshold before the tolerance floor, in spreads above the centre
    threshold: float           # ratio above which the row regresses: max(exp(factor * spread), 1 + max_regression)
    detectable: float          # ratio a current run exceeds the threshold at with probability DETECTION_POWER
    decision: str              # "regression", "pass", "improvement"
    center_ms: float           # median over runs of each run's median latency, for the reader
    current_ms: float
    models: int = 1            # distinct model files (source_sha256) among the runs
    reference_spread: float | None = None  # the current run's reference p90 / median
    accuracy: AccuracyVerdict | None = None

    @property
    def regressed(self) -> bool:
        return self.decision == "regression" or (self.accuracy is not None and self.accuracy.decision == "regression")


@dataclass
class HistoryVerdict:
    rows: list[HistoryRowVerdict]
    decision: str
    method: str
    max_regression: float
    false_alarm: float
    window: int
    min_history: int
    history_runs: int          # records in the history (all rows)
    confidence: float
    max_map_drop: float | None = None
    unmatched_current: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.decision == "regression" else 0

    @property
    def warnings(self) -> list[str]:
        out = [f"contended: {r.label}: the reference workload's p90 is {r.reference_spread:.2f}x its median in the "
               f"current run, so the machine was busy with other work while measuring" for r in self.rows
               if r.reference_spread is not None and r.reference_spread > CONTENDED_SPREAD]
        out += [f"{r.label}: the history holds runs of {r.models} different model files; its spread includes those "
                f"changes (start a new history when the baseline changes on purpose)" for r in self.rows if r.models > 1]
        out += accuracy_warnings(self.rows)
        out += [f"not in the history (not judged): {k}" for k in self.unmatched_current]
        return out + self.notes

    def as_dict(self) -> dict:
        d = asdict(self)
        d["exit_code"] = self.exit_code
        d["warnings"] = self.warnings
        return d

    def to_markdown(self, max_rows: int = 20) -> str:
        from xprune.bench.gate.render import history_markdown
        return history_markdown(self, max_rows)


def _statistic(row: dict, relative: bool) -> float:
    ms = np.asarray(row["samples_ms"], float)
    if relative:
        return float(np.median(ms / np.asarray(row["reference_samples_ms"], float)))
    return float(np.median(ms))


def _check_history_params(false_alarm: float, window: int, min_history: int) -> None:
    if not (isinstance(false_alarm, (int, float)) and 0.001 <= false_alarm <= 0.5):
        raise XpruneError(f"the A/A false-alarm rate must be in [0.001, 0.5], got {false_alarm}")
    if not isinstance(min_history, int) or min_history < MIN_HISTORY:
        raise XpruneError(f"history mode needs at least {MIN_HISTORY} runs to estimate their spread; "
                          f"--min-history {min_history} is too few")
    if not isinstance(window, int) or not min_history <= window <= 200:
        raise XpruneError(f"the history window must be between --min-history ({min_history}) and 200, got {window}")


def history_gate(history_docs: list[dict], current_doc: dict, max_regression: float = 0.05,
                 false_alarm: float = DEFAULT_FALSE_ALARM, window: int = DEFAULT_WINDOW,
                 min_history: int = MIN_HISTORY, relative: Relative = "auto", max_map_drop: float | None = None,
                 confidence: float = 0.95, map_resamples: int = 1000, seed: int = 0,
                 where: str = "the history") -> HistoryVerdict:
    """Judge `current_doc` against the runs in `history_docs` (results documents, oldest first); see the module
    docstring. Unusable input (too few runs, runs of another model, missing reference or mAP data) raises
    XpruneError. With `max_map_drop`, each row's mAP is compared with the most recent history run's."""
    check_gate_params(max_regression, confidence, 2000, relative)
    _check_history_params(false_alarm, window, min_history)
    check_accuracy_params(max_map_drop, map_resamples)
    validate(current_doc, "current")
    _check_plain_run(current_doc, "current")
    if not history_docs:
        raise XpruneError(f"{where} has no recorded runs; record the baseline with `xprune gate --record DIR run.json`")
    for i, d in enumerate(history_docs):
        validate(d, f"{where}, run {i + 1}")
    by_key: dict[tuple, list[tuple[dict, dict]]] = {}
    for d in history_docs:
        for r in d["rows"]:
            by_key.setdefault(row_key(r), []).append((d, r))
    cur_rows = {row_key(r): r for r in current_doc["rows"]}
    common = [k for k in cur_rows if k in by_key]
    if not common:
        raise XpruneError(f"the current run measures {describe_key(next(iter(cur_rows)))}, but {where} holds runs "
                          f"of {describe_key(next(iter(by_key)))} (another model or runner); rows pair by "
                          f"{', '.join(ROW_KEY)}")
    rows = []
    for i, key in enumerate(common):
        label = describe_key(key)
        used = by_key[key][-window:]
        if len(used) < min_history:
            raise XpruneError(f"{where} has {len(by_key[key])} run(s) of {label}; history mode needs at least "
                              f"{min_history} (record more with `xprune gate --record DIR run.json`)")
        cur = cur_rows[key]
        has_ref = cur.get("reference_samples_ms") is not None and all(
            r.get("reference_samples_ms") is not None for _, r in used)
        if relative is True and not has_ref:
            raise XpruneError(f"relative mode needs reference_samples_ms in the current run and every history run "
                              f"of {label}; record them with --reference-workload or use absolute mode")
        use_rel = has_ref and relative is not False
        if use_rel:
            wc = reference_workload(current_doc)
            for d, _ in used:
                wh = reference_workload(d)
                if workloads_differ(wc, wh):
                    raise XpruneError(f"the current run and {where} timed different reference workloads "
                                      f"({workload_name(wc)} vs {workload_name(wh)})")
        stats = [_statistic(r, use_rel) for _, r in used]
        logs = [math.log(v) for v in stats]
        center, sd = robust_center_spread(logs)
        rank = history_rank(len(used), float(false_alarm))
        if rank is not None:
            # floored like the spread: tied medians would otherwise fail any run above them
            rule, factor = "rank", max(sorted(logs)[rank - 1] - center, MIN_LOG_SPREAD) / sd
        else:
            rule, factor = "normal", history_factor(len(used), float(false_alarm))
        log_threshold = max(factor * sd, math.log1p(max_regression))
        current = _statistic(cur, use_rel)
        d_log = math.log(current) - center
        decision = "regression" if d_log > log_threshold else "improvement" if d_log < -log_threshold else "pass"
        row = HistoryRowVerdict(
            key=dict(zip(ROW_KEY, (list(v) if isinstance(v, tuple) else v for v in key))), label=label,
            mode="relative" if use_rel else "absolute", runs=len(used), center=math.exp(center), current=current,
            ratio=math.exp(d_log), spread=sd, rule=rule, factor=factor, threshold=math.exp(log_threshold),
            detectable=math.exp(detectable_log_shift(log_threshold, sd, len(used), DETECTION_POWER)),
            decision=decision, center_ms=float(np.median([np.median(r["samples_ms"]) for _, r in used])),
            current_ms=float(np.median(cur["samples_ms"])),
            models=len({r.get("source_sha256") for _, r in used}),
            reference_spread=spread(cur["reference_samples_ms"]) if cur.get("reference_samples_ms") else None)
        if max_map_drop is not None:
            row.accuracy = judge_accuracy(used[-1][1], cur, label, max_map_drop, confidence, map_resamples, seed + i)
        rows.append(row)
    notes = []
    cpu_h = history_docs[-1].get("environment", {}).get("cpu")
    cpu_c = current_doc.get("environment", {}).get("cpu")
    if cpu_h and cpu_c and cpu_h != cpu_c:
        notes.append(f"the current run's CPU ({cpu_c}) is not the history's ({cpu_h}): record the history on the "
                     f"runner type the gate runs on")
    method = (f"each run's median ({'per-sample model/reference latency' if any(r.mode == 'relative' for r in rows) else 'latency in ms'}); "
              f"centre = median and spread = normal-consistent MAD of log(run median) over the last <= {window} "
              f"runs; a row regresses when current / centre exceeds max(threshold, {1 + max_regression:g}), the "
              f"threshold set so that a run of the baseline itself fails with probability <= {false_alarm:g}: with "
              f"N + 1 >= {1 / false_alarm:g} runs the ceil((N + 1)(1 - {false_alarm:g}))-th smallest history run "
              f"(rule 'rank', any scatter of exchangeable runs), with fewer exp(k x spread) (rule 'normal', k "
              f"exact when runs scatter normally); 'detects' is the slowdown caught by {100 * DETECTION_POWER:g}% "
              f"of runs at that spread."
              + accuracy_method(max_map_drop, confidence, map_resamples).replace("mAP(baseline)",
                                                                                 "mAP(latest history run)"))
    return HistoryVerdict(rows=rows, decision="regression" if any(r.regressed for r in rows) else "pass",
                          method=method, max_regression=float(max_regression), false_alarm=float(false_alarm),
                          window=window, min_history=min_history, history_runs=len(history_docs),
                          confidence=float(confidence),
                          max_map_drop=None if max_map_drop is None else float(max_map_drop),
                          unmatched_current=[describe_key(k) for k in cur_rows if k not in by_key], notes=notes)
