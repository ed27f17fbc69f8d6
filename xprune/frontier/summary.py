"""The frontier's rows, read from the point and timing files alone: per point and evaluated epoch, its mAP, the
paired mAP change against the control at the same epoch (bootstrap interval over the val images), the fine-tuning
CPU time spent to reach it, and the latency ratio of its folded export to the control's (paired, with the A/A
control). frontier.json is this summary; frontier.md and frontier.png are rendered from it."""

from __future__ import annotations

from pathlib import Path

from xprune.errors import XpruneError
from xprune.files import read_json
from xprune.frontier.point import model_points
from xprune.frontier.settings import BUDGET, CONTROL, GOAL_RATIO
from xprune.frontier.timing import TIMING_FORMAT, timing_path

SUMMARY_FORMAT = "xprune-frontier-2"


def read_timing(out: Path, model: str) -> dict | None:
    path = timing_path(out, model)
    if not path.exists():
        return None
    doc = read_json(path, "frontier timing")
    if not isinstance(doc, dict) or doc.get("format") != TIMING_FORMAT:
        raise XpruneError(f"{path} is not a frontier timing file ({TIMING_FORMAT})")
    return doc


def cpu_seconds_to(doc: dict, epoch: int) -> float | None:
    history = (doc.get("finetune") or {}).get("history", [])
    if epoch == 0:
        return 0.0
    if len(history) < epoch or any("cpu_seconds" not in h for h in history[:epoch]):
        return None
    return sum(h["cpu_seconds"] for h in history[:epoch])


def summarize_model(out: Path, model: str, resamples: int, seed: int = 0) -> dict:
    from xprune.evaluate.bootstrap import ImageBootstrap
    from xprune.evaluate.image_matches import ImageMatches

    docs = {d["point"]: d for d in model_points(out, model)}
    control = docs.get(CONTROL)
    timing = read_timing(out, model)
    latency = {r["point"]: {**r["vs_baseline"], "median_ms": r["median_ms"]} for r in timing["rows"]
               if r["variant_id"] != "baseline-copy"} if timing else {}
    boot = ImageBootstrap(resamples, 0.95, seed)
    base_by_epoch = {e["epoch"]: (e, ImageMatches.from_json(e["matches"], f"control epoch {e['epoch']}"))
                     for e in (control or {}).get("evaluations", [])}
    rows = []
    for pid, doc in sorted(docs.items(), key=lambda kv: (kv[0] != CONTROL, kv[1]["target"] or 0, kv[0])):
        for ev in sorted(doc["evaluations"], key=lambda e: e["epoch"]):
            m = ImageMatches.from_json(ev["matches"], f"{pid} epoch {ev['epoch']}")
            low, high = boot.map_interval(m)
            row = {"point": pid, "criterion": doc["criterion"], "target": doc["target"], "epoch": ev["epoch"],
                   "status": doc["status"], "map": ev["map"], "map_low": low, "map_high": high,
                   "removed_mac_fraction": doc["macs"]["removed_fraction"],
                   "layers": None if doc.get("peer") else len(doc["layers"]),  # the peer removes channels
                   "finetune_cpu_seconds": cpu_seconds_to(doc, ev["epoch"]), "latency": latency.get(pid)}
            if ev["epoch"] in base_by_epoch:
                base, base_matches = base_by_epoch[ev["epoch"]]
                delta, dlow, dhigh = boot.delta_interval(base_matches, m)
                row.update(control_map=base["map"], delta_map=delta, delta_low=dlow, delta_high=dhigh)
            rows.append(row)
    start = (control or next(iter(docs.values()), {})).get("start", {})
    return {"model": model, "start": {k: v for k, v in start.items() if k != "removed_level"},
            "removed_level": {k: v for k, v in start.get("removed_level", {}).items() if k != "usage"} or None,
            "aa_control": timing["aa_control"] if timing else None,
            "timing": {"seconds": timing["seconds"], "environment": timing["environment"],
                       "runs": timing["protocol"].get("runs")} if timing else None,
            "stopped": {pid: d["stopped"] for pid, d in docs.items() if d.get("stopped")},
            "early_stop": early_stop_savings(docs.values()),
            "running": sorted(pid for pid, d in docs.items() if d["status"] == "running"),
            "rows": rows}


def early_stop_savings(docs) -> dict:
    """What the early stop saved: the points it stopped, the epochs they did not run, and the CPU time those would
    have taken at each point's own CPU time per epoch run (an estimate; the epochs were not run)."""
    stopped = [d for d in docs if d.get("stopped")]
    seconds = 0.0
    for d in stopped:
        history = (d.get("finetune") or {}).get("history") or []
        if history and all("cpu_seconds" in h for h in history):
            seconds += d["stopped"]["epochs_not_run"] * sum(h["cpu_seconds"] for h in history) / len(history)
    return {"points": len(stopped), "epochs_not_run": sum(d["stopped"]["epochs_not_run"] for d in stopped),
            "cpu_seconds_saved_estimate": seconds}


def within(rows: list[dict], points: float) -> dict | None:
    """The fastest timed row whose mAP change against the control is at least -`points`."""
    ok = [r for r in rows if r.get("latency") and "delta_map" in r and r["delta_map"] >= -points
          and r["point"] != CONTROL]
    return min(ok, key=lambda r: (r["latency"]["median"], r["epoch"])) if ok else None


def best_points(model: dict) -> list[dict]:
    """Per criterion: the fastest point within one and within two mAP points (any recovery budget)."""
    out = []
    for criterion in sorted({r["criterion"] for r in model["rows"] if r["criterion"]}):
        rows = [r for r in model["rows"] if r["criterion"] == criterion]
        out.append({"criterion": criterion, "within_1": within(rows, BUDGET), "within_2": within(rows, 2 * BUDGET)})
    return out


def goal_met(row: dict | None) -> bool:
    return bool(row and row["latency"]["median"] <= GOAL_RATIO and row["delta_map"] >= -BUDGET)
