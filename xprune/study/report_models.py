"""The study report's per-model sections: the model table (weights, reference mAP, layers that score zero), which
output levels detect anything, and whether the criteria agree, with the verdicts each of these supports."""

from __future__ import annotations

from pathlib import Path

from xprune.study.report_format import DASH, f_frac, f_map, f_rate, md_table
from xprune.study.stats import ZERO_FRACTION_OF_MEDIAN, scores_zero, zero_scores

# what `stats.scores_zero` counts as scoring zero, e.g. "0 or < 1e-9 × median"
ZERO_TEXT = f"0 or < {ZERO_FRACTION_OF_MEDIAN:.0e}".replace("e-0", "e-") + " × median"


def reference_map(study: dict, weights: dict) -> dict:
    """The val mAP the checkpoint's reference JSON records: as the study copied it, or, for weights given by path
    (`--weights`), from the JSON in `xprune/reference/` whose SHA-256 is the checkpoint's. {} when there is none."""
    if weights.get("reference_val_map") is not None:
        return {"map": weights["reference_val_map"], "images": weights.get("reference_val_images")}
    if not weights.get("sha256"):
        return {}
    from xprune.reference import reference_infos
    for info in reference_infos(Path(study.get("dataset") or "").name).values():
        if info.get("sha256") == weights["sha256"] and info.get("val_map") is not None:
            return {"map": info["val_map"], "images": info.get("val_images"), "file": f"{info['model']}-"
                    f"{info.get('dataset')}.json"}
    return {}


def reference_cell(study: dict, weights: dict) -> str:
    ref = reference_map(study, weights)
    notes = [f"{ref['images']} images" if ref.get("images") else "", f"`{ref['file']}`" if ref.get("file") else ""]
    notes = [n for n in notes if n]
    return f_map(ref.get("map")) + (f" ({'; '.join(notes)})" if notes else "")


def models_table(study: dict) -> list[str]:
    head = ["Model", "Weights", "Accuracy rows", "Input px", "Conv layers", "Candidates", "Baseline mAP (here)",
            "Reference mAP (checkpoint's JSON)", f"Candidates scoring {ZERO_TEXT} (in the bottom 5%)",
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
                     reference_cell(study, w), zero_cell(m), f"{max(errs):.1e}" if errs else DASH,
                     f"{m['seconds']:.0f}"])
    return md_table(head, rows)


def head_levels(study: dict) -> list[str]:
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
    """Per criterion, the layers scoring 0 or < 1e-9 × its median (`stats.zero_scores`), counted from the scores
    themselves: a study file's own "zero_scores" may be from before near-zero scores were counted."""
    return zero_scores(model["layer_scores"])


def zero_cell(model: dict) -> str:
    return "; ".join(f"{method} {z['candidates']} of {z['candidate_total']} ({z['bottom']} of {z['bottom_size']})"
                     for method, z in zero_counts(model).items()) or DASH


def agreement(study: dict) -> list[str]:
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
    lines += md_table(head, rows)
    lines += ["", "Overlap = |A ∩ B| / |A| of the layers each criterion picks.", ""]
    return lines + zero_verdicts(study) + infeasible_plans(study)


def zero_verdicts(study: dict) -> list[str]:
    """How many layers each criterion scores zero, and which: a zero score ranks nothing."""
    lines = []
    for m in study["models"]:
        for method, z in zero_counts(m).items():
            lines.append(f"- {m['model']}: {method} scores {ZERO_TEXT} for {z['candidates']} of {z['candidate_total']} "
                         f"candidate layers ({z['layers']} of all conv layers); {z['bottom']} of the "
                         f"{z['bottom_size']} layers in its bottom {f_rate(z['bottom_rate'])} do"
                         + (" — that part of its ranking orders nothing measured (exact ties go by layer order)"
                            if z["bottom"] > 1 else ""))
    for m in study["models"]:
        ls = m["layer_scores"]
        for method in ls["criteria"]:
            zero = [n for n, z, cand in zip(ls["layers"], scores_zero(ls, method), ls["candidate"]) if cand and z]
            if zero:
                lines.append(f"- {m['model']}: {len(zero)} candidate layer(s) score {ZERO_TEXT} by {method} "
                             f"({', '.join(zero[:6])}{', ...' if len(zero) > 6 else ''})"
                             + (": the loss's gradient at their output is zero or vanishing on the calibration "
                                "images, so zeroing them leaves that loss there all but unchanged (it can still "
                                "change other images)" if method == "attr" else ""))
    return lines


def infeasible_plans(study: dict) -> list[str]:
    return [f"- {m['model']} {method} at {f_rate(float(rate))}: not reachable — {p['infeasible']}"
            for m in study["models"] for method, per_rate in m["plans"].items() for rate, p in per_rate.items()
            if "infeasible" in p]
