"""The rows of study.json: one per (backend, criterion, rate) of a model, baselines included; and the compact
console table `xprune demo` prints of them."""

from __future__ import annotations

from xprune.study.settings import FRAMEWORK, StudySettings, map_prefix
from xprune.bench.paired import paired_summary
from xprune.study.stats import pct_change
from xprune.study.variants import Variant


def variant_row(name: str, accuracy: bool, backend: str, v: Variant, method: str, rate: float, t: dict, b: dict,
                base: Variant) -> dict:
    """One row: `t` is the variant's results row in the backend's timed run, `b` the baseline's. mAP is the one
    measured on this backend's runtime where there is one (ONNX Runtime, OpenVINO), else the framework's
    ("map_source"); its interval and the paired ΔmAP interval against the baseline come from the same
    evaluation."""
    info, binfo = v.info, base.info
    own = map_prefix(backend)
    prefix = own if backend != FRAMEWORK and own + "map" in info else ""
    acc = (lambda key: info.get(prefix + key)) if accuracy else (lambda key: None)
    mp = acc("map")
    bmp = binfo.get(prefix + "map") if accuracy else None
    ratio = None if v.is_baseline else paired_summary(t, b)
    variant = "baseline" if v.is_baseline else ("zeroed" if backend == FRAMEWORK else "folded")
    described = t.get("backend")
    runtime: dict = described if isinstance(described, dict) else {}
    return {"model": name, "accuracy": accuracy, "backend": backend, "device": t["device"],
            "precision": t["precision"], "method": method, "rate": rate, "variant_id": v.id, "variant": variant,
            "layers_zeroed": len(v.layers), "map": mp, "map_low": acc("map_low"), "map_high": acc("map_high"),
            "map50": acc("map50"),
            "map_source": ((backend if prefix else FRAMEWORK) if accuracy else None),
            "val_images": info.get(prefix + "val_images") if accuracy else None,
            "dmap": None if v.is_baseline else acc("dmap"),
            "dmap_low": None if v.is_baseline else acc("dmap_low"),
            "dmap_high": None if v.is_baseline else acc("dmap_high"),
            "dmap_pct": None if v.is_baseline else pct_change(mp, bmp),
            "threads": runtime.get("threads", t.get("threads")), "runtime": runtime,
            "proposals_probe": info.get("proposals_probe"),
            "median_ms": t["median_ms"], "p90_ms": t["p90_ms"], "fps": t["fps"], "n": t["n"],
            "dfps_pct": None if v.is_baseline else pct_change(t["fps"], b["fps"]),
            "paired_ratio": ratio["median"] if ratio else None,
            "paired_ratio_p10": ratio["p10"] if ratio else None,
            "paired_ratio_p90": ratio["p90"] if ratio else None,
            "params": info["params"], "macs": info["macs"], "effective_macs": info.get("effective_macs"),
            "removed_mac_fraction": info.get("removed_mac_fraction")}


def model_rows(name: str, accuracy: bool, variants: list[Variant], timings: dict[str, dict],
               settings: StudySettings, orders: dict[str, dict] | None = None) -> list[dict]:
    """Every row of one model; `timings` holds, per backend, its results rows by variant id, `orders` the seed of
    each backend's interleaved order."""
    base = variants[0]
    rows = []
    for backend, by_id in timings.items():
        b = by_id[base.id]
        for v in variants:
            for method, rate in v.uses:
                row = variant_row(name, accuracy, backend, v, method, rate, by_id[v.id], b, base)
                row["order_seed"] = (orders or {}).get(backend, {}).get("seed")
                row["shared_with"] = [list(u) for u in v.uses if u != (method, rate)]
                zeroed = by_id.get(f"{v.id}-zeroed") if not v.is_baseline else None  # where the unfolded file ran
                if settings.onnx_zeroed and zeroed:
                    row["zeroed_onnx_fps"] = zeroed["fps"]
                    row["zeroed_onnx_paired_ratio"] = paired_summary(zeroed, b)["median"]
                    if accuracy and "zeroed_onnx_map" in v.info:
                        row["zeroed_onnx_map"] = v.info["zeroed_onnx_map"]
                rows.append(row)
    return rows


def ran_on(row: dict) -> str:
    """The backend that ran a row: its runner's, which in the framework slot is the model's framework's."""
    return (row.get("runtime") or {}).get("backend") or row["backend"]


def _cell(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


TABLE_COLUMNS = (  # header, width, row key or function, format
    ("model", -18, "model", ""), ("backend", -13, ran_on, ""), ("method", -9, "method", ""),
    ("variant", -8, "variant", ""), ("rate", 6, "rate", ".2f"), ("mAP", 8, "map", ".4f"),
    ("mAP50", 8, "map50", ".4f"), ("dmAP%", 8, "dmap_pct", "+.2f"),
    ("dmAP 95% CI", 19, lambda r: None if r.get("dmap_low") is None
     else f"{r['dmap_low']:+.3f}..{r['dmap_high']:+.3f}", ""),
    ("params", 11, "params", ","),
    ("GMACs", 8, lambda r: r["macs"] / 1e9, ".3f"),
    ("eff.GMACs", 10, lambda r: None if r["effective_macs"] is None else r["effective_macs"] / 1e9, ".3f"),
    ("ms", 9, "median_ms", ".2f"), ("ratio", 7, "paired_ratio", ".3f"),
)


def format_rows(rows: list[dict]) -> str:
    """A fixed-width table of study rows (paired ratio: median of variant ms / baseline ms, < 1 is faster)."""
    def line(cells: list[str]) -> str:
        return "".join(f"{c:<{-w}}" if w < 0 else f"{c:>{w}}" for c, (_, w, _, _) in zip(cells, TABLE_COLUMNS))

    head = line([h for h, _, _, _ in TABLE_COLUMNS])
    out = [head, "-" * len(head)]
    for r in rows:
        out.append(line([_cell(key(r) if callable(key) else r[key], fmt) for _, _, key, fmt in TABLE_COLUMNS]))
    return "\n".join(out)
