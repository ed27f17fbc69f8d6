"""Render a study (study.json from `run_study`) as report.md plus PNG figures. Every number in the report is read
from the JSON (a checkpoint's reference mAP, where the study did not copy it, from the reference JSON in
`xprune/reference/` with the checkpoint's SHA-256); nothing is measured here, so `write_report` can be rerun on a
committed study at any time (`xprune study --render-only`, `benchmarks/reproduce.py --render-only`).

This module: the run's record (machine, settings, dataset, backends), the page and the file; `report_tables` the
measured tables (Table 2 per backend, the peer), `report_models` the per-model sections, `report_format` the number
formats."""

from __future__ import annotations

from pathlib import Path

from xprune.errors import XpruneError
from xprune.files import read_json, write_with
from xprune.runtime.registry import BACKENDS, map_backends

from xprune.study.report_format import DASH, f_frac, f_int, f_rate, md_table
from xprune.study.report_models import agreement, head_levels, models_table
from xprune.study.report_tables import backend_section, peer_section
from xprune.study.settings import FORMAT, READABLE_FORMATS, STUDY_FILE

__all__ = ["DASH", "load_study", "render", "write_report"]  # DASH: the tests read tables back


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
    exported = [b.label for b in map_backends() if b.name in s.get("backends", [])]
    runtimes = f"PyTorch and, for every variant's exported file, {' and '.join(exported)}" \
        if s.get("onnx_map") and exported else "PyTorch"
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
    lines += md_table(["Objects", "This val split", "COCO"],
                      [[names[k], f_frac(d["fractions"].get(k)), f_frac(coco.get(k))] for k in names])
    h = d.get("histogram")
    if h and h.get("counts"):
        edges, counts = h["edges"], h["counts"]
        total = max(sum(counts), 1)
        lines += ["", f"Histogram of {h.get('of', 'box size')}:", ""]
        lines += md_table(["Bin", *[f"{a:g}–{b:g}" for a, b in zip(edges, edges[1:])]],
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


def render(study: dict, figures: dict[str, Path]) -> str:
    lines = ["# Explainability-guided layer pruning, reproduced: attribution vs L1", "",
             "Generated by `xprune.study.report` from `study.json`; every number below is read from that file "
             "(raw latency samples: `bench/*.json`; a reference mAP the study did not copy: the checkpoint's JSON in "
             "`xprune/reference/`, named in its cell).", ""]
    lines += _environment(study) + [""]
    lines += ["## Settings", ""] + _settings(study) + [""]
    lines += _dataset(study)
    lines += ["## Backends", ""] + _backends(study) + [""]
    lines += ["## Models", ""] + models_table(study) + [
        "", "Speed-only models have no trained weights here: random initialisation, so no mAP is reported for them "
        "and their attr ranking is that of an untrained network.", ""]
    levels = head_levels(study)
    if levels:
        lines += ["Which output levels detect anything (the baseline on the val images):", ""] + levels + [""]
    for b in BACKENDS:
        lines += backend_section(study, b)
    if not any(r["backend"] == "tensorrt" for r in study["rows"]):
        lines += ["## TensorRT", "", f"tensorrt: {study.get('tensorrt')}", ""]
    lines += peer_section(study)
    lines += agreement(study) + [""]
    lines += ["## Figures", ""]
    captions = {"rate-sweep-map": "mAP change vs pruning rate per criterion (paper Fig. 1)",
                "rate-sweep-fps": "FPS change vs pruning rate per backend",
                "macs-vs-map": "Effective MACs after folding vs mAP (MobileNetV2 report Fig. 2)",
                "fps-vs-map-torch": "FPS vs mAP, PyTorch eager (paper Fig. 3)",
                "fps-vs-map-onnxruntime": "FPS vs mAP, ONNX Runtime, folded; the Ultralytics peer as a diamond",
                "fps-vs-map-tensorrt": "FPS vs mAP, TensorRT",
                "fps-vs-map-openvino": "FPS vs mAP, OpenVINO (fp32), folded; the Ultralytics peer as a diamond",
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
