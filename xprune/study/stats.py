"""The numbers a study derives from its measurements: changes against the baseline and how far the criteria agree
(paired latency ratios of interleaved runs: `xprune.bench.paired`)."""

from __future__ import annotations

from xprune.prune.plan import Infeasible, Plan

LATENCY_FIELDS = ("n", "median_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "fps")


def pct_change(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return 100.0 * (value - base) / base


def latency_fields(row: dict) -> dict:
    """The summary statistics of a results row, without its samples."""
    return {k: row[k] for k in LATENCY_FIELDS}


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman rank correlation (scipy; average ranks for ties); None when undefined."""
    from scipy.stats import spearmanr
    if len(a) < 2 or len(set(a)) < 2 or len(set(b)) < 2:
        return None
    return float(spearmanr(a, b).statistic)


def overlap(a: set, b: set) -> float:
    """|A & B| / |A|."""
    return len(a & b) / max(len(a), 1)


def agreement(layer_scores: dict, plans: dict[str, dict[float, Plan | Infeasible]], rates) -> dict:
    """How far the criteria agree: Spearman correlation of their scores over candidate layers, and the overlap
    of the layers each zeroed per rate."""
    crit = list(layer_scores["criteria"])
    mask = layer_scores["candidate"]
    out = {}
    for i, a in enumerate(crit):
        for b in crit[i + 1:]:
            sa = [s for s, c in zip(layer_scores["criteria"][a]["scores"], mask) if c]
            sb = [s for s, c in zip(layer_scores["criteria"][b]["scores"], mask) if c]
            per_rate = {}
            for r in rates:
                pa, pb = plans[a][r], plans[b][r]
                if isinstance(pa, Infeasible) or isinstance(pb, Infeasible):
                    continue
                la, lb = set(pa.layers), set(pb.layers)
                per_rate[f"{r:g}"] = {"common": sorted(la & lb), "overlap": overlap(la, lb)}
            bottom_a = set(layer_scores["criteria"][a]["bottom"])
            bottom_b = set(layer_scores["criteria"][b]["bottom"])
            out[f"{a}-vs-{b}"] = {"spearman": spearman(sa, sb), "per_rate": per_rate,
                                  "bottom_overlap": overlap(bottom_a, bottom_b)}
    return out


ZERO_FRACTION_OF_MEDIAN = 1e-9  # a score this far below the criterion's median is float residue, not a measurement


def zero_floor(layer_scores: dict, method: str) -> float:
    """The score below which `method` counts a layer as scoring zero: `ZERO_FRACTION_OF_MEDIAN` x the median of its
    candidate scores (of all layers' where no layer is a candidate)."""
    from statistics import median
    scores = layer_scores["criteria"][method]["scores"]
    ranked = [s for s, m in zip(scores, layer_scores["candidate"]) if m] or list(scores)
    return ZERO_FRACTION_OF_MEDIAN * abs(median(ranked)) if ranked else 0.0


def scores_zero(layer_scores: dict, method: str) -> list[bool]:
    """Per layer, whether `method` scores it 0 or below `zero_floor` (e.g. an attribution of 2e-20 against a median
    of 3.8: what reaches that output rounds away, so its place in the ranking is no measurement either)."""
    floor = zero_floor(layer_scores, method)
    return [s == 0 or abs(s) < floor for s in layer_scores["criteria"][method]["scores"]]


def zero_scores(layer_scores: dict) -> dict:
    """Per criterion, how many layers score zero or below 1e-9 x its median (`scores_zero`): of all conv layers, of
    the candidates, and of the bottom (`bottom_rate`) of the candidates. A criterion whose bottom is all zeros ranks
    nothing there: it has found layers the data never uses, and any order among them is arbitrary."""
    mask = layer_scores["candidate"]
    out = {}
    for method, c in layer_scores["criteria"].items():
        zero = scores_zero(layer_scores, method)
        by_layer = dict(zip(layer_scores["layers"], zero))
        out[method] = {"layers": sum(zero),
                       "candidates": sum(1 for z, m in zip(zero, mask) if m and z),
                       "candidate_total": sum(1 for m in mask if m),
                       "bottom": sum(1 for n in c["bottom"] if by_layer[n]), "bottom_size": len(c["bottom"]),
                       "bottom_rate": c["bottom_rate"]}
    return out
