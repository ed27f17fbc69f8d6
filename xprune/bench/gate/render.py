"""How a verdict reads: console lines, the markdown step summary, appending that summary to a file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from xprune.errors import XpruneError

if TYPE_CHECKING:  # the verdict types import this module for Verdict.to_markdown
    from xprune.bench.gate.decision import Verdict


def verdict_lines(verdict: "Verdict") -> list[str]:
    """One console line per row, then the warnings, then the decision."""
    lines = [f"{r.decision.upper():<12} {r.ratio:6.3f}x  [{r.ci_low:.3f}, {r.ci_high:.3f}]  {r.mode:<8}  {r.label}"
             for r in verdict.rows]
    lines += [f"warning: {w}" for w in verdict.warnings]
    lines.append(f"gate: {verdict.decision.upper()} ({len(verdict.rows)} row(s), "
                 f"tolerance +{100 * verdict.max_regression:g}%)")
    return lines


def verdict_markdown(verdict: "Verdict", max_rows: int = 20) -> str:
    """One screen for $GITHUB_STEP_SUMMARY: decision, a row table, warnings, the method."""
    head = ("## Latency gate: :x: REGRESSION" if verdict.decision == "regression"
            else "## Latency gate: :white_check_mark: PASS")
    n_reg = sum(r.decision == "regression" for r in verdict.rows)
    lines = [head, "",
             f"{len(verdict.rows)} row(s) compared, {n_reg} regression(s); "
             f"tolerance +{100 * verdict.max_regression:g}%.", "",
             f"| row | mode | baseline | current | ratio | {100 * verdict.confidence:g}% bounds | n (b/c) | decision |",
             "|---|---|---:|---:|---:|---|---|---|"]
    shown = sorted(verdict.rows, key=lambda r: (r.decision != "regression", r.decision != "inconclusive",
                                                -r.ratio))[:max_rows]
    for r in shown:
        unit = "" if r.mode == "relative" else " ms"
        dec = f"**{r.decision.upper()}**" if r.decision == "regression" else r.decision
        lines.append(f"| {r.label} | {r.mode} | {r.baseline_median:.4g}{unit} | {r.current_median:.4g}{unit} "
                     f"| {r.ratio:.3f} | {r.ci_low:.3f} - {r.ci_high:.3f} | {r.n_baseline}/{r.n_current} "
                     f"| {dec} |")
    if len(verdict.rows) > max_rows:
        lines.append(f"| ... {len(verdict.rows) - max_rows} more row(s) in the JSON verdict | | | | | | | |")
    warnings = verdict.warnings
    if warnings:
        lines += [""] + [f"- {w}" for w in warnings[:10]]
        if len(warnings) > 10:
            lines.append(f"- ... {len(warnings) - 10} more")
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
