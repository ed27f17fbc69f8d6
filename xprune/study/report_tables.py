"""The study report's measured tables: Table 2 per backend (one row per variant, with the notes that say how to read
it) and the comparison with Ultralytics' own export on each runtime it exports for (the peers)."""

from __future__ import annotations

from xprune.runtime.registry import label
from xprune.study.report_format import (DASH, f_dmap, f_fps, f_frac, f_gmacs, f_int, f_interval, f_map, f_ms, f_pct,
                                        f_rate, f_ratio, md_table)

BACKEND_TITLES = {
    "torch": "PyTorch eager, CPU (tinyssd-jax: its own framework, JAX jit) — zeroed weights, dense compute (the "
             "paper's setting)",
    "onnxruntime": "ONNX Runtime, CPU — exported raw heads with the zeroed layers folded out (xprune)",
    "tensorrt": "TensorRT — engines built from the folded ONNX",
    "openvino": "OpenVINO, CPU, fp32 — exported raw heads with the zeroed layers folded out (xprune)",
}


TABLE_HEAD = ["Model", "Method", "Rate", "Layers zeroed", "mAP@[.50:.95]", "mAP 95% CI", "mAP@.50", "Δ mAP",
              "Δ mAP 95% CI (paired)", "% Δ mAP", "FPS", "% Δ FPS", "Paired latency ratio", "Params",
              "GMACs (ptflops)", "Effective GMACs (folded)", "Threads"]


def table_row(r: dict) -> list[str]:
    model = r["model"] + ("" if r["accuracy"] else " (speed only)")
    shared = " †" if r.get("shared_with") else ""
    return [model, r["method"] + shared, f_rate(r["rate"]) if r["method"] != "baseline" else DASH,
            str(r["layers_zeroed"]), f_map(r["map"]), f_interval(r.get("map_low"), r.get("map_high")),
            f_map(r["map50"]), f_dmap(r.get("dmap")), f_interval(r.get("dmap_low"), r.get("dmap_high"), f_dmap),
            f_pct(r["dmap_pct"]), f_fps(r["fps"]), f_pct(r["dfps_pct"]), f_ratio(r["paired_ratio"]),
            f_int(r["params"]), f_gmacs(r["macs"]), f_gmacs(r["effective_macs"]),
            DASH if r.get("threads") is None else str(r["threads"])]


def _order(study: dict, rows: list[dict]) -> list[dict]:
    models = [m["model"] for m in study["models"]]
    criteria = ["baseline", *study["settings"]["criteria"]]
    return sorted(rows, key=lambda r: (models.index(r["model"]), criteria.index(r["method"])
                                       if r["method"] in criteria else 99, r["rate"]))


def backend_section(study: dict, backend: str) -> list[str]:
    rows = _order(study, [r for r in study["rows"] if r["backend"] == backend])
    if not rows:
        return []
    lines = [f"## Table 2 — {BACKEND_TITLES.get(backend, backend)}", ""]
    lines += md_table(TABLE_HEAD, [table_row(r) for r in rows])
    lines.append("")
    for m in study["models"]:
        c = m["controls"].get(backend)
        if c:
            lines.append(f"- A/A control, {m['model']}: the baseline timed twice in the same run, paired latency "
                         f"ratio {f_ratio(c['median'])} (p10 {f_ratio(c['p10'])}, p90 {f_ratio(c['p90'])}, "
                         f"{c['n']} rounds) — differences of this size are noise.")
    if any(r.get("shared_with") for r in rows):
        lines.append("- † the same layers were selected by another (criterion, rate) pair: one model, measured once, "
                     "reported in every row it stands for.")
    if backend != "torch" and any(r["map_source"] == "torch" for r in rows if r["accuracy"]):
        lines.append("- mAP in this table was measured in PyTorch, not on this runtime (the folded ONNX computes the "
                     "same function; see the max relative error in the model table).")
    elif backend == "onnxruntime" and any(r["map_source"] == "onnxruntime" for r in rows):
        lines.append("- mAP in this table was measured through ONNX Runtime on each variant's exported (folded) "
                     "file, batch 1, with the same post-process as PyTorch; its intervals are that evaluation's.")
    if any(r.get("dmap_low") is not None for r in rows):
        lines.append("- Δ mAP = variant − baseline (absolute); its interval is paired over the same resampled "
                     "images, so it is narrower than the two mAP intervals side by side suggest. An interval that "
                     "contains 0 is a difference these images cannot tell from none.")
    lines += _threads_note(rows)
    lines += _proposals_note(study, rows)
    if backend == "torch":
        lines.append("- Params and MACs are ptflops' dense counts (a JAX family's: its convs counted the same way): "
                     "zeroing changes neither. The last column is what xprune's fold leaves of the same model in "
                     "ONNX; the framework still computes the dense graph.")
    lines.append("")
    return lines


def _threads_note(rows: list[dict]) -> list[str]:
    counts = sorted({int(r["threads"]) for r in rows if r.get("threads") is not None})
    if not counts:
        return []
    if len(counts) == 1:
        return [f"- Threads: every row ran on {counts[0]} intra-op thread(s), as its runner reported "
                "(`describe()`, recorded per row)."]
    by = ", ".join(f"{c}: {sum(1 for r in rows if r.get('threads') == c)} rows" for c in counts)
    return [f"- **Threads differ between rows** ({by}): compare latencies only between rows with the same count."]


def _proposals_note(study: dict, rows: list[dict]) -> list[str]:
    """Two-stage models do work in proportion to the proposals their RPN keeps: measured per variant."""
    if rows and rows[0]["backend"] != "torch":
        return []  # the count is the variant's, not the runtime's: said once, under the PyTorch table
    out = []
    for m in study["models"]:
        mine = [r for r in rows if r["model"] == m["model"] and r.get("proposals_probe") is not None]
        if mine:
            cells = ", ".join(f"{r['method']}{'' if r['method'] == 'baseline' else ' ' + f_rate(r['rate'])} "
                              f"{r['proposals_probe']}" for r in mine)
            out.append(f"- {m['model']}: proposals the RPN keeps on the probe input (the second stage's work "
                       f"grows with them): {cells}.")
    return out


def _minus_peer(d: dict | None) -> str:
    if not d:
        return ""
    return (f"; its mAP minus the peer's {f_dmap(d['delta'])} (paired 95% CI "
            f"{f_interval(d['low'], d['high'], f_dmap)})")


def study_peers(study: dict) -> dict[str, dict]:
    """The peer records by backend; a study from before one peer per runtime had one, on ONNX Runtime."""
    if "peers" in study:
        return study["peers"] or {}
    old = study.get("peer")
    return {"onnxruntime": old} if old else {}


def peer_section(study: dict) -> list[str]:
    peers = study_peers(study)
    if not peers:
        return ["## Peer: Ultralytics' own export of the unpruned model", "",
                "No YOLO model in this study (or the peer was switched off): no peer row.", ""]
    lines: list[str] = []
    for backend, p in peers.items():
        lines += _peer(backend, p)
    return lines


def _peer(backend: str, p: dict) -> list[str]:
    runtime = label(backend)
    e = p.get("export") or {}
    fmt = e.get("format", "onnx")
    lines = [f"## Peer on {runtime}: Ultralytics' own {'ONNX' if fmt == 'onnx' else 'OpenVINO'} export of the "
             f"unpruned model, in the same {runtime} run", ""]
    if not p.get("available"):
        return lines + [f"The peer could not be exported: {p.get('reason')}", ""]
    if fmt == "onnx":
        made = (f"opset {e['opset']}, simplify={e['simplify']} via onnxslim {e['onnxslim']}, "
                f"dynamic={e['dynamic']}; output {e['output_shape']}; {e['nodes']} nodes, {f_gmacs(e['macs'])} GMACs")
    else:
        made = (f"OpenVINO {e.get('openvino')}, converted from PyTorch, weights stored as "
                f"{'/'.join(e.get('weight_types') or []) or '?'}, dynamic={e.get('dynamic')}; output "
                f"{e['output_shape']}; {e['nodes']} operations")
    runtime_map = p.get("baseline_runtime_map", p.get("baseline_onnx_map"))
    lines += [f"Claim under test: *xprune's pruned and folded {p['model']} runs faster in {runtime} than "
              f"Ultralytics' export of the unpruned model* — with the accuracy it lost stated next to it.", "",
              f"- Export: `{e['call']}` with Ultralytics {e['ultralytics']} defaults otherwise ({made}, "
              f"{f_int(e['params'])} params).",
              f"- Its output decoded by the adapter (xywh → xyxy, scores transposed) matches xprune's PyTorch raw "
              f"heads to a max relative error of {p['decoded_max_rel_error_vs_torch']:.1e}; its mAP goes through "
              "the same NMS as every other row.",
              f"- Peer: median {f_ms(p['median_ms'])} ms, {f_fps(p['fps'])} FPS, mAP {f_map(p.get('map'))}"
              + (f" (95% CI {f_interval(p.get('map_low'), p.get('map_high'))})" if p.get("map_low") is not None
                 else "") + f", mAP@.50 {f_map(p.get('map50'))}"
              + (f"; threads {p['threads']}" if p.get("threads") is not None else "") + ".",
              f"- xprune's unpruned export vs the peer: paired latency ratio "
              f"{f_ratio(p['xprune_baseline_vs_peer']['median'])} ({f_fps(p['xprune_baseline_fps'])} FPS; "
              f"{runtime} mAP {f_map(runtime_map)}, PyTorch mAP {f_map(p.get('baseline_map'))})"
              + _minus_peer(p.get("xprune_baseline_minus_peer_map")) + "."]
    if p.get("aa_control"):
        a = p["aa_control"]
        lines.append(f"- A/A control in this run: {f_ratio(a['median'])} (p10 {f_ratio(a['p10'])}, "
                     f"p90 {f_ratio(a['p90'])}).")
    lines += ["", "Latency ratio = median over rounds of xprune ms / peer ms (< 1: xprune faster).", ""]
    head = ["Method", "Rate", "Layers zeroed", "MACs removed by fold", "xprune FPS", "Peer FPS",
            "Latency ratio vs peer", "p10–p90", "Faster? (median < 1)", "In ≥ 90% of rounds?", "mAP (pruned)",
            "mAP lost vs baseline", "mAP lost 95% CI (paired)", "% Δ mAP"]
    rows = [[c["method"], f_rate(c["rate"]), str(c["layers_zeroed"]), f_frac(c["removed_mac_fraction"]),
             f_fps(c["xprune_fps"]), f_fps(p["fps"]), f_ratio(c["latency_ratio_vs_peer"]),
             f"{f_ratio(c['latency_ratio_p10'])}–{f_ratio(c['latency_ratio_p90'])}", "yes" if c["faster"] else "no",
             "yes" if c.get("clearly_faster") else "no", f_map(c["map"]), f_map(c["map_lost"]),
             f_interval(c.get("map_lost_low"), c.get("map_lost_high")), f_pct(c["dmap_pct"])]
            for c in p["comparisons"]]
    lines += md_table(head, rows)
    faster = [c for c in p["comparisons"] if c["faster"]]
    clear = [c for c in p["comparisons"] if c.get("clearly_faster")]
    source = next((c.get("map_source") for c in p["comparisons"] if c.get("map_source")), None)
    if source:
        where = f"{runtime}, the peer's runtime" if source == backend else "PyTorch"
        lines += ["", f"mAP in this table: {where}; the interval of what was lost is paired with the baseline."]
    lines += ["", f"Measured: {len(faster)} of {len(p['comparisons'])} (criterion, rate) rows ran faster than the peer "
              f"by the median paired ratio, {len(clear)} of them in at least 90% of the rounds (p90 < 1); read each "
              "next to the A/A control and the mAP it cost.", ""]
    return lines
