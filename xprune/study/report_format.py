"""How the study report writes numbers and tables. The widths are fixed: the tests read the tables back with them."""

from __future__ import annotations

DASH = "–"


def or_dash(fmt):
    """A formatter that prints a dash for missing values."""
    return lambda v: DASH if v is None else fmt(v)


f_map = or_dash(lambda v: f"{v:.4f}")
f_fps = or_dash(lambda v: f"{v:.2f}")
f_ms = or_dash(lambda v: f"{v:.2f}")
f_pct = or_dash(lambda v: f"{v:+.1f}%")
f_ratio = or_dash(lambda v: f"{v:.3f}")
f_int = or_dash(lambda v: f"{int(v):,}")
f_gmacs = or_dash(lambda v: f"{v / 1e9:.3f}")
f_rate = or_dash(lambda v: f"{100 * v:g}%")
f_frac = or_dash(lambda v: f"{100 * v:.1f}%")
f_dmap = or_dash(lambda v: f"{v:+.4f}")


def f_interval(low, high, fmt=f_map) -> str:
    """An interval as "low – high" (the test reads it back), a dash when it was not measured."""
    return DASH if low is None or high is None else f"{fmt(low)} – {fmt(high)}"


def md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
