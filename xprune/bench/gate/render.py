"""How a verdict reads: console lines, the markdown step summary, appending that summary to a file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from xprune.errors import XpruneError

if TYPE_CHECKING:  # the verdict types import this module for Verdict.to_markdown
    from xprune.bench.gate.accuracy import AccuracyVerdict
    from xprune.bench.gate.decision import Verdict
    from xprune.bench.gate.history import HistoryVerdict


def _accuracy_line(a: "AccuracyVerdict | None") -> str:
    if a is None:
        return ""
    return (f"  |  mAP {a.decision.upper():<12} {a.baseline_map:.4f} -> {a.current_map:.4f} "
            f"({100 * a.delta:+.2f} pts [{100 * a.delta_low:+.2f}, {100 * a.delta_high:+.2f}], {a.images} images)")


def _tolerances(verdict) -> str:
    out = f"tolerance +{100 * verdict.max_regression:g}%"
    if verdict.max_map_drop is not None:
        out += f", mAP drop <= {100 * verdict.max_map_drop:g} points"
    return out


def verdict_lines(verdict: "Verdict") -> list[str]:
    """One console line per row (latency, then mAP when judged), then the warnings, then the decision."""
    lines = [f"{r.decision.upper():<12} {r.ratio:6.3f}x  [{r.ci_low:.3f}, {r.ci_high:.3f}]  {r.mode:<8}  {r.label}"
             f"{_accuracy_line(r.accuracy)}" for r in verdict.rows]
    lines += [f"warning: {w}" for w in verdict.warnings]
    lines.append(f"gate: {verdict.decision.upper()} ({len(verdict.rows)} row(s), {_tolerances(verdict)})")
    return lines


def history_lines(verdict: "HistoryVerdict") -> list[str]:
    """One console line per row with the threshold and what it can detect, then warnings, then the decision."""
    lines = [f"{r.decision.upper():<12} {r.ratio:6.3f}x  threshold {r.threshold:.3f} (A/A false alarms <= "
             f"{100 * verdict.false_alarm:g}%, {r.runs} runs, rule {r.rule}, spread {100 * r.spread:.1f}%), detects "
             f"+{100 * (r.detectable - 1):.1f}%  {r.mode:<8}  {r.label}{_accuracy_line(r.accuracy)}"
             for r in verdict.rows]
    lines += [f"warning: {w}" for w in verdict.warnings]
    lines.append(f"gate (history): {verdict.decision.upper()} ({len(verdict.rows)} row(s), {_tolerances(verdict)})")
    return lines


def _accuracy_cells(a: "AccuracyVerdict | None") -> str:
    if a is None:
        return " - | - | - |"
    dec = f"**{a.decision.upper()}**" if a.decision == "regression" else a.decision
    return (f" {a.baseline_map:.4f} -> {a.current_map:.4f} | {100 * a.delta:+.2f} "
            f"({100 * a.delta_low:+.2f} to {100 * a.delta_high:+.2f}) | {dec} |")


def _warning_lines(warnings: list[str]) -> list[str]:
    if not warnings:
        return []
    lines = [""] + [f"- {w}" for w in warnings[:10]]
    if len(warnings) > 10:
        lines.append(f"- ... {len(warnings) - 10} more")
    return lines


def _order(rows):
    return sorted(rows, key=lambda r: (not r.regressed, r.decision != "inconclusive", -r.ratio))


def history_markdown(verdict: "HistoryVerdict", max_rows: int = 20) -> str:
    """One screen for $GITHUB_STEP_SUMMARY in history mode: the threshold and detectable slowdown per row."""
    head = ("## Latency gate (history): :x: REGRESSION" if verdict.decision == "regression"
            else "## Latency gate (history): :white_check_mark: PASS")
    acc = verdict.max_map_drop is not None
    lines = [head, "",
             f"{len(verdict.rows)} row(s) against the last <= {verdict.window} of {verdict.history_runs} recorded "
             f"run(s); A/A false alarms <= {100 * verdict.false_alarm:g}%; {_tolerances(verdict)}.", "",
             "| row | mode | runs | history median | current | ratio | threshold (rule) | detects (80%) | decision |"
             + (" mAP (latest -> current) | delta, points | mAP decision |" if acc else ""),
             "|---|---|---:|---:|---:|---:|---:|---:|---|" + ("---|---|---|" if acc else "")]
    for r in _order(verdict.rows)[:max_rows]:
        unit = "" if r.mode == "relative" else " ms"
        dec = f"**{r.decision.upper()}**" if r.decision == "regression" else r.decision
        lines.append(f"| {r.label} | {r.mode} | {r.runs} | {r.center:.4g}{unit} | {r.current:.4g}{unit} "
                     f"| {r.ratio:.3f} | {r.threshold:.3f} ({r.rule}) | +{100 * (r.detectable - 1):.1f}% | {dec} |"
                     + (_accuracy_cells(r.accuracy) if acc else ""))
    if len(verdict.rows) > max_rows:
        lines.append(f"| ... {len(verdict.rows) - max_rows} more row(s) in the JSON verdict |")
    lines += _warning_lines(verdict.warnings)
    lines += ["", f"<sub>{verdict.method}</sub>", ""]
    return "\n".join(lines)


def verdict_markdown(verdict: "Verdict", max_rows: int = 20) -> str:
    """One screen for $GITHUB_STEP_SUMMARY: decision, a row table, warnings, the method."""
    acc = verdict.max_map_drop is not None
    title = "Latency and accuracy gate" if acc else "Latency gate"
    head = (f"## {title}: :x: REGRESSION" if verdict.decision == "regression"
            else f"## {title}: :white_check_mark: PASS")
    n_reg = sum(r.regressed for r in verdict.rows)
    lines = [head, "",
             f"{len(verdict.rows)} row(s) compared, {n_reg} regression(s); {_tolerances(verdict)}.", "",
             f"| row | mode | baseline | current | ratio | {100 * verdict.confidence:g}% bounds | n (b/c) | decision |"
             + (" mAP (baseline -> current) | delta, points | mAP decision |" if acc else ""),
             "|---|---|---:|---:|---:|---|---|---|" + ("---|---|---|" if acc else "")]
    for r in _order(verdict.rows)[:max_rows]:
        unit = "" if r.mode == "relative" else " ms"
        dec = f"**{r.decision.upper()}**" if r.decision == "regression" else r.decision
        lines.append(f"| {r.label} | {r.mode} | {r.baseline_median:.4g}{unit} | {r.current_median:.4g}{unit} "
                     f"| {r.ratio:.3f} | {r.ci_low:.3f} - {r.ci_high:.3f} | {r.n_baseline}/{r.n_current} "
                     f"| {dec} |" + (_accuracy_cells(r.accuracy) if acc else ""))
    if len(verdict.rows) > max_rows:
        lines.append(f"| ... {len(verdict.rows) - max_rows} more row(s) in the JSON verdict | | | | | | | |")
    lines += _warning_lines(verdict.warnings)
    lines += ["", f"<sub>{verdict.method}</sub>", ""]
    return "\n".join(lines)


def append_summary(path: str | Path, markdown: str) -> None:
    """Append to a step summary file. $GITHUB_STEP_SUMMARY is appended to by every step of a job, so it is not
    replaced atomically like the other outputs."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(markdown if markdown.endswith("\n") else markdown + "\n")
    except OSError as e:
        raise XpruneError(f"cannot write the summary to {path}: {e.strerror or e}") from None
