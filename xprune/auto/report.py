"""report.md of an `xprune auto` folder, rendered from its files alone (auto.json, bench.json, pruned.plan.json):
what was removed and why, MACs, the latency ratio beside its A/A control, mAP with its interval, the verdict."""

from __future__ import annotations

from pathlib import Path

from xprune.files import read_json

DASH = "–"


def _ratio(v: dict | None) -> str:
    if not v or v.get("median") is None:
        return DASH
    return f"{v['median']:.3f} (p10 {v['p10']:.3f}, p90 {v['p90']:.3f}; {v['n']} rounds)"


def _mmacs(x) -> str:
    return DASH if x is None else f"{x / 1e6:,.1f} M"


def _searched(plan: dict) -> str:
    held = (plan.get("budget") or {}).get("held_out")
    if not held:  # a plan from before the search recorded its images: calib images after the scored ones
        return "held-out calib images (not recorded in the plan)"
    return (f"{held['split']} images {held['first'] + 1}–{held['first'] + held['images']} of {held['of']} "
            "(image-id order), none of them train images")


def _reported(verdict: dict, acc: dict) -> str:
    images = verdict.get("images")
    if not images or not images.get("left_out"):
        return f"{acc['images']} val images"
    return f"{acc['images']} val images after the search's {images['left_out']}"


def image_sets(s: dict, stages: dict, plan: dict) -> list[str]:
    """Which images each figure comes from (auto.json and the plan's record of the search)."""
    calib = stages.get("score", {}).get("calibration")
    if calib:
        scored = f"the first {calib['images']} {calib['split']} images"
        if calib.get("train_images"):
            every = "all" if calib["train_images"] == calib["images"] else calib["train_images"]
            scored += f" (**{every} of them train images**: fine for ranking, not for a budget)"
    else:
        scored = "no images (a data-free criterion)" if "calibration" in stages.get("score", {}) else "calib images"
    tuned = (f"the first {s['finetune_images']} train images" if s.get("finetune_images") else "the train images")
    lines = ["## Which images each figure comes from", "",
             f"- Layer scores ({s['method']}): {scored}.",
             f"- Budget search (every mAP and drop of the search below): {_searched(plan)}."]
    if s["finetune_epochs"]:
        lines.append(f"- Fine-tuning between steps: {tuned}.")
    lines += [f"- Reported mAP, ΔmAP and verdict: {_reported(stages['verdict'], stages['verdict']['accuracy'])}, "
              "none of them measured on by the search; latency on random inputs.", ""]
    return lines


def speed_sources(stages: dict) -> list[str]:
    """Where the speed comes from: output levels that never fire, or layers that detect."""
    split = stages.get("levels")
    if not split:
        return []
    lines = ["", "## Where the speed comes from", ""]
    if not split.get("available"):
        return lines + [f"Not split: {split.get('why', 'no level record')}."]
    usage = ", ".join(f"{lv['level']} {lv['above_threshold']} (max score {lv['max_score']:.4f})"
                      for lv in split["levels"])
    lines.append(f"Outputs above {split['threshold']} per level on the search's {split['images']} images: {usage}. "
                 + (f"Silent: {', '.join(split['silent_levels'])}." if split["silent_levels"] else "No level is silent."))
    removed = split["removed_macs"] or 1
    lines += ["", "| part of the plan | layers | MACs the fold removes | latency ratio (paired) |", "|---|---:|---:|---|"]
    silent_ratio = stages.get("bench", {}).get("silent_latency")
    full = stages.get("bench", {}).get("latency")
    live = (full["median"] / silent_ratio["median"]) if silent_ratio and full and full.get("median") else None
    lines.append(f"| silent levels only (`silent.onnx`) | {len(split['silent_layers'])} | "
                 f"{_mmacs(split['silent_macs'])} ({100 * split['silent_macs'] / removed:.0f} %) | "
                 f"{_ratio(silent_ratio) if silent_ratio else '1 (nothing removed)'} |")
    live_layers = stages.get("prune", {}).get("layers_zeroed", 0) - len(split["silent_layers"])
    lines.append(f"| live layers (the rest) | {live_layers} | {_mmacs(split['live_macs'])} "
                 f"({100 * split['live_macs'] / removed:.0f} %) | "
                 + (f"{live:.3f} (the whole plan's ratio over the silent-only one)" if live else _ratio(full)) + " |")
    return lines


def render(out: Path) -> str:
    state = read_json(out / "auto.json", "auto state")
    s, stages = state["settings"], state["stages"]
    plan = read_json(out / "pruned.plan.json", "plan")
    bench = read_json(out / "bench.json", "results file")
    rows = {r.get("role"): r for r in bench["rows"]}
    base, model = rows["baseline"], rows["candidate"]
    timing, exported = stages["bench"], stages["export"]
    acc = stages["verdict"]["accuracy"]
    lat = timing["latency"]
    backend = model["backend"] if isinstance(model.get("backend"), dict) else {}
    speedup = 1 / lat["median"] if lat.get("median") else None
    lines = [
        f"# xprune auto: {state.get('model')}", "",
        f"Generated from `auto.json`, `bench.json` and `pruned.plan.json` in this folder (`{state.get('command')}`).",
        "",
        f"- Weights `{s['weights']}`, data `{s['data']}`, criterion {s['method']}, mAP budget "
        f"{s['max_map_drop']} (absolute), {'fine-tuning ' + str(s['finetune_epochs']) + ' epoch(s) per step' if s['finetune_epochs'] else 'no fine-tuning'}.",
        f"- Environment: {bench['environment'].get('cpu')}, {bench['environment'].get('cpu_count')} logical CPUs; "
        f"{model['engine']} {backend.get('version', '')}, {backend.get('threads', model.get('threads'))} thread(s), "
        f"{model['device']}.", "",
        "## Result", "",
        "| | baseline | pruned and folded |", "|---|---:|---:|",
        f"| layers zeroed | 0 | {len(plan['selected'])} of {plan['candidates']} candidates |",
        f"| MACs (exported graph) | {_mmacs(exported['baseline']['macs_after'])} | "
        f"{_mmacs(exported['model']['macs_after'])} (−{100 * exported['model']['removed_mac_fraction']:.1f} %) |",
        f"| median latency | {base['median_ms']:.3f} ms | {model['median_ms']:.3f} ms |",
        f"| mAP@[.50:.95] ({_reported(stages['verdict'], acc)}) | {acc['baseline_map']:.4f} | "
        f"{acc['current_map']:.4f} |", "",
        f"- **Latency**: paired ratio pruned / baseline {_ratio(lat)}"
        + (f", a {speedup:.2f}x speedup" if speedup else "") + f"; A/A control (the baseline against a copy of "
        f"itself in the same run) {_ratio(timing['aa_control'])}: a ratio inside the control's spread is noise.",
        f"- **Accuracy**: ΔmAP {100 * acc['delta']:+.2f} points (95 % one-sided bounds {100 * acc['delta_low']:+.2f} "
        f"to {100 * acc['delta_high']:+.2f}, paired bootstrap over the images); against the budget of "
        f"{100 * s['max_map_drop']:g} points: **{acc['decision']}**.",
        "- Ship `model.onnx`" + (" or `model.engine`" if "engine" in stages else "") + " (raw boxes and class scores; "
        "NMS as in `xprune.models.detector.postprocess`).", ""]
    lines += image_sets(s, stages, plan)
    lines += ["## Layers removed and why", "",
              f"Ranking: {plan.get('rank', 'plain')} by {plan['method']} score, safe candidates (never a head's final "
              "predictor; the outputs must still depend on the input).", "",
              "| layer | score | conv MACs | MACs the fold removes with it alone | why |", "|---|---:|---:|---:|---|"]
    lines += [f"| `{c['layer']}` | {c['score']:.4g} | {_mmacs(c.get('macs'))} | {_mmacs(c.get('fold_macs'))} | "
              f"{c['reason']} |" for c in plan["selected"]]
    lines += speed_sources(stages)
    path = (plan.get("budget") or {}).get("path") or []
    if path and "goal" in path[0]:
        walk = plan["budget"]
        lines += ["", "## The walk toward the MAC target, step by step", "",
                  f"Toward {100 * walk['target_macs']:g} % of the exported MACs in steps of "
                  f"{100 * walk['step_macs']:g} % (halved after a step over budget); stopped by the "
                  f"{walk['stopped_by']}. Measured on {_searched(plan)}.", "",
                  "| step | goal | MACs removed | layers added | mAP zeroed | mAP fine-tuned | drop | kept |",
                  "|---:|---:|---:|---:|---:|---:|---:|---|"]
        lines += [f"| {p['step']} | {100 * p['goal']:.1f} % | {100 * p['reached']:.1f} % | {len(p['layers'])} | "
                  f"{p['map_zeroed']:.4f} | "
                  f"{DASH if p['map_finetuned'] is None else format(p['map_finetuned'], '.4f')} | {p['drop']:+.4f} | "
                  f"{'yes' if p['kept'] else 'no'} |" for p in path]
        lines += ["", "A step within the budget as zeroed is kept without fine-tuning (–)."]
    elif path:
        lines += ["", "## The budget search, step by step", "",
                  f"Measured on {_searched(plan)}.", "",
                  "| step | layers | mAP zeroed | mAP fine-tuned | drop | kept |", "|---:|---:|---:|---:|---:|---|"]
        lines += [f"| {p['step']} | {p['k']} | {p['map_zeroed']:.4f} | "
                  f"{DASH if p['map_finetuned'] is None else format(p['map_finetuned'], '.4f')} | {p['drop']:+.4f} | "
                  f"{'yes' if p['kept'] else 'no'} |" for p in path]
        lines += ["", "A step within the budget as zeroed is kept without fine-tuning (–)."]
    evaluations = (plan.get("budget") or {}).get("evaluations") or []
    if evaluations and not path:
        lines += ["", "## The budget search", "", f"Measured on {_searched(plan)}.", "",
                  "| layers | mAP | drop | within |", "|---:|---:|---:|---|"]
        lines += [f"| {e['k']} | {DASH if e['map'] is None else format(e['map'], '.4f')} | "
                  f"{DASH if e['drop'] is None else format(e['drop'], '+.4f')} | {'yes' if e['within'] else 'no'} |"
                  for e in evaluations]
    lines += ["", "## Stages", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {name} | {rec['seconds']:.0f} |" for name, rec in stages.items()]
    return "\n".join(lines) + "\n"


def write_report(out: str | Path) -> Path:
    out = Path(out)
    path = out / "report.md"
    text = render(out)
    from xprune.files import atomic_path
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path
