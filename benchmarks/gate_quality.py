"""How good is the CI gate on this machine? False alarms on A/A runs, detection of known +5 % and +10 % slowdowns,
for every way of comparing, with every run a separate process; and the accuracy gate on real pruned models.

    python benchmarks/gate_quality.py                 # 80 repetitions x 4 processes of 30 samples (see below)
    python benchmarks/gate_quality.py --quick         # smoke run (8 repetitions, a small accuracy part)
    python benchmarks/gate_quality.py --report-only   # re-render the .md from the .json
    python benchmarks/gate_quality.py --rescore       # judge the recorded runs again with today's gate code

Three plain conv nets (`xprune.bench.drift.conv_net`, written as ONNX files): A (a stem and 20 equal 3x3 convs
at 48x48), B5 = A plus one more equal conv (+5.0 % MACs) and B10 = A plus two (+10.0 %): the injected slowdowns.
Each repetition starts four `xprune bench` processes in shuffled order, exactly as CI jobs would run them (a
fresh interpreter, fresh ONNX Runtime sessions, the command's own warm-up, `--reference-workload`):

    A, B5, B10 each alone                         -> one results file each (a "separate run")
    A, a copy of A, B5, B10 with --interleave     -> one file; its A/B ratios are the true slowdowns

and the gate is scored three ways:

- one pair of separate runs (`xprune gate --baseline a.json --current b.json`): the A run of repetition i
  against the A, B5 and B10 runs of repetition i + lag (lag N/2: the baseline recorded well before);
- history mode (`xprune gate --history DIR --current b.json`): the A runs of the W repetitions before i as the
  history, against repetition i's A, B5 and B10 runs (W = each of --windows);
- one interleaved run (`xprune gate --interleaved`): A against its copy, B5 and B10 in the same process.

every comparison in absolute and relative (model / reference workload) mode. False alarms = A/A comparisons
that fail; detection = A/B5 and A/B10 comparisons that fail; with counts and Wilson 95 % intervals.

The accuracy part evaluates the reference YOLOv8n (trained by this project) on synthetic validation images it
was not trained on, unchanged (re-evaluated in PyTorch, and exported to ONNX and evaluated in ONNX Runtime)
and pruned by L1 and attr at several rates (scored on that set's 32 calib images), and runs the accuracy gate
(`--max-map-drop 0.01`, paired bootstrap over images) on all images and on random subsets of them.

Everything - every results document, the environment, every comparison, the rates - goes to
benchmarks/results/gate_quality.json (atomically), and gate_quality.md is rendered from that JSON.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xprune.bench.drift import conv_net  # noqa: E402
from xprune.bench.environment import environment  # noqa: E402
from xprune.bench.gate import CONTENDED_SPREAD, gate, history_gate, spread, wilson_interval  # noqa: E402
from xprune.bench.results import read_results  # noqa: E402
from xprune.errors import XpruneError  # noqa: E402
from xprune.files import read_json, write_with  # noqa: E402

FORMAT = "xprune-gate-quality-2"
RESULTS_DIR = ROOT / "benchmarks" / "results"
NET = dict(in_channels=3, channels=34, size=48, depth=20, seed=1)
VARIANTS = {"A": 0, "B5": 1, "B10": 2}  # extra layers over A
KINDS = {"A/A": "A", "+5%": "B5", "+10%": "B10"}  # comparison kind -> current model (the baseline is always A)
MAX_REGRESSION, CONFIDENCE, RESAMPLES = 0.05, 0.95, 2000
MAX_MAP_DROP = 0.01
SCORE_IMAGES = 32  # calib images the accuracy part scores the layers on (the study uses 32 too)
# The rule gate() applies, and the alternatives docs/ci-gate.md argues against, scored on the same pairs.
RULES = {
    "ratio > 1+m and ci_low > 1 (gate)": lambda r, lo, m: r > 1 + m and lo > 1,
    "ratio > 1+m (point estimate only)": lambda r, lo, m: r > 1 + m,
    "ci_low > 1 (significantly slower)": lambda r, lo, m: lo > 1,
    "ci_low > 1+m (confidently beyond tolerance)": lambda r, lo, m: lo > 1 + m,
}
MODES = {"absolute": False, "relative": True}
# One bench process: the CLI entry point in a fresh interpreter (no console script needed).
CLI = "import sys; from xprune.cli import main; sys.exit(main(sys.argv[1:]))"


# --- measuring -------------------------------------------------------------------------------------------------

def bench_process(targets: list[Path], out: Path, args, interleave: bool = False) -> dict:
    """One `xprune bench` in its own process; returns its results document."""
    cmd = [sys.executable, "-c", CLI, "bench", *map(str, targets), "--reference-workload", "--threads",
           str(args.threads), "--runs", str(args.samples), "--warmup-runs", "10", "--min-seconds", "0",
           "--out", str(out), *(["--interleave"] if interleave else [])]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "False", "YOLO_VERBOSE": "False"}
    proc = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise XpruneError(f"`xprune bench` failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return read_results(out)


def write_models(work: Path) -> tuple[dict[str, Path], dict[str, int]]:
    paths, macs = {}, {}
    for name, extra in VARIANTS.items():
        model, macs[name], _ = conv_net(**NET, extra_layers=extra)
        paths[name] = work / f"{name}.onnx"
        paths[name].write_bytes(model)
    paths["A2"] = work / "A2.onnx"  # the same bytes: the interleaved A/A control
    shutil.copy(paths["A"], paths["A2"])
    return paths, macs


def measure(args, work: Path, log) -> tuple[list[dict], dict[str, int]]:
    paths, macs = write_models(work)
    runs_dir = work / "runs"
    runs_dir.mkdir(exist_ok=True)
    # One unrecorded process first, so the first recorded one does not pay for a cold page cache alone.
    bench_process([paths["A"]], runs_dir / "warm.json", args)
    shuffle = random.Random(args.seed)
    reps, t0 = [], time.perf_counter()
    for i in range(args.runs):
        order = [*VARIANTS, "interleaved"]
        shuffle.shuffle(order)
        rep: dict = {"order": order, "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        for what in order:
            if what == "interleaved":
                rep[what] = bench_process([paths[k] for k in ("A", "A2", "B5", "B10")], runs_dir / f"{i}-il.json",
                                          args, interleave=True)
            else:
                rep[what] = bench_process([paths[what]], runs_dir / f"{i}-{what}.json", args)
        reps.append(rep)
        elapsed = time.perf_counter() - t0
        il = rep["interleaved"]["rows"]
        log(f"[{i + 1}/{args.runs}] A {rep['A']['rows'][0]['median_ms']:.3f} ms, B10 "
            f"{rep['B10']['rows'][0]['median_ms']:.3f} ms, interleaved B10/A {_paired(il[0], il[3]):.4f}  "
            f"({elapsed:.0f} s, ~{elapsed / (i + 1) * (args.runs - i - 1):.0f} s left)")
    return reps, macs


def _paired(a: dict, b: dict) -> float:
    """Median over rounds of b/a: both timed in every round of one interleaved process."""
    return statistics.median(tb / ta for ta, tb in zip(a["samples_ms"], b["samples_ms"]))


# --- scoring ---------------------------------------------------------------------------------------------------

def _run_level(row: dict, relative: bool) -> float:
    """The run's statistic in history mode: its median latency, or its median model/reference ratio."""
    if relative:
        return statistics.median(m / r for m, r in zip(row["samples_ms"], row["reference_samples_ms"]))
    return statistics.median(row["samples_ms"])


def _one_row(doc: dict, index: int) -> dict:
    return {**doc, "rows": [doc["rows"][index]]}


def judge(baseline: dict, current: dict) -> dict:
    """Both modes of the one-pair gate on two one-row documents."""
    out = {"contended": any(spread(d["rows"][0]["reference_samples_ms"]) > CONTENDED_SPREAD
                            for d in (baseline, current))}
    for mode, relative in MODES.items():
        r = gate(baseline, current, MAX_REGRESSION, CONFIDENCE, RESAMPLES, seed=0, relative=relative).rows[0]
        out[mode] = {"ratio": r.ratio, "ci_low": r.ci_low, "ci_high": r.ci_high, "decision": r.decision}
    return out


def judge_history(history: list[dict], current: dict, window: int) -> dict:
    out = {}
    for mode, relative in MODES.items():
        for tol in (MAX_REGRESSION, 0.0):
            r = history_gate(history, current, max_regression=tol, window=window, min_history=min(window, 5),
                             relative=relative).rows[0]
            out[f"{mode}@{tol:g}"] = {"ratio": r.ratio, "threshold": r.threshold, "detectable": r.detectable,
                                      "spread": r.spread, "rule": r.rule, "decision": r.decision}
    return out


def _rate(k: int, n: int) -> dict:
    lo, hi = wilson_interval(k, n)
    return {"count": k, "n": n, "rate": k / n if n else None, "wilson95": [lo, hi]}


def _quantiles(v: list[float]) -> dict:
    if not v:
        return {}
    q = np.quantile(v, [0.0, 0.05, 0.5, 0.95, 1.0])
    return dict(zip(("min", "p5", "median", "p95", "max"), (float(x) for x in q)))


def analyse_pairs(pairs: list[dict]) -> dict:
    """Rates of the one-pair gate (and of the alternative rules) per mode and kind."""
    out: dict = {"contended": {k: sum(p["contended"] for p in pairs if p["kind"] == k) for k in KINDS}}
    for mode in MODES:
        m: dict = {}
        for kind in KINDS:
            ps = [p[mode] for p in pairs if p["kind"] == kind]
            m[kind] = {"fails": _rate(sum(p["decision"] == "regression" for p in ps), len(ps)),
                       "inconclusive": sum(p["decision"] == "inconclusive" for p in ps),
                       "ratio_quantiles": _quantiles([p["ratio"] for p in ps]),
                       "rules": {rule: _rate(sum(fn(p["ratio"], p["ci_low"], MAX_REGRESSION) for p in ps), len(ps))
                                 for rule, fn in RULES.items()}}
        log_aa = [math.log(p[mode]["ratio"]) for p in pairs if p["kind"] == "A/A"]
        m["aa_log_ratio_sd"] = statistics.stdev(log_aa) if len(log_aa) > 1 else None
        out[mode] = m
    return out


def analyse_history(trials: list[dict]) -> dict:
    out: dict = {}
    for setting in trials[0]["judged"] if trials else []:
        s: dict = {}
        for kind in KINDS:
            ts = [t["judged"][setting] for t in trials if t["kind"] == kind]
            s[kind] = {"fails": _rate(sum(t["decision"] == "regression" for t in ts), len(ts)),
                       "ratio_quantiles": _quantiles([t["ratio"] for t in ts])}
        aa = [t["judged"][setting] for t in trials if t["kind"] == "A/A"]
        s["threshold_median"] = statistics.median(t["threshold"] for t in aa) if aa else None
        s["detectable_median"] = statistics.median(t["detectable"] for t in aa) if aa else None
        s["spread_median"] = statistics.median(t["spread"] for t in aa) if aa else None
        s["rules"] = sorted({t.get("rule", "normal") for t in aa})  # results before the rank rule: all normal
        out[setting] = s
    return out


def score_latency(reps: list[dict], args) -> dict:
    n = len(reps)
    lag = (n // 2 if args.lag is None else args.lag) % n
    separate = []
    for i in range(n):
        j = (i + lag) % n
        for kind, cur in KINDS.items():
            separate.append({"kind": kind, "baseline_rep": i, "current_rep": j, **judge(reps[i]["A"], reps[j][cur])})
    history = {}
    for w in args.windows:
        trials = []
        for i in range(w, n):
            hist = [reps[k]["A"] for k in range(i - w, i)]
            for kind, cur in KINDS.items():
                trials.append({"kind": kind, "current_rep": i, "judged": judge_history(hist, reps[i][cur], w)})
        history[str(w)] = {"trials": trials, "analysis": analyse_history(trials)}
    interleaved = []
    for i, rep in enumerate(reps):
        doc = rep["interleaved"]
        base = _one_row(doc, 0)
        for kind, index in (("A/A", 1), ("+5%", 2), ("+10%", 3)):
            interleaved.append({"kind": kind, "baseline_rep": i, "current_rep": i, **judge(base, _one_row(doc, index))})
    slow = {}
    for name, index in (("B5", 2), ("B10", 3)):
        inter = [_paired(r["interleaved"]["rows"][0], r["interleaved"]["rows"][index]) for r in reps]
        sep = [r[name]["rows"][0]["median_ms"] / r["A"]["rows"][0]["median_ms"] for r in reps]
        slow[name] = {"interleaved_paired_median": statistics.median(inter),
                      "interleaved_p5": float(np.quantile(inter, 0.05)),
                      "interleaved_p95": float(np.quantile(inter, 0.95)),
                      "separate_runs_median": statistics.median(sep)}
    # the between-run scatter history mode has to model: each A run's level relative to the runs' median
    levels = {}
    for mode, relative in MODES.items():
        vals = [_run_level(r["A"]["rows"][0], relative) for r in reps]
        med = statistics.median(vals)
        levels[mode] = [v / med for v in vals]
    return {"lag": lag, "a_run_levels": levels, "separate": {"pairs": separate, "analysis": analyse_pairs(separate)},
            "history": history, "interleaved": {"pairs": interleaved, "analysis": analyse_pairs(interleaved)},
            "true_slowdown": slow}


# --- the accuracy gate on real models ----------------------------------------------------------------------------

def measure_accuracy(args, work: Path, log) -> dict:
    """Per-image evaluations of the reference YOLOv8n, unchanged and pruned, and the accuracy gate on all images
    and on random subsets of them."""
    import torch

    from xprune.bench.gate import judge_accuracy
    from xprune.bench.run import open_target
    from xprune.data.coco import CocoDetectionSet
    from xprune.data.synth import SynthConfig, generate
    from xprune.evaluate.coco_map import evaluate_map, evaluate_predictions
    from xprune.export.onnx_export import export_onnx
    from xprune.data.coco import calibration_set
    from xprune.importance.scores import score_layers
    from xprune.models import build_detector
    from xprune.prune.plan import apply_plan, plan_pruning
    from xprune.reference import reference_models

    torch.set_num_threads(args.threads)
    ref = reference_models()["yolov8n"]
    data = generate(work / "data", SynthConfig(image_size=ref["input_size"], train=1, val=args.accuracy_images,
                                               calib=SCORE_IMAGES, seed=args.accuracy_seed))
    val = CocoDetectionSet.from_folder(data, "val", ref["input_size"])
    variants: dict[str, dict] = {}

    def evaluate(name: str, det) -> None:
        t = time.perf_counter()
        m = evaluate_map(det, val, batch_size=8, per_image=True)
        variants[name] = {"map": m["map"], "matches": m["matches"]}
        log(f"accuracy: {name}: mAP {m['map']:.4f} ({time.perf_counter() - t:.0f} s)")

    base = build_detector("yolov8n", ref["path"])
    evaluate("baseline", base)
    evaluate("unchanged, evaluated again", build_detector("yolov8n", ref["path"]))
    onnx_path = work / "yolov8n-ref.onnx"
    export_onnx(base, onnx_path)
    target = open_target(onnx_path, threads=args.threads)
    with target.runner:
        m = evaluate_predictions(target.runner.predict, val, target.info.get("category_ids"), batch_size=1,
                                 per_image=True)
    variants["unchanged, exported to ONNX Runtime"] = {"map": m["map"], "matches": m["matches"]}
    log(f"accuracy: ONNX export: mAP {m['map']:.4f}")
    for method in ("l1", "attr"):
        # scored here, on this dataset's calib images: the study's score files may belong to other weights
        scores = score_layers(base, method, calibration_set(data, ref["input_size"], SCORE_IMAGES), batch_size=8)
        for rate in args.prune_rates:
            det = build_detector("yolov8n", ref["path"])
            plan = plan_pruning(det, scores, rate, "safe")
            apply_plan(det, plan)
            evaluate(f"{method} {100 * rate:g}% ({len(plan.selected)} layers)", det)

    rng = np.random.default_rng(args.seed)
    n = len(val.image_ids)
    subsets = [sorted(rng.choice(n, size=min(args.subset_images, n), replace=False).tolist())
               for _ in range(args.accuracy_subsets)]
    base_m = variants["baseline"]["matches"]
    out = {"images": n, "subset_images": min(args.subset_images, n), "subsets": len(subsets),
           "max_map_drop": MAX_MAP_DROP, "resamples": args.map_resamples, "subset_resamples": args.subset_resamples,
           "variants": {}}
    row = lambda m: {"map": m.map(), "map_matches": m.to_json()}  # noqa: E731  (what bench records)
    for name, v in variants.items():
        if name == "baseline":
            continue
        t = time.perf_counter()
        full = judge_accuracy(row(base_m), row(v["matches"]), name, MAX_MAP_DROP, CONFIDENCE, args.map_resamples, 0)
        subs = [asdict(judge_accuracy(row(base_m.subset(s)), row(v["matches"].subset(s)), name, MAX_MAP_DROP,
                                      CONFIDENCE, args.subset_resamples, k)) for k, s in enumerate(subsets)]
        out["variants"][name] = {"all_images": asdict(full), "subsets": subs,
                                 "fails_on_subsets": _rate(sum(s["decision"] == "regression" for s in subs),
                                                           len(subs)),
                                 "inconclusive_on_subsets": sum(s["decision"] == "inconclusive" for s in subs)}
        log(f"accuracy: {name}: delta {100 * full.delta:+.2f} points, {full.decision}; fails on "
            f"{out['variants'][name]['fails_on_subsets']['count']}/{len(subs)} subsets "
            f"({time.perf_counter() - t:.0f} s)")
    out["baseline_map"] = base_m.map()
    return out


# --- report ------------------------------------------------------------------------------------------------------

def _pct(r: dict) -> str:
    if not r or not r["n"]:
        return "-"
    return f"{r['count']}/{r['n']} = {100 * r['rate']:.1f}% [{100 * r['wilson95'][0]:.1f}, {100 * r['wilson95'][1]:.1f}]"


def _pairs_table(a: dict) -> list[str]:
    lines = ["| mode | false alarms (A/A) | detection of +5% | detection of +10% | inconclusive A/A, +5%, +10% "
             "| sd of log ratio, A/A | A/A ratio p5-p95 |", "|---|---|---|---|---|---:|---|"]
    for mode in MODES:
        m = a[mode]
        qa = m["A/A"]["ratio_quantiles"]
        lines.append(f"| {mode} | {_pct(m['A/A']['fails'])} | {_pct(m['+5%']['fails'])} | {_pct(m['+10%']['fails'])} "
                     f"| {', '.join(str(m[k]['inconclusive']) for k in KINDS)} "
                     f"| {100 * (m['aa_log_ratio_sd'] or 0):.2f}% "
                     f"| {qa.get('p5', float('nan')):.3f}-{qa.get('p95', float('nan')):.3f} |")
    return lines


def render_markdown(doc: dict) -> str:
    s, lat, env = doc["settings"], doc["latency"], doc["environment"]
    lines = [
        "# CI gate quality", "",
        f"Generated by `benchmarks/gate_quality.py` from `{doc['json_name']}`"
        f"{' (QUICK smoke run: too few repetitions to mean anything)' if s['quick'] else ''}.", "",
        f"- Machine: {env.get('cpu')}, {env.get('cpu_count')} logical CPUs; onnxruntime "
        f"{env.get('libraries', {}).get('onnxruntime')}, {s['threads']} intra-op thread(s), spinning off; "
        f"{doc['started']}; wall time {doc['wall_s']:.0f} s."]
    if doc.get("rescored"):
        lines.append(f"- Judged again on {doc['rescored']} (`--rescore`): the runs measured on {doc['started']}, "
                     f"the gate code of that later date.")
    if lat is not None:
        lines += _latency_markdown(s, lat)
    acc = doc.get("accuracy")
    if acc:
        lines += _accuracy_markdown(acc)
    return "\n".join(lines)


def _latency_markdown(s: dict, lat: dict) -> list[str]:
    sd = lat["true_slowdown"]
    lines = [
        f"- {s['repetitions']} repetitions; each: four `xprune bench` processes in shuffled order (A, B5, B10 "
        f"alone, and all four interleaved), {s['samples']} samples each after the command's warm-up, reference "
        f"workload timed after each sample.",
        f"- A: {s['macs']['A'] / 1e6:.1f} M MACs; B5 x{s['macs']['B5'] / s['macs']['A']:.4f}; "
        f"B10 x{s['macs']['B10'] / s['macs']['A']:.4f}.",
        *[f"- Measured slowdown {k}/A: interleaved {v['interleaved_paired_median']:.4f} (repetitions' p5-p95 "
          f"{v['interleaved_p5']:.4f}-{v['interleaved_p95']:.4f}); separate processes {v['separate_runs_median']:.4f}."
          for k, v in sd.items()],
        f"- Gate: max_regression {s['max_regression']}, confidence {s['confidence']}, {s['resamples']} resamples; "
        f"history mode: A/A false-alarm rate {s['false_alarm']}.", "",
        "## Separate processes, one pair of runs (`xprune gate --baseline a.json --current b.json`)", "",
        f"The A run of repetition i against the runs of repetition i+{lat['lag']} (mod N).", "",
        *_pairs_table(lat["separate"]["analysis"]), "",
        "Decision rules compared on the same pairs (false alarms / detection of +10 %):", "",
        "| rule | " + " | ".join(MODES) + " |", "|---|" + "---|" * len(MODES)]
    sep = lat["separate"]["analysis"]
    for rule in RULES:
        lines.append(f"| {rule} | " + " | ".join(
            f"{sep[mode]['A/A']['rules'][rule]['count']}/{sep[mode]['A/A']['rules'][rule]['n']} / "
            f"{sep[mode]['+10%']['rules'][rule]['count']}/{sep[mode]['+10%']['rules'][rule]['n']}" for mode in MODES)
            + " |")
    lines.append("")
    for mode, relative in MODES.items():
        levels = sorted(lat["a_run_levels"][mode]) if "a_run_levels" in lat else []
        if levels:
            lines.append(f"- Every A run's median{' model/reference ratio' if relative else ''}, divided by their "
                         f"median, sorted ({mode}): " + " ".join(f"{v:.3f}" for v in levels) + ".")
    lines += ["", "## Separate processes, history mode (`xprune gate --history DIR --current b.json`)", "",
              "The A runs of the W repetitions before i as the history, against the runs of repetition i. "
              "Tolerance 0.05 is the default (`--max-regression`, a floor under the threshold); tolerance 0 shows "
              "the threshold from the spread alone.", "",
              "Rule: 'rank' = slower than the ceil((W + 1) x 0.95)-th smallest history run (at W = 20: slower than "
              "all 20), distribution-free; 'normal' = more than k robust spreads above the history's median, k "
              "exact for normally scattered runs (histories under 19 runs at 5 %).", "",
              "| W | mode | rule | tolerance | false alarms (A/A) | detection of +5% | detection of +10% | median threshold "
              "| median detectable (80%) | median spread |", "|---:|---|---|---:|---|---|---|---:|---:|---:|"]
    for w, h in lat["history"].items():
        for setting, a in h["analysis"].items():
            mode, tol = setting.split("@")
            rule = ", ".join(a.get("rules", ["normal"]))
            lines.append(f"| {w} | {mode} | {rule} | {tol} | {_pct(a['A/A']['fails'])} | {_pct(a['+5%']['fails'])} "
                         f"| {_pct(a['+10%']['fails'])} | {a['threshold_median']:.3f} | {a['detectable_median']:.3f} "
                         f"| {100 * a['spread_median']:.2f}% |")
    lines += ["", "## One interleaved run (`xprune bench CANDIDATE --baseline BASELINE`, `xprune gate --interleaved`)",
              "", "A against a copy of itself, B5 and B10, timed round by round in one process.", "",
              *_pairs_table(lat["interleaved"]["analysis"]), "",
              "Rates with Wilson 95 % intervals in brackets. Targets: history mode A/A false alarms <= 5 %, "
              "detection of +10 % reported (aim >= 80 %); interleaved <= 1 % false alarms and >= 95 % detection "
              "of +10 %.", ""]
    return lines


def _accuracy_markdown(acc: dict) -> list[str]:
    lines = ["", "## Accuracy gate (`xprune gate --max-map-drop 0.01`)", "",
             f"Reference YOLOv8n on {acc['images']} synthetic validation images (baseline mAP "
             f"{acc['baseline_map']:.4f}); each variant against the baseline on all images, and on "
             f"{acc['subsets']} random subsets of {acc['subset_images']} images; paired bootstrap, "
             f"{acc['resamples']} resamples ({acc['subset_resamples']} on a subset).", "",
             "| variant | mAP | delta, points (95% one-sided bounds) | decision, all images "
             "| fails on subsets | inconclusive subsets |", "|---|---:|---|---|---|---:|"]
    for name, v in acc["variants"].items():
        f = v["all_images"]
        lines.append(f"| {name} | {f['current_map']:.4f} | {100 * f['delta']:+.2f} ({100 * f['delta_low']:+.2f} "
                     f"to {100 * f['delta_high']:+.2f}) | {f['decision']} | {_pct(v['fails_on_subsets'])} "
                     f"| {v['inconclusive_on_subsets']} |")
    lines += ["", "Target: every variant that loses >= 5 mAP points fails; the unchanged model never fails.", ""]
    return lines


def write_report(doc: dict, json_path: Path) -> Path:
    md_path = json_path.with_suffix(".md")
    text = render_markdown(doc)
    write_with(md_path, lambda tmp: tmp.write_text(text))
    return md_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=80, help="repetitions, four bench processes each (default 80)")
    ap.add_argument("--samples", type=int, default=30, help="timed samples per run (default 30)")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    ap.add_argument("--lag", type=int, default=None, help="one-pair mode: baseline i vs current i+lag (default N/2)")
    ap.add_argument("--windows", default="20,10,5", help="history sizes W to score (default 20,10,5)")
    ap.add_argument("--seed", type=int, default=0, help="process order shuffling and accuracy subsets")
    ap.add_argument("--no-accuracy", action="store_true", help="skip the accuracy-gate part")
    ap.add_argument("--no-latency", action="store_true", help="skip the latency part (the accuracy gate only)")
    ap.add_argument("--accuracy-images", type=int, default=200, help="synthetic validation images (default 200)")
    ap.add_argument("--accuracy-seed", type=int, default=1, help="synthetic dataset seed (training used 0)")
    ap.add_argument("--accuracy-subsets", type=int, default=20, help="random image subsets (default 20)")
    ap.add_argument("--subset-images", type=int, default=50, help="images per subset (default 50)")
    ap.add_argument("--map-resamples", type=int, default=1000,
                    help="bootstrap resamples on all images (default 1000, the gate's)")
    ap.add_argument("--subset-resamples", type=int, default=200,
                    help="bootstrap resamples on each subset (default 200: every resample is a pycocotools "
                         "accumulate per model, and the subsets are many)")
    ap.add_argument("--prune-rates", default="0.05,0.1", help="pruning rates of the accuracy part (default 0.05,0.1)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 8 repetitions of 10 samples, small accuracy part")
    ap.add_argument("--work", type=Path, default=None, help="keep the models and raw run files here")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON path (default benchmarks/results/gate_quality.json, .quick.json with --quick)")
    ap.add_argument("--report-only", action="store_true", help="re-render the .md from an existing JSON")
    ap.add_argument("--rescore", action="store_true",
                    help="judge the runs recorded in an existing JSON again with the current gate code (no timing)")
    args = ap.parse_args(argv)
    out = args.out or RESULTS_DIR / ("gate_quality.quick.json" if args.quick else "gate_quality.json")
    try:
        if args.report_only:
            doc = read_json(out, "gate-quality results")
            if doc.get("format") != FORMAT:
                raise XpruneError(f"{out} was written by an older gate_quality.py ({doc.get('format')}); run the "
                                  f"benchmark again to render it")
            print(write_report(doc, out))
            return 0
        if args.rescore:
            return rescore(out, args)
        if args.quick:
            args.runs, args.samples = min(args.runs, 8), min(args.samples, 10)
            args.windows, args.accuracy_images, args.accuracy_subsets = "5", min(args.accuracy_images, 16), 2
            args.subset_images, args.map_resamples, args.subset_resamples, args.prune_rates = 8, 100, 100, "0.05"
        args.windows = sorted({int(w) for w in str(args.windows).split(",")}, reverse=True)
        args.prune_rates = [float(r) for r in str(args.prune_rates).split(",")]
        if args.runs < 2 or args.samples < 5 or args.threads < 1 or min(args.windows) < 5 \
                or max(args.windows) >= args.runs:
            ap.error("need --runs >= 2, --samples >= 5, --threads >= 1 and every window in [5, runs)")
        return run(args, out)
    except XpruneError as e:
        print(f"gate_quality: error: {e}", file=sys.stderr)
        return 2


def rescore(out: Path, args) -> int:
    """Judge the raw runs of an earlier measurement again (the gate's rules changed, the runs did not)."""
    doc = read_json(out, "gate-quality results")
    if doc.get("format") != FORMAT or not doc.get("repetitions") or doc.get("latency") is None:
        raise XpruneError(f"{out} holds no latency runs of this gate_quality.py's format to judge again")
    args.windows, args.lag = doc["settings"]["windows"], doc["latency"]["lag"]
    doc["latency"] = score_latency(doc["repetitions"], args)
    doc["rescored"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    write_with(out, lambda tmp: tmp.write_text(json.dumps(doc, separators=(",", ":")) + "\n"))
    print(write_report(doc, out))
    return 0


def run(args, out: Path) -> int:
    def log(m: str) -> None:
        print(m, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    work = args.work or Path(tempfile.mkdtemp(prefix="gate-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        reps, macs, latency = [], {}, None
        if not args.no_latency:
            reps, macs = measure(args, work, log)
            latency = score_latency(reps, args)
        accuracy = None if args.no_accuracy else measure_accuracy(args, work, log)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    doc = {"format": FORMAT, "json_name": out.name, "command": " ".join(["python", *sys.argv]), "started": started,
           "environment": environment(),
           "settings": {"quick": args.quick, "repetitions": args.runs, "samples": args.samples, "seed": args.seed,
                        "threads": args.threads, "windows": args.windows, "net": NET, "macs": macs,
                        "max_regression": MAX_REGRESSION, "confidence": CONFIDENCE, "resamples": RESAMPLES,
                        "false_alarm": 0.05, "max_map_drop": MAX_MAP_DROP},
           "latency": latency, "accuracy": accuracy, "repetitions": reps}
    doc["wall_s"] = time.perf_counter() - t0
    # compact: thousands of raw samples would otherwise take a line each
    write_with(out, lambda tmp: tmp.write_text(json.dumps(doc, separators=(",", ":")) + "\n"))
    md = write_report(doc, out)
    print(render_markdown(doc))
    print(f"wrote {out} and {md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
