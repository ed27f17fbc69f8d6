"""`xprune gate` end to end: read the results files, judge, print, write the verdict and the step summary."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from xprune.bench.gate.decision import Relative, Verdict, gate
from xprune.bench.gate.history import (DEFAULT_FALSE_ALARM, DEFAULT_WINDOW, MIN_HISTORY, HistoryVerdict,
                                       history_gate, read_history, record_run)
from xprune.bench.gate.render import append_summary, history_lines, verdict_lines
from xprune.bench.results import ROW_KEY, read_results
from xprune.errors import XpruneError
from xprune.files import write_json


def parse_relative(value: str | bool) -> Relative:
    """'auto' | 'on'/'true'/'yes' | 'off'/'false'/'no' (as from a CLI flag) -> gate's `relative`."""
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v == "auto":
        return "auto"
    if v in ("1", "on", "true", "yes", "relative"):
        return True
    if v in ("0", "off", "false", "no", "absolute"):
        return False
    raise XpruneError(f"--relative must be auto, on or off, got '{value}'")


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


def run_gate(baseline: str | Path | None, current: str | Path | None, *, interleaved: str | Path | None = None,
             history: str | Path | None = None, max_regression: float = 0.05, confidence: float = 0.95,
             resamples: int = 2000, seed: int = 0, relative: Relative | str = "auto",
             max_map_drop: float | None = None, map_resamples: int = 1000, min_history: int = MIN_HISTORY,
             window: int = DEFAULT_WINDOW, false_alarm: float = DEFAULT_FALSE_ALARM,
             summary: str | Path | None = None, verdict_path: str | Path | None = None,
             log: Callable[[str], None] = print) -> int:
    """`xprune gate`: read the files, judge, print one line per row and the decision, append the markdown to
    `summary`, write the JSON verdict atomically to `verdict_path`; returns the exit code (0 pass, 1 regression
    of latency or, with `max_map_drop`, of mAP). Three modes: `baseline` + `current` files, one `interleaved`
    run, or `history` (a folder written by `record`) + `current`. Unusable input raises XpruneError (exit 2 in
    the CLI)."""
    modes = sum(x is not None for x in (baseline, interleaved, history))
    if modes > 1:
        raise XpruneError("give one of --baseline, --interleaved or --history")
    verdict: Verdict | HistoryVerdict
    if history is not None:
        if current is None:
            raise XpruneError("history mode judges one run: give --current FILE")
        docs = [r.doc for r in read_history(history)]
        verdict = history_gate(docs, read_results(current), max_regression=max_regression,
                               false_alarm=false_alarm, window=window, min_history=min_history,
                               relative=parse_relative(relative), max_map_drop=max_map_drop, confidence=confidence,
                               map_resamples=map_resamples, seed=seed, where=f"history {history}")
        lines = history_lines(verdict)
    else:
        if interleaved is not None:
            base_doc, current_doc = split_interleaved(read_results(interleaved), str(interleaved))
        elif baseline is None or current is None:
            raise XpruneError("give --baseline and --current files, one --interleaved run, or --history DIR "
                              "and --current FILE")
        else:
            base_doc, current_doc = read_results(baseline), read_results(current)
        verdict = gate(base_doc, current_doc, max_regression=max_regression, confidence=confidence,
                       resamples=resamples, seed=seed, relative=parse_relative(relative), max_map_drop=max_map_drop,
                       map_resamples=map_resamples)
        lines = verdict_lines(verdict)
    for line in lines:
        log(line)
    if verdict_path:
        write_json(verdict_path, verdict.as_dict())
    if summary:
        append_summary(summary, verdict.to_markdown())
    return verdict.exit_code


def run_record(history_dir: str | Path, run_path: str | Path, log: Callable[[str], None] = print) -> int:
    """`xprune gate --record DIR RUN`: append a results file to a history folder; exit code 0."""
    path, new, runs = record_run(history_dir, run_path)
    if new:
        log(f"recorded {run_path} as {path} ({runs} run(s) in {history_dir})")
    else:
        log(f"{run_path} is already in the history as {path} ({runs} run(s) in {history_dir}); nothing recorded")
    if runs < MIN_HISTORY:
        log(f"history mode needs {MIN_HISTORY} runs: record {MIN_HISTORY - runs} more")
    return 0
