"""The speed/accuracy frontier: how much faster does a folded detector run for how much mAP?

For each model (YOLOv8n and SSDlite320-MobileNetV3 by default, the committed reference checkpoints where present,
else random initialisation), each criterion (attr, l1, taylor, random), each ranking (`--ranks`: per-mac, plain)
and each pruning rate, the safe plan is applied and the model is measured twice: zeroed only, and after recovery
fine-tuning (`xprune.prune.finetune`: the family's own loss, pruned layers held at zero) on the train split. Each
point is exported folded (`export_onnx`) and

- timed in ONNX Runtime (CPU) interleaved with the baseline and every other point of its model in one process, with
  an A/A control (a second copy of the baseline file); latency is the paired per-round ratio to the baseline
  (median, p10, p90), as in `xprune.study.timing`;
- evaluated on the val split in PyTorch (the folded graph is exact), with a bootstrap interval of its mAP and a
  paired one of its mAP change (`xprune.evaluate.bootstrap`).

Everything goes into frontier.json (every latency sample, per-image matches, fine-tuning losses and times, the
environment); frontier.md and frontier.png are rendered from it alone.

    python benchmarks/frontier.py                              # -> benchmarks/results/frontier.{json,md,png}
    python benchmarks/frontier.py --quick --out /tmp/frontier  # a tiny configuration: minutes
    python benchmarks/frontier.py --render-only                # the table and plot again from the JSON
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xprune.errors import XpruneError  # noqa: E402
from xprune.files import display_path, read_json, write_json, write_with  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
FORMAT = "xprune-frontier-1"
GOAL_RATIO = 0.77  # a 1.3x speedup
BUDGET = 0.01  # one mAP point
COLORS = {"attr": "tab:red", "l1": "tab:blue", "taylor": "tab:green", "random": "tab:gray", "hrank": "tab:purple",
          "gradshap": "tab:orange"}


@dataclass(frozen=True)
class Settings:
    models: tuple[str, ...] = ("yolov8n", "ssdlite320-mbv3")
    criteria: tuple[str, ...] = ("attr", "l1", "taylor", "random")
    ranks: tuple[str, ...] = ("per-mac",)
    rates: tuple[float, ...] = (0.05, 0.1, 0.15)
    weights: str = "reference"  # or "none": random initialisation
    size: int = 320
    val_images: int = 100
    calib_images: int = 32
    # fine-tuning dominates the run time: a training step of 16 images at 320 px took 11 s for YOLOv8n and 15-52 s
    # for SSDlite on the 2-core machine while other jobs ran (depthwise conv backward is most of SSDlite's step)
    finetune_epochs: int = 1  # 0: no fine-tuned points
    finetune_images: int | None = 128
    finetune_batch_size: int = 16
    finetune_lr: float = 1e-4
    runs: int = 30
    warmup_runs: int = 3
    min_s: float = 0.0
    threads: int | None = None
    resamples: int = 1000
    seed: int = 0
    order_seed: int = 0

    @classmethod
    def quick(cls, **over) -> Settings:
        """A smoke run: two criteria, two rates, 128 px (the references are trained at 320: their mAP there means
        nothing), a handful of images, one epoch, few timing rounds."""
        quick = dict(criteria=("l1", "random"), rates=(0.05, 0.1), size=128, val_images=16, calib_images=8,
                     finetune_epochs=1, finetune_images=16, finetune_batch_size=8, runs=8, warmup_runs=2,
                     resamples=200)
        return cls(**{**quick, **over})


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- measuring ------------------------------------------------------------------------------------------------------

def load_model(name: str, s: Settings, num_classes: int):
    from xprune.models import build_detector, load_checkpoint
    from xprune.reference import reference_models

    refs = reference_models() if s.weights == "reference" else {}
    if name in refs:
        return load_checkpoint(refs[name]["path"], name, s.size), f"reference ({Path(refs[name]['path']).name})"
    return build_detector(name, "none", num_classes=num_classes, input_size=s.size), "random-init"


def run_model(name: str, s: Settings, data: Path, work: Path) -> dict:
    import torch

    from xprune.bench.latency import LatencyProtocol
    from xprune.bench.run import BenchSettings, bench, open_target
    from xprune.data.coco import CocoDetectionSet, calibration_set
    from xprune.evaluate.coco_map import evaluate_map
    from xprune.export.onnx_export import export_onnx
    from xprune.importance.criteria import get_criterion
    from xprune.importance.scores import score_layers
    from xprune.export.fold.analysis import FoldAnalysis
    from xprune.prune.finetune import FinetuneSettings, finetune_layers, train_split
    from xprune.prune.plan import Infeasible, Selection, apply_plan

    t0 = time.time()
    val = CocoDetectionSet.from_folder(data, "val", s.size, limit=s.val_images)
    calib = calibration_set(data, s.size, s.calib_images)
    det, weights = load_model(name, s, val.num_classes)
    if det.category_ids is None and det.num_classes != val.num_classes:
        raise XpruneError(f"{name} has {det.num_classes} classes, the dataset {val.num_classes}")
    train = train_split(data, s.size, s.finetune_images) if s.finetune_epochs else None
    ft = FinetuneSettings(epochs=s.finetune_epochs or 1, batch_size=s.finetune_batch_size, lr=s.finetune_lr,
                          seed=s.seed)
    log(f"[{name}] {weights}: baseline mAP, export and fold analysis")
    fold = FoldAnalysis.of(det)
    base_eval = evaluate_map(det, val, per_image=True)
    files = {"baseline": work / f"{name}-baseline.onnx", "baseline-copy": work / f"{name}-baseline-copy.onnx"}
    base_export = export_onnx(det, files["baseline"], fold=False)
    files["baseline-copy"].write_bytes(files["baseline"].read_bytes())

    points, matches = [], {"baseline": base_eval["matches"]}
    for criterion in s.criteria:
        log(f"[{name}] scoring with {criterion}")
        uses_data = get_criterion(criterion).needs_data
        scores = score_layers(det, criterion, calib if uses_data else None, batch_size=4, seed=s.seed)
        for rank in s.ranks:
            selection = Selection(det, scores, "safe", rank, fold)
            measured = 0
            for rate in s.rates:
                plan = selection.plan_at(rate)
                key = {"criterion": criterion, "rank": rank, "rate": rate, "capped": False}
                if isinstance(plan, Infeasible):  # the walk ends first: its last plan, unless measured already
                    last = selection.largest()
                    if isinstance(last, Infeasible) or len(last.selected) <= measured:
                        points.append({**key, "finetuned": False, "infeasible": plan.reason})
                        continue
                    plan, key["capped"] = last, True
                measured = len(plan.selected)
                pruned = copy.deepcopy(det)
                apply_plan(pruned, plan)
                pruned.meta = {"pruning": plan.to_json()}
                variants = [(False, pruned, None)]
                if s.finetune_epochs:
                    tuned = copy.deepcopy(pruned)
                    vid = f"{criterion}-{rank}-{rate:g}"
                    log(f"[{name}] {vid}: fine-tuning {s.finetune_epochs} epoch(s) on {len(train)} images")
                    history = finetune_layers(tuned, train, plan.layers, ft, work / f"{name}-{vid}.state.pt",
                                              log=lambda line: log(f"[{name}] {vid}: {line}"))
                    variants.append((True, tuned, history))
                for finetuned, d, history in variants:
                    vid = f"{criterion}-{rank}-{rate:g}-{'finetuned' if finetuned else 'zeroed'}"
                    log(f"[{name}] {vid}: mAP and folded export")
                    ev = evaluate_map(d, val, per_image=True)
                    files[vid] = work / f"{name}-{vid}.onnx"
                    rep = export_onnx(d, files[vid], fold=True)
                    matches[vid] = ev["matches"]
                    points.append({**key, "finetuned": finetuned, "id": vid, "k": len(plan.layers),
                                   "layers": plan.layers,
                                   "candidates": plan.candidates, "map": ev["map"], "map50": ev["map50"],
                                   "macs_before": rep["macs_before"], "macs_after": rep["macs_after"],
                                   "predicted_macs_after": plan.fold["macs_after"],
                                   "removed_mac_fraction": rep["removed_mac_fraction"],
                                   "dead_outputs": rep["dead_outputs"],
                                   "finetune": None if history is None else {
                                       "epochs": len(history), "images": len(train), "settings": asdict(ft),
                                       "history": history,
                                       "seconds_per_epoch": sum(h["seconds"] for h in history) / len(history)}})
                del pruned, variants

    log(f"[{name}] timing {len(files)} ONNX models interleaved in ONNX Runtime")
    targets = []
    for vid, path in files.items():
        target = open_target(path, threads=s.threads)
        target.info["variant_id"] = vid
        targets.append(target)
    protocol = LatencyProtocol(warmup_runs=s.warmup_runs, warmup_s=0.0, runs=s.runs, min_s=s.min_s)
    timing = bench(targets, BenchSettings(protocol=protocol, interleave=True, threads=s.threads,
                                          order_seed=s.order_seed))
    rows = {r["variant_id"]: r for r in timing["rows"]}
    summarize_points(points, rows, matches, s)
    base = rows["baseline"]
    return {"model": name, "weights": weights, "input_size": s.size, "val_images": len(val),
            "torch_threads": torch.get_num_threads(),
            "baseline": {"map": base_eval["map"], "map50": base_eval["map50"], **interval_of(matches["baseline"], s),
                         "macs": base_export["macs_after"], "median_ms": base["median_ms"],
                         "map_matches": matches["baseline"].to_json()},
            "aa_control": paired(rows["baseline-copy"], base),
            "points": points, "seconds": round(time.time() - t0, 1),
            "timing": {"protocol": timing["protocol"], "environment": timing["environment"],
                       "rows": [{"variant_id": r["variant_id"], "source": Path(r["source"]).name,
                                 "source_sha256": r.get("source_sha256"), "median_ms": r["median_ms"],
                                 "samples_ms": r["samples_ms"]} for r in timing["rows"]]}}


def paired(row: dict, base: dict) -> dict:
    from xprune.bench.paired import paired_summary

    return paired_summary(row, base)


def interval_of(m, s: Settings) -> dict:
    from xprune.evaluate.bootstrap import map_interval

    low, high = map_interval(m, resamples=s.resamples, seed=s.seed)
    return {"map_low": low, "map_high": high}


def summarize_points(points: list[dict], rows: dict, matches: dict, s: Settings) -> None:
    """Latency ratio to the baseline, mAP interval, paired mAP change and its interval, for every measured point."""
    from xprune.evaluate.bootstrap import delta_interval

    base = rows["baseline"]
    for p in points:
        if "id" not in p:
            continue
        p["latency"] = {**paired(rows[p["id"]], base), "median_ms": rows[p["id"]]["median_ms"]}
        p.update(interval_of(matches[p["id"]], s))
        delta, low, high = delta_interval(matches["baseline"], matches[p["id"]], resamples=s.resamples, seed=s.seed)
        p.update({"delta_map": delta, "delta_low": low, "delta_high": high,
                  "goal": p["latency"]["median"] <= GOAL_RATIO and delta >= -BUDGET,
                  "map_matches": matches[p["id"]].to_json()})


def run(s: Settings, data: Path, out: Path, command: str) -> dict:
    import tempfile

    import torch

    from xprune.bench.environment import environment

    if s.threads:
        torch.set_num_threads(s.threads)
    t0 = time.time()
    models = []
    with tempfile.TemporaryDirectory(prefix="xprune-frontier-") as tmp:
        for name in s.models:
            models.append(run_model(name, s, data, Path(tmp)))
    doc = {"format": FORMAT, "command": command, "settings": {**asdict(s), "data": display_path(data)},
           "goal": {"latency_ratio": GOAL_RATIO, "max_map_drop": BUDGET}, "environment": environment(),
           "seconds": round(time.time() - t0, 1), "models": models}
    write_json(out, doc)
    return doc


# --- rendering (from the JSON only) ---------------------------------------------------------------------------------

def _curve_key(p: dict) -> tuple[str, str, bool]:
    return p["criterion"], p["rank"], p["finetuned"]


def _label(criterion: str, rank: str, finetuned: bool, ranks: int) -> str:
    return f"{criterion}{f' {rank}' if ranks > 1 else ''}{', fine-tuned' if finetuned else ', zeroed'}"


def best_within_budget(model: dict) -> dict | None:
    """The fastest measured point whose mAP change is within one point (None when none is)."""
    ok = [p for p in model["points"] if "id" in p and p["delta_map"] >= -BUDGET]
    return min(ok, key=lambda p: p["latency"]["median"]) if ok else None


def render_markdown(doc: dict) -> str:
    s, env = doc["settings"], doc["environment"]
    lines = [f"# Frontier: ONNX Runtime CPU latency vs mAP, folded models, {s['size']} px, batch 1", "",
             f"Generated by `benchmarks/frontier.py` from `frontier.json` ({doc['seconds'] / 60:.0f} min). Machine: "
             f"{env['cpu']}, {env['cpu_count']} cores, onnxruntime {env['libraries'].get('onnxruntime')}, torch "
             f"{env['libraries'].get('torch')}. Data: {s['data']} (val {s['val_images']} images). Ratio: median of "
             f"the per-round latency ratios to the baseline over {s['runs']} interleaved rounds [p10-p90]; "
             f"A/A: a copy of the baseline file, timed the same way. mAP@[.50:.95] in PyTorch, 95 % bootstrap "
             f"intervals over images ({s['resamples']} resamples; Δ paired). Goal: ratio <= {GOAL_RATIO} "
             f"(1.3x) with ΔmAP >= -{BUDGET}. Fine-tuning: {s['finetune_epochs']} epoch(s) on "
             f"{s['finetune_images'] or 'all'} train images, lr {s['finetune_lr']:g}, pruned layers held at zero.", ""]
    for m in doc["models"]:
        b, aa = m["baseline"], m["aa_control"]
        tuned = [p["finetune"]["seconds_per_epoch"] for p in m["points"] if p.get("finetune")]
        lines += [f"## {m['model']} ({m['weights']})", "",
                  f"Baseline mAP {b['map']:.4f} [{b['map_low']:.4f}, {b['map_high']:.4f}], {b['median_ms']:.2f} ms, "
                  f"{b['macs'] / 1e9:.2f} GMACs; A/A ratio {aa['median']:.3f} [{aa['p10']:.3f}-{aa['p90']:.3f}]."
                  + (f" Fine-tuning: {sum(tuned) / len(tuned):.0f} s per epoch on average." if tuned else ""), "",
                  "| criterion | rank | fine-tuned | rate | layers | MACs removed | latency ratio | speedup | mAP "
                  "| ΔmAP [95 %] | goal |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for p in m["points"]:
            if "id" not in p:
                lines.append(f"| {p['criterion']} | {p['rank']} | - | {p['rate']:g} | - | - | - | - | - | "
                             f"infeasible: {p['infeasible']} | |")
                continue
            lat = p["latency"]
            layers = f"{p['k']}{' (the whole walk)' if p.get('capped') else ''}"
            lines.append(
                f"| {p['criterion']} | {p['rank']} | {'yes' if p['finetuned'] else 'no'} | {p['rate']:g} | "
                f"{layers} | {100 * p['removed_mac_fraction']:.1f} % | {lat['median']:.3f} "
                f"[{lat['p10']:.3f}-{lat['p90']:.3f}] | {1 / lat['median']:.2f}x | {p['map']:.4f} | "
                f"{p['delta_map']:+.4f} [{p['delta_low']:+.4f}, {p['delta_high']:+.4f}] | "
                f"{'yes' if p['goal'] else ''} |")
        best = best_within_budget(m)
        lines += ["", "Fastest point within one mAP point: " + (
            f"{best['id']}, ratio {best['latency']['median']:.3f} ({1 / best['latency']['median']:.2f}x), ΔmAP "
            f"{best['delta_map']:+.4f} [{best['delta_low']:+.4f}, {best['delta_high']:+.4f}]"
            + (" - meets the 1.3x goal." if best["goal"] else f" - short of the {GOAL_RATIO} goal.")
            if best else "none."), ""]
    return "\n".join(lines)


def render_plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = doc["models"]
    ranks = len(doc["settings"]["ranks"])
    fig, axes = plt.subplots(1, len(models), figsize=(6.2 * len(models), 4.8), squeeze=False)
    for ax, m in zip(axes[0], models):
        b = m["baseline"]
        curves: dict[tuple, list[dict]] = {}
        for p in m["points"]:
            if "id" in p:
                curves.setdefault(_curve_key(p), []).append(p)
        for (criterion, rank, finetuned), ps in curves.items():
            ps = sorted(ps, key=lambda p: p["rate"])
            x = [p["latency"]["median"] for p in ps]
            y = [p["map"] for p in ps]
            err = [[p["map"] - p["map_low"] for p in ps], [p["map_high"] - p["map"] for p in ps]]
            ax.errorbar(x, y, yerr=err, color=COLORS.get(criterion, "tab:brown"), marker="o" if finetuned else "x",
                        linestyle="-" if finetuned else "--", capsize=2, linewidth=1.2, markersize=5,
                        label=_label(criterion, rank, finetuned, ranks))
        ax.plot([1.0], [b["map"]], marker="*", color="black", markersize=13, linestyle="none", label="baseline")
        ax.axhline(b["map"] - BUDGET, color="black", linewidth=0.8, linestyle=":", label="baseline - 1 mAP point")
        ax.axvline(GOAL_RATIO, color="tab:olive", linewidth=0.8, linestyle="-.", label=f"1.3x goal ({GOAL_RATIO})")
        aa = m["aa_control"]
        ax.axvspan(aa["p10"], aa["p90"], color="black", alpha=0.07, label="A/A p10-p90")
        ax.set_xlabel("latency ratio to baseline (ONNX Runtime CPU, paired median; lower is faster)")
        ax.set_ylabel("val mAP@[.50:.95] (95 % bootstrap interval)")
        ax.set_title(f"{m['model']} ({m['weights'].split(' ')[0]}, {m['input_size']} px)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def render(out: Path) -> tuple[Path, Path]:
    doc = read_json(out, "frontier results")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise XpruneError(f"{out} is not a frontier results file")
    md, png = out.with_suffix(".md"), out.with_suffix(".png")
    write_with(md, lambda tmp: tmp.write_text(render_markdown(doc) + "\n"))
    render_plot(doc, png)
    return md, png


# --- command line ---------------------------------------------------------------------------------------------------

def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def settings_from(args) -> Settings:
    base = Settings.quick() if args.quick else Settings()
    given = {k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(Settings)}
             and v is not None}
    s = dataclasses.replace(base, **given)
    from xprune.importance.criteria import get_criterion
    from xprune.models.zoo import family
    from xprune.prune.plan import check_rank, check_rate

    for name in s.models:
        family(name)
    for c in s.criteria:
        get_criterion(c)
    for r in s.ranks:
        check_rank(r)
    for r in s.rates:
        check_rate(r)
    if s.finetune_epochs < 0 or s.runs < 1 or s.val_images < 1:
        raise XpruneError("--finetune-epochs must be >= 0, --runs and --val-images >= 1")
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(RESULTS), help="folder for frontier.json, frontier.md and frontier.png")
    ap.add_argument("--data", default=str(ROOT / "data" / "synth"),
                    help="COCO-format dataset with train, val and calib splits (written by `xprune data synth` "
                         "when the folder does not exist)")
    ap.add_argument("--quick", action="store_true", help="a tiny configuration (Settings.quick); options still apply")
    ap.add_argument("--render-only", action="store_true", help="render frontier.md and frontier.png from the JSON")
    ap.add_argument("--models", type=_names)
    ap.add_argument("--criteria", type=_names)
    ap.add_argument("--ranks", type=_names, help="per-mac (default) and/or plain")
    ap.add_argument("--rates", type=_floats)
    ap.add_argument("--weights", choices=("reference", "none"))
    ap.add_argument("--size", type=int)
    ap.add_argument("--val-images", type=int)
    ap.add_argument("--calib-images", type=int)
    ap.add_argument("--finetune-epochs", type=int, help="0: zeroed points only")
    ap.add_argument("--finetune-images", type=int)
    ap.add_argument("--finetune-batch-size", type=int)
    ap.add_argument("--finetune-lr", type=float)
    ap.add_argument("--runs", type=int, help="interleaved timing rounds per model")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--resamples", type=int)
    args = ap.parse_args(argv)
    out = Path(args.out) / "frontier.json"
    try:
        if not args.render_only:
            s = settings_from(args)
            data = Path(args.data)
            if not data.exists():
                from xprune.data.synth import SynthConfig, generate
                generate(data, SynthConfig())
            run(s, data, out, " ".join(["python", "benchmarks/frontier.py", *(argv if argv is not None
                                                                                 else sys.argv[1:])]))
        md, png = render(out)
    except XpruneError as e:
        print(f"frontier: error: {e}", file=sys.stderr)
        return 2
    print(md.read_text())
    print(f"-> {out}, {md}, {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
