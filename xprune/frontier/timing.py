"""Latency of a model's finished points: each point's fine-tuned detector exported folded, timed in ONNX Runtime
interleaved in one process with the baseline (the control's export: the unpruned start after the same recovery)
and an A/A copy of the baseline file. Run it on a quiet machine, after the training: never beside it.

timing/<model>.json holds every sample, the protocol and the environment; ratios are paired per round."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

from xprune.errors import XpruneError
from xprune.files import write_json
from xprune.frontier.point import model_points, pruned_detector
from xprune.frontier.settings import CONTROL, FrontierSettings
from xprune.frontier.start import ModelStart

Log = Callable[[str], None]
TIMING_FORMAT = "xprune-frontier-timing-2"
AA = "baseline-copy"


def timing_path(out: Path, model: str) -> Path:
    return out / "timing" / f"{model}.json"


def finished_points(out: Path, model: str) -> list[dict]:
    return [d for d in model_points(out, model) if d["status"] in ("done", "stopped")]


def time_model(start: ModelStart, s: FrontierSettings, out: Path, work: Path, log: Log) -> dict:
    from xprune.bench.environment import environment
    from xprune.bench.latency import LatencyProtocol
    from xprune.bench.paired import paired_summary
    from xprune.bench.run import BenchSettings, bench, open_target
    from xprune.export.onnx_export import export_onnx

    points = finished_points(out, start.name)
    control = [d for d in points if d["point"] == CONTROL]
    if not control:
        raise XpruneError(f"no finished control point of {start.name} under {out}: run the training first")
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="xprune-frontier-") as tmp:
        files, exported = {}, {}
        for doc in points:
            vid = "baseline" if doc["point"] == CONTROL else doc["point"]
            files[vid] = Path(tmp) / f"{vid}.onnx"
            rep = export_onnx(pruned_detector(start, doc, work, s.seed), files[vid], fold=True)
            exported[vid] = {"point": doc["point"], "macs_after": rep["macs_after"]}
        files[AA] = Path(tmp) / f"{AA}.onnx"
        files[AA].write_bytes(files["baseline"].read_bytes())
        log(f"[{start.name}] timing {len(files)} ONNX models interleaved in ONNX Runtime ({s.runs} rounds)")
        targets = []
        for vid, path in files.items():
            target = open_target(path, threads=s.threads)
            target.info["variant_id"] = vid
            targets.append(target)
        protocol = LatencyProtocol(warmup_runs=s.warmup_runs, runs=s.runs)
        timing = bench(targets, BenchSettings(protocol=protocol, interleave=True, threads=s.threads,
                                              order_seed=s.seed))
    rows = {r["variant_id"]: r for r in timing["rows"]}
    base = rows["baseline"]
    doc = {"format": TIMING_FORMAT, "model": start.name, "protocol": timing["protocol"],
           "environment": environment(), "seconds": round(time.time() - t0, 1),
           "aa_control": paired_summary(rows[AA], base),
           "rows": [{"variant_id": vid, **exported.get(vid, {"point": CONTROL}), "median_ms": r["median_ms"],
                     "source_sha256": r.get("source_sha256"), "samples_ms": r["samples_ms"],
                     "vs_baseline": paired_summary(r, base)} for vid, r in rows.items()]}
    write_json(timing_path(out, start.name), doc)
    return doc
