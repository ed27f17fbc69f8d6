"""The study's figures, drawn from study.json only (matplotlib, Agg backend; no display needed).

- importance-<model>.png   layer importance per layer index, attr vs L1 (and any other criterion), each normalized
                           to its maximum, log scale; the bottom 5% of candidates by each criterion and the layers the
                           safe plan actually zeroed at 5% are marked (paper Fig. 2, MobileNetV2 report Fig. 1)
- rate-sweep-map.png       %Δ mAP vs pruning rate per criterion, one panel per accuracy model (paper Fig. 1)
- rate-sweep-fps.png       %Δ FPS vs pruning rate per backend, per model and criterion
- macs-vs-map.png          effective MACs (after folding) vs mAP (MobileNetV2 report Fig. 2)
- fps-vs-map-<backend>.png FPS vs mAP per model (paper Fig. 3, MobileNetV2 report Fig. 3); the Ultralytics peer is
                           drawn on the plot of each runtime it was exported for
- object-sizes.png         the val split's object sizes: the small/medium/large mix next to COCO's, and the histogram
                           of box side over image side
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from xprune.runtime.registry import label  # noqa: E402
from xprune.study.report_tables import study_peers  # noqa: E402
from xprune.study.rows import ran_on  # noqa: E402
from xprune.study.settings import FRAMEWORK  # noqa: E402

COLORS = {"baseline": "black", "l1": "tab:blue", "attr": "tab:red", "taylor": "tab:green", "hrank": "tab:purple",
          "gradshap": "tab:orange", "random": "tab:gray"}


def color(method: str) -> str:
    return COLORS.get(method, "tab:brown")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _panels(n: int, width: float = 5.0, height: float = 3.6):
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def importance_plot(model: dict, path: Path) -> Path:
    ls = model["layer_scores"]
    idx = list(range(len(ls["layers"])))
    fig, ax = plt.subplots(figsize=(11, 5.0))
    for method, c in ls["criteria"].items():
        scores = c["scores"]
        top = max(scores) if scores and max(scores) > 0 else 1.0
        norm = [max(s / top, 1e-12) for s in scores]
        ax.plot(idx, norm, "-", color=color(method), lw=1.1, alpha=0.85, label=f"{method} (normalized)")
        pos = {n: i for i, n in enumerate(ls["layers"])}
        bottom = [pos[n] for n in c["bottom"]]
        rate = f"{c['bottom_rate']:g}"
        zeroed = [pos[n] for n in c["zeroed"].get(rate, [])]
        ax.scatter(bottom, [norm[i] for i in bottom], s=70, facecolors="none", edgecolors=color(method), lw=1.5,
                   label=f"{method}: bottom {float(rate):.0%} of candidates")
        if zeroed:
            ax.scatter(zeroed, [norm[i] for i in zeroed], s=22, color=color(method), marker="x",
                       label=f"{method}: zeroed at {float(rate):.0%} (safe plan)")
    preds = [i for i, p in enumerate(ls["predictor"]) if p]
    for i in preds:
        ax.axvline(i, color="0.85", lw=0.8, zorder=0)
    ax.set_yscale("log")
    ax.set_xlabel("conv layer index (module order; grey lines: head predictors, not candidates)")
    ax.set_ylabel("score / max score (exact zeros at 1e-12)")
    weights = {"reference": "reference checkpoint", "checkpoint": "given checkpoint"}.get(
        model["weights"]["source"], "random init")
    ax.set_title(f"{model['model']} ({weights}, {model['input_size']} px): layer importance by criterion")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    return _save(fig, path)


def _rows(study: dict, **match) -> list[dict]:
    return [r for r in study["rows"] if all(r.get(k) == v for k, v in match.items())]


def study_backends(study: dict) -> list[str]:
    """The backends the study timed on, in its settings' order."""
    timed = dict.fromkeys(r["backend"] for r in study["rows"])
    return [b for b in study["settings"].get("backends") or timed if b in timed]


def backend_label(rows: list[dict], backend: str) -> str:
    """How a figure names what ran `rows`: the registry's label of each backend that ran them (the framework slot
    holds PyTorch and JAX rows alike), with the device where it is the CPU."""
    labels = " / ".join(label(name) for name in dict.fromkeys(ran_on(r) for r in rows)) or label(backend)
    return f"{labels} (CPU)" if rows and all(r.get("device") == "cpu" for r in rows) else labels


def _rate_axes(ax, title: str, ylabel: str, legend_size: int) -> None:
    """Zero line, labels and legend of a panel over pruning rates."""
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_title(title)
    ax.set_xlabel("pruning rate (% of candidate layers)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=legend_size)


def rate_sweep_map(study: dict, path: Path) -> Path | None:
    models = [m for m in study["models"] if m["accuracy"]]
    if not models:
        return None
    fig, axes = _panels(len(models))
    backend = FRAMEWORK if _rows(study, backend=FRAMEWORK) else study["rows"][0]["backend"]
    for ax, m in zip(axes, models):
        for method in study["settings"]["criteria"]:
            rows = sorted(_rows(study, model=m["model"], backend=backend, method=method), key=lambda r: r["rate"])
            rows = [r for r in rows if r["dmap_pct"] is not None]
            xs = [0.0] + [100 * r["rate"] for r in rows]
            ys = [0.0] + [r["dmap_pct"] for r in rows]
            ax.plot(xs, ys, "o-", color=color(method), label=method)
            # the paired 95% interval of ΔmAP, as % of the baseline's mAP (map - dmap)
            bars = [(100 * r["rate"], r["dmap_pct"], 100 * r["dmap_low"] / (r["map"] - r["dmap"]),
                     100 * r["dmap_high"] / (r["map"] - r["dmap"])) for r in rows
                    if r.get("dmap_low") is not None and r.get("dmap") is not None and r["map"] - r["dmap"] > 0]
            if bars:
                ax.errorbar([b[0] for b in bars], [b[1] for b in bars],
                            yerr=[[max(b[1] - b[2], 0.0) for b in bars], [max(b[3] - b[1], 0.0) for b in bars]],
                            fmt="none", ecolor=color(method), elinewidth=1, capsize=3, alpha=0.7)
        _rate_axes(ax, f"{m['model']}: mAP change vs pruning rate", "Δ mAP@[.50:.95] vs baseline (%)", 8)
    return _save(fig, path)


def rate_sweep_fps(study: dict, path: Path) -> Path | None:
    backends = study_backends(study)
    if not backends:
        return None
    fig, axes = _panels(len(backends))
    styles = ["-", "--", ":", "-."]
    for ax, b in zip(axes, backends):
        for k, m in enumerate(study["models"]):
            for method in study["settings"]["criteria"]:
                rows = sorted(_rows(study, model=m["model"], backend=b, method=method), key=lambda r: r["rate"])
                if rows:
                    ax.plot([0.0] + [100 * r["rate"] for r in rows], [0.0] + [r["dfps_pct"] for r in rows],
                            marker="o", ls=styles[k % len(styles)], color=color(method),
                            label=f"{m['model']} {method}")
        # the A/A control (baseline timed twice) as %Δ FPS: differences inside this band are noise
        aa = [100.0 * (1.0 / m["controls"][b]["median"] - 1.0) for m in study["models"]
              if m.get("controls", {}).get(b, {}).get("median")]
        if aa:
            half = max(abs(v) for v in aa)
            ax.axhspan(-half, half, color="0.9", zorder=0, label="A/A control (largest |Δ|): noise")
        ran = backend_label(_rows(study, backend=b), b)
        _rate_axes(ax, f"{ran}: FPS change vs rate", "Δ FPS vs baseline (%)", 7)
    return _save(fig, path)


def macs_vs_map(study: dict, path: Path) -> Path | None:
    models = [m for m in study["models"] if m["accuracy"]]
    timed = study_backends(study)
    rows_backend = FRAMEWORK if FRAMEWORK in timed else (timed or [FRAMEWORK])[0]
    if not models or not any(r.get("effective_macs") for r in study["rows"]):
        return None
    fig, axes = _panels(len(models))
    for ax, m in zip(axes, models):
        rows = _rows(study, model=m["model"], backend=rows_backend)
        for r in rows:
            if r.get("effective_macs") is None or r["map"] is None:
                continue
            base = r["method"] == "baseline"
            ax.scatter(r["effective_macs"] / 1e9, r["map"], color=color(r["method"]), marker="*" if base else "o",
                       s=140 if base else 36, zorder=3)
            if not base:
                ax.annotate(f"{100 * r['rate']:g}%", (r["effective_macs"] / 1e9, r["map"]), fontsize=6,
                            xytext=(3, 2), textcoords="offset points")
        dense = [r["macs"] for r in rows]
        if dense:
            ax.axvline(dense[0] / 1e9, color="0.7", ls="--", lw=0.8, label="dense MACs (ptflops), every variant")
        for method in ["baseline", *study["settings"]["criteria"]]:
            ax.scatter([], [], color=color(method), label=method)
        ax.set_title(f"{m['model']}: MACs after folding vs mAP")
        ax.set_xlabel("effective GMACs (folded ONNX)")
        ax.set_ylabel("mAP@[.50:.95]")
        ax.legend(fontsize=7)
    return _save(fig, path)


def fps_vs_map(study: dict, backend: str, path: Path) -> Path | None:
    models = [m for m in study["models"] if m["accuracy"] and _rows(study, model=m["model"], backend=backend)]
    if not models:
        return None
    fig, axes = _panels(len(models))
    peer = study_peers(study).get(backend) or {}
    for ax, m in zip(axes, models):
        for r in _rows(study, model=m["model"], backend=backend):
            if r["map"] is None:
                continue
            base = r["method"] == "baseline"
            ax.scatter(r["fps"], r["map"], color=color(r["method"]), marker="*" if base else "o",
                       s=140 if base else 36, zorder=3)
            if not base:
                ax.annotate(f"{100 * r['rate']:g}%", (r["fps"], r["map"]), fontsize=6, xytext=(3, 2),
                            textcoords="offset points")
        for method in ["baseline", *study["settings"]["criteria"]]:
            ax.scatter([], [], color=color(method), label=method)
        if peer.get("available") and peer.get("model") == m["model"] and peer.get("map") is not None:
            ax.scatter(peer["fps"], peer["map"], color="tab:olive", marker="D", s=60, zorder=4,
                       label="Ultralytics export (unpruned)")
        ran = backend_label(_rows(study, model=m["model"], backend=backend), backend)
        ax.set_title(f"{m['model']}: FPS vs mAP, {ran}")
        ax.set_xlabel("FPS (1000 / median ms, batch 1)")
        ax.set_ylabel("mAP@[.50:.95]")
        ax.legend(fontsize=7)
    return _save(fig, path)


def object_sizes(study: dict, path: Path) -> Path | None:
    d = study.get("dataset_stats") or {}
    if not d.get("fractions"):
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    groups = ["small", "medium", "large"]
    x = list(range(len(groups)))
    left.bar([i - 0.2 for i in x], [100 * d["fractions"].get(g, 0.0) for g in groups], 0.4, label="this val split",
             color="tab:blue")
    coco = d.get("coco_fractions") or {}
    if coco:
        left.bar([i + 0.2 for i in x], [100 * coco.get(g, 0.0) for g in groups], 0.4, label="COCO", color="0.6")
    left.set_xticks(x, ["small\n< 32² px", "medium\n32²–96² px", "large\n≥ 96² px"])
    left.set_ylabel("% of objects")
    left.set_title("Object sizes by COCO's area rule")
    left.legend(fontsize=8)
    h = d.get("histogram") or {}
    if h.get("counts"):
        edges = h["edges"]
        right.bar(edges[:-1], h["counts"], [b - a for a, b in zip(edges, edges[1:])], align="edge",
                  color="tab:blue", edgecolor="white")
        right.set_xlabel(h.get("of", "box size"))
        right.set_ylabel("objects")
        right.set_title(f"Histogram ({d.get('objects', sum(h['counts']))} objects)")
    else:
        right.set_visible(False)
    return _save(fig, path)


def make_plots(study: dict, out_dir: str | Path) -> dict[str, Path]:
    """Every figure the report embeds; {name: path}. Figures without data (no accuracy model) are left out."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs: dict[str, Path | None] = {}
    for m in study["models"]:
        figs[f"importance-{m['model']}"] = importance_plot(m, out / f"importance-{m['model']}.png")
    figs["rate-sweep-map"] = rate_sweep_map(study, out / "rate-sweep-map.png")
    figs["rate-sweep-fps"] = rate_sweep_fps(study, out / "rate-sweep-fps.png")
    figs["macs-vs-map"] = macs_vs_map(study, out / "macs-vs-map.png")
    for b in study_backends(study):
        figs[f"fps-vs-map-{b}"] = fps_vs_map(study, b, out / f"fps-vs-map-{b}.png")
    figs["object-sizes"] = object_sizes(study, out / "object-sizes.png")
    return {k: v for k, v in figs.items() if v is not None}
