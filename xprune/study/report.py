"""Render a study (study.json from `run_study`) as report.md plus PNG figures. Every number in the report is read
from the JSON; nothing is measured here, so `write_report` can be rerun on a committed study at any time."""

from __future__ import annotations

from pathlib import Path

from xprune.errors import XpruneError
from xprune.files import read_json, write_with
from xprune.runtime.registry import BACKENDS

from xprune.study.settings import FORMAT, READABLE_FORMATS, STUDY_FILE

BACKEND_TITLES = {
    "torch": "PyTorch eager, CPU (tinyssd-jax: its own framework, JAX jit) — zeroed weights, dense compute (the "
             "paper's setting)",
    "onnxruntime": "ONNX Runtime, CPU — exported raw heads with the zeroed layers folded out (xprune)",
    "tensorrt": "TensorRT — engines built from the folded ONNX",
}
DASH = "–"


# --- number formats (the test reads the tables back with these widths) -------------------------------------------

def _or_dash(fmt):
    """A formatter that prints a dash for missing values."""
    return lambda v: DASH if v is None else fmt(v)


f_map = _or_dash(lambda v: f"{v:.4f}")
f_fps = _or_dash(lambda v: f"{v:.2f}")
f_ms = _or_dash(lambda v: f"{v:.2f}")
f_pct = _or_dash(lambda v: f"{v:+.1f}%")
f_ratio = _or_dash(lambda v: f"{v:.3f}")
f_int = _or_dash(lambda v: f"{int(v):,}")
f_gmacs = _or_dash(lambda v: f"{v / 1e9:.3f}")
f_rate = _or_dash(lambda v: f"{100 * v:g}%")
f_frac = _or_dash(lambda v: f"{100 * v:.1f}%")
f_dmap = _or_dash(lambda v: f"{v:+.4f}")


def f_interval(low, high, fmt=f_map) -> str:
    """An interval as "low – high" (the test reads it back), a dash when it was not measured."""
    return DASH if low is None or high is None else f"{fmt(low)} – {fmt(high)}"


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


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def _order(study: dict, rows: list[dict]) -> list[dict]:
    models = [m["model"] for m in study["models"]]
    criteria = ["baseline", *study["settings"]["criteria"]]
    return sorted(rows, key=lambda r: (models.index(r["model"]), criteria.index(r["method"])
                                       if r["method"] in criteria else 99, r["rate"]))


def _environment(study: dict) -> list[str]:
    env = study["environment"]
    libs = env.get("libraries", {})
    lib_text = ", ".join(f"{k} {v}" for k, v in libs.items() if v and k in (
        "torch", "torchvision", "onnxruntime", "onnx", "onnxslim", "ultralytics", "pycocotools", "ptflops"))
    threads = study.get("threads")
    thread_text = (f"threads: torch {threads['torch']}, ONNX Runtime {threads['onnxruntime']} (held for the whole run; "
                   "every row records the count its runner reported)" if threads
                   else f"torch threads {env.get('torch_threads')} when the run started")
    return [f"- **Machine:** {env.get('cpu')}, {env.get('cpu_count')} logical cores; {thread_text}; "
            f"{env.get('platform')}; Python {env.get('python')}" + (f"; GPU {env['gpu']}" if env.get("gpu") else ""),
            f"- **Libraries:** {lib_text}",
            f"- **Command:** `{study.get('command')}`",
            f"- **Measured:** {env.get('timestamp')}, {study.get('seconds', 0):.0f} s in all"
            + _resumed_text(study)
            + ("" if study.get("complete") else " — **INCOMPLETE: the run stopped before the last model**")]


def _resumed_text(study: dict) -> str:
    """How much of the study an earlier run measured (`--resume`); each model's entry has its own time."""
    resumed = study.get("resumed")
    if not resumed or not resumed.get("kept"):
        return ""
    when = {m["model"]: m.get("measured_at") for m in study["models"]}
    kept = ", ".join(f"{name} ({when.get(name) or 'time not recorded'})" for name in resumed["kept"])
    return f" (of which {resumed['kept_seconds']:.0f} s by an earlier run of the same study, kept with --resume: {kept})"


def _settings(study: dict) -> list[str]:
    s = study["settings"]
    lat = s["latency"]
    lines = [f"- Criteria: {', '.join(s['criteria'])}; rates: {', '.join(f_rate(r) for r in s['rates'])}; "
             f"candidate policy: {s['policy']} (zero the bottom of one global ranking per criterion; every rate is a "
             "prefix of the same ranking; no fine-tuning)",
             f"- Dataset: `{study.get('dataset')}`; calibration images {s['calib_images']}; val images "
             f"{s['val_images'] or 'all'}" + (f" ({s['val_cap_reason']})" if s.get("val_cap_reason") else "")
             + "; mAP by pycocotools COCOeval (score ≥ 0.001, ≤ 100 detections, the shared NMS of "
             "`xprune.models.detector.postprocess`)",
             _map_protocol(s),
             f"- Latency: batch 1, warm-up ≥ {lat['warmup_runs']} runs and ≥ {lat['warmup_s']:g} s, then ≥ "
             f"{lat['runs']} timed runs and ≥ {lat['min_s']:g} s (cap {lat['max_s']:g} s); all variants of a model "
             "timed interleaved round by round in one process"
             + (f", each round in an order drawn from seed {s['order_seed']} (every round's order is in "
                "study.json and bench/*.json)" if s.get("order_seed") is not None else ", in rotating order")
             + "; FPS = 1000 / median ms; paired ratio = median over rounds of variant ms / baseline ms "
             "(< 1 is faster)"]
    if s.get("speed_latency"):
        sl = s["speed_latency"]
        lines.append(f"- Speed-only models: ≥ {sl['runs']} timed runs and ≥ {sl['min_s']:g} s, "
                     f"at {s['speed_input_size']} px")
    elif any(not m["accuracy"] for m in study["models"]):
        lines.append(f"- Speed-only (random-init) models run at {s['speed_input_size']} px")
    return lines


def _map_protocol(s: dict) -> str:
    if "bootstrap_resamples" not in s:
        return "- mAP without intervals (a study from before they were measured)"
    runtimes = "PyTorch and, for every variant's exported file, ONNX Runtime" if s.get("onnx_map") else "PyTorch"
    return (f"- mAP measured in {runtimes}; every mAP has a {100 * s['confidence']:g}% percentile-bootstrap interval "
            f"over the val images ({s['bootstrap_resamples']} resamples, seeded), every Δ mAP a paired one: each "
            "resample scores the variant and the unpruned baseline on the same images, on the same runtime")


def _dataset(study: dict) -> list[str]:
    d = study.get("dataset_stats")
    lines = ["## Dataset: object sizes of the val split next to COCO's", ""]
    if not d:
        return []
    if d.get("available") is False:
        return lines + [f"No size statistics: {d.get('reason')}", ""]
    where = ("the generator's record in `synth.json` (the whole val split)" if d.get("source") == "synth.json"
             else f"`{d.get('source')}` ({d.get('images')} images evaluated)")
    lines += [f"- `{study.get('dataset')}`: {f_int(d.get('objects'))} objects on {f_int(d.get('images'))} images, "
              f"{d['objects_per_image']:.1f} per image; the largest box side is {f_frac(d.get('max_box_side'))} of "
              f"its image. From {where}.",
              "- COCO's area rule, as COCOeval applies it: small < 32² px, medium 32²–96² px, large ≥ 96² px "
              "(areas in the annotations' pixels). COCO's own mix is from cocodataset.org's detection evaluation "
              "page.", ""]
    coco = d.get("coco_fractions", {})
    names = {"small": "small (< 32² px)", "medium": "medium (32²–96² px)", "large": "large (≥ 96² px)"}
    lines += _md_table(["Objects", "This val split", "COCO"],
                       [[names[k], f_frac(d["fractions"].get(k)), f_frac(coco.get(k))] for k in names])
    h = d.get("histogram")
    if h and h.get("counts"):
        edges, counts = h["edges"], h["counts"]
        total = max(sum(counts), 1)
        lines += ["", f"Histogram of {h.get('of', 'box size')}:", ""]
        lines += _md_table(["Bin", *[f"{a:g}–{b:g}" for a, b in zip(edges, edges[1:])]],
                           [["Objects", *[f_int(c) for c in counts]],
                            ["Share", *[f_frac(c / total) for c in counts]]])
    return lines + [""]


def _backends(study: dict) -> list[str]:
    lines = []
    for name, b in study["backends"].items():
        if b.get("available"):
            extra = ", ".join(f"{k} {v}" for k, v in b.items() if k not in ("available", "variant"))
            lines.append(f"- **{name}**: {b.get('variant')} ({extra})")
        else:
            lines.append(f"- **{name}**: unavailable ({b.get('reason')})")
    if "tensorrt" not in study["backends"]:
        lines.append(f"- **tensorrt**: {study.get('tensorrt')}")
    return lines


def _models(study: dict) -> list[str]:
    head = ["Model", "Weights", "Accuracy rows", "Input px", "Conv layers", "Candidates", "Baseline mAP (here)",
            "Reference mAP (checkpoint's JSON)", "Candidates scoring exactly 0 (in the bottom 5%)",
            "Folded vs PyTorch max rel. error", "Time (s)"]
    rows = []
    for m in study["models"]:
        base = next(v for v in m["variants"] if v["id"] == "baseline")
        w = m["weights"]
        errs = [v["onnx_max_rel_error_vs_torch"] for v in m["variants"] if "onnx_max_rel_error_vs_torch" in v]
        rows.append([m["model"], w["source"] + (f" `{w['path']}`" if w.get("path") else ""),
                     "yes" if m["accuracy"] else "no (speed only)", str(m["input_size"]), str(m["conv_layers"]),
                     str(m["candidates"]),
                     f_map(base.get("map")) + (f" ({base['val_images']} images)" if base.get("val_images") else ""),
                     f_map(w.get("reference_val_map")) + (f" ({w['reference_val_images']} images)"
                                                          if w.get("reference_val_images") else ""),
                     _zero_cell(m), f"{max(errs):.1e}" if errs else DASH, f"{m['seconds']:.0f}"])
    return _md_table(head, rows)


def _head_levels(study: dict) -> list[str]:
    """One line per accuracy model: which output levels detect anything (`evaluate.head_levels`)."""
    lines = []
    for m in study["models"]:
        usage = m.get("head_levels")
        if not usage:
            continue
        cells = ", ".join(f"{lv['level']} {lv['above_threshold']:,} (max {lv['max_score']:.3g})"
                          for lv in usage["levels"])
        silent = [lv["level"] for lv in usage["levels"] if lv["above_threshold"] == 0]
        verdict = (f"**silent: {', '.join(silent)}** — layers that only feed it change no detection, so zeroing "
                   "them costs no mAP whatever the criterion" if silent else "every level detects")
        lines.append(f"- {m['model']}: outputs scoring >= {usage['threshold']} per level over {usage['images']} val "
                     f"images: {cells}; {verdict}.")
    return lines


def zero_counts(model: dict) -> dict:
    """Per criterion, the layers scoring exactly 0 (`stats.zero_scores`; recomputed for older study files)."""
    if model.get("zero_scores"):
        return model["zero_scores"]
    from xprune.study.stats import zero_scores
    return zero_scores(model["layer_scores"])


def _zero_cell(model: dict) -> str:
    return "; ".join(f"{method} {z['candidates']} of {z['candidate_total']} ({z['bottom']} of {z['bottom_size']})"
                     for method, z in zero_counts(model).items()) or DASH


def _backend_section(study: dict, backend: str) -> list[str]:
    rows = _order(study, [r for r in study["rows"] if r["backend"] == backend])
    if not rows:
        return []
    lines = [f"## Table 2 — {BACKEND_TITLES.get(backend, backend)}", ""]
    lines += _md_table(TABLE_HEAD, [table_row(r) for r in rows])
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


def _peer(study: dict) -> list[str]:
    p = study.get("peer")
    lines = ["## Peer: Ultralytics' own ONNX export of the unpruned model, in the same ONNX Runtime run", ""]
    if not p:
        return lines + ["No YOLOv8 model in this study (or the peer was switched off): no peer row.", ""]
    if not p.get("available"):
        return lines + [f"The peer could not be exported: {p.get('reason')}", ""]
    e = p["export"]
    lines += [f"Claim under test: *xprune's pruned and folded {p['model']} runs faster in ONNX Runtime than "
              f"Ultralytics' export of the unpruned model* — with the accuracy it lost stated next to it.", "",
              f"- Export: `{e['call']}` with Ultralytics {e['ultralytics']} defaults otherwise (opset {e['opset']}, "
              f"simplify={e['simplify']} via onnxslim {e['onnxslim']}, dynamic={e['dynamic']}); output "
              f"{e['output_shape']}; {e['nodes']} nodes, {f_gmacs(e['macs'])} GMACs, {f_int(e['params'])} params.",
              f"- Its output decoded by the adapter (xywh → xyxy, scores transposed) matches xprune's PyTorch raw "
              f"heads to a max relative error of {p['decoded_max_rel_error_vs_torch']:.1e}; its mAP goes through "
              "the same NMS as every other row.",
              f"- Peer: median {f_ms(p['median_ms'])} ms, {f_fps(p['fps'])} FPS, mAP {f_map(p.get('map'))}"
              + (f" (95% CI {f_interval(p.get('map_low'), p.get('map_high'))})" if p.get("map_low") is not None
                 else "") + f", mAP@.50 {f_map(p.get('map50'))}"
              + (f"; threads {p['threads']}" if p.get("threads") is not None else "") + ".",
              f"- xprune's unpruned export vs the peer: paired latency ratio "
              f"{f_ratio(p['xprune_baseline_vs_peer']['median'])} ({f_fps(p['xprune_baseline_fps'])} FPS; ONNX "
              f"Runtime mAP {f_map(p.get('baseline_onnx_map'))}, PyTorch mAP {f_map(p.get('baseline_map'))})"
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
    lines += _md_table(head, rows)
    faster = [c for c in p["comparisons"] if c["faster"]]
    clear = [c for c in p["comparisons"] if c.get("clearly_faster")]
    source = next((c.get("map_source") for c in p["comparisons"] if c.get("map_source")), None)
    if source:
        where = "ONNX Runtime, the peer's runtime" if source == "onnxruntime" else "PyTorch"
        lines += ["", f"mAP in this table: {where}; the interval of what was lost is paired with the baseline."]
    lines += ["", f"Measured: {len(faster)} of {len(p['comparisons'])} (criterion, rate) rows ran faster than the peer "
              f"by the median paired ratio, {len(clear)} of them in at least 90% of the rounds (p90 < 1); read each "
              "next to the A/A control and the mAP it cost.", ""]
    return lines


def _agreement(study: dict) -> list[str]:
    lines = ["## Do the criteria agree? (paper Fig. 2)", ""]
    head = ["Model", "Pair", "Spearman (candidate scores)", "Bottom-5% overlap", "Zeroed-set overlap per rate"]
    rows = []
    for m in study["models"]:
        for pair, a in m["agreement"].items():
            per = ", ".join(f"{f_rate(float(r))}: {f_frac(v['overlap'])}" for r, v in a["per_rate"].items())
            rows.append([m["model"], pair, DASH if a["spearman"] is None else f"{a['spearman']:.3f}",
                         f_frac(a["bottom_overlap"]), per or DASH])
    if not rows:
        return lines + ["Only one criterion in this study.", ""]
    lines += _md_table(head, rows)
    lines += ["", "Overlap = |A ∩ B| / |A| of the layers each criterion picks.", ""]
    for m in study["models"]:
        for method, z in zero_counts(m).items():
            lines.append(f"- {m['model']}: {method} scores exactly 0 for {z['candidates']} of {z['candidate_total']} "
                         f"candidate layers ({z['layers']} of all conv layers); {z['bottom']} of the "
                         f"{z['bottom_size']} layers in its bottom {f_rate(z['bottom_rate'])} score exactly 0"
                         + (" — that part of its ranking is a tie, broken by layer order" if z["bottom"] > 1 else ""))
    for m in study["models"]:
        ls = m["layer_scores"]
        for method, c in ls["criteria"].items():
            zero = [n for n, sc, cand in zip(ls["layers"], c["scores"], ls["candidate"]) if cand and sc == 0]
            if zero:
                lines.append(f"- {m['model']}: {len(zero)} candidate layer(s) score exactly 0 by {method} "
                             f"({', '.join(zero[:6])}{', ...' if len(zero) > 6 else ''})"
                             + (": no gradient of the loss reaches their output on the calibration images, so "
                                "zeroing them cannot change that loss there (it can still change other images)"
                                if method == "attr" else ""))
    for m in study["models"]:
        for method, per_rate in m["plans"].items():
            for rate, p in per_rate.items():
                if "infeasible" in p:
                    lines.append(f"- {m['model']} {method} at {f_rate(float(rate))}: not reachable — {p['infeasible']}")
    return lines


def render(study: dict, figures: dict[str, Path]) -> str:
    lines = ["# Explainability-guided layer pruning, reproduced: attribution vs L1", "",
             "Generated by `xprune.study.report` from `study.json`; every number below is read from that file "
             "(raw latency samples: `bench/*.json`).", ""]
    lines += _environment(study) + [""]
    lines += ["## Settings", ""] + _settings(study) + [""]
    lines += _dataset(study)
    lines += ["## Backends", ""] + _backends(study) + [""]
    lines += ["## Models", ""] + _models(study) + [
        "", "Speed-only models have no trained weights here: random initialisation, so no mAP is reported for them "
        "and their attr ranking is that of an untrained network.", ""]
    levels = _head_levels(study)
    if levels:
        lines += ["Which output levels detect anything (the baseline on the val images):", ""] + levels + [""]
    for b in BACKENDS:
        lines += _backend_section(study, b)
    if not any(r["backend"] == "tensorrt" for r in study["rows"]):
        lines += ["## TensorRT", "", f"tensorrt: {study.get('tensorrt')}", ""]
    lines += _peer(study)
    lines += _agreement(study) + [""]
    lines += ["## Figures", ""]
    captions = {"rate-sweep-map": "mAP change vs pruning rate per criterion (paper Fig. 1)",
                "rate-sweep-fps": "FPS change vs pruning rate per backend",
                "macs-vs-map": "Effective MACs after folding vs mAP (MobileNetV2 report Fig. 2)",
                "fps-vs-map-torch": "FPS vs mAP, PyTorch eager (paper Fig. 3)",
                "fps-vs-map-onnxruntime": "FPS vs mAP, ONNX Runtime, folded; the Ultralytics peer as a diamond",
                "fps-vs-map-tensorrt": "FPS vs mAP, TensorRT",
                "object-sizes": "Object sizes of the val split next to COCO's"}
    for name, path in figures.items():
        cap = captions.get(name) or (f"Layer importance, attr vs L1 (paper Fig. 2): {name[len('importance-'):]}"
                                     if name.startswith("importance-") else name)
        lines += [f"### {cap}", "", f"![{cap}]({Path(path).name})", ""]
    return "\n".join(lines).rstrip() + "\n"


def load_study(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / STUDY_FILE
    doc = read_json(path, "study file")
    if not isinstance(doc, dict) or doc.get("format") not in READABLE_FORMATS:
        raise XpruneError(f"{path} is not an xprune study file (expected format '{FORMAT}')")
    for key in ("models", "rows", "settings", "environment", "backends"):
        if key not in doc:
            raise XpruneError(f"{path} lacks '{key}'")
    return doc


def write_report(study_path: str | Path, out_dir: str | Path | None = None) -> Path:
    """Draw the figures and write report.md beside the study file (or into out_dir); returns report.md's path."""
    from xprune.study.plots import make_plots

    study_path = Path(study_path)
    if study_path.is_dir():
        study_path = study_path / STUDY_FILE
    study = load_study(study_path)
    out = Path(out_dir) if out_dir else study_path.parent
    figures = make_plots(study, out)
    report = out / "report.md"
    text = render(study, figures)
    def write(tmp: Path) -> None:
        tmp.write_text(text)
    write_with(report, write)
    return report
