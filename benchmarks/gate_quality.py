"""How good is the latency gate on this machine? False alarms on A/A runs, detection of a known ~10 % slowdown.

    python benchmarks/gate_quality.py                 # 100 repetitions x 4 runs of 30 samples, ~6 min on 2 cores
    python benchmarks/gate_quality.py --quick         # smoke run (4 x 15 samples), ~20 s, writes *.quick.json/md
    python benchmarks/gate_quality.py --report-only   # re-render the .md from the .json

Two plain conv nets are built in-process (`xprune.bench.drift.conv_net`): A (a stem and 10 equal 3x3 convs at
48x48) and B = A plus one more equal conv, +9.9 % MACs, the "injected slowdown". Each repetition makes four
separate measurement runs in shuffled order, each with fresh ONNX Runtime sessions (spinning off), its own
warm-up (10 runs and 0.5 s) and the reference workload timed after every model sample, as a CI job would record
them:

    A "baseline", A "current", B "current"     -> results documents, one row each, with the same row key
    A and B interleaved in one process          -> the true B/A slowdown, paired per round

Pairs are formed as a gate would see them, the baseline recorded earlier than the current: baseline of
repetition i against current of repetition (i + lag) mod N (lag N/2 by default, minutes apart). A/A pairs give the
false-alarm rate, A/B pairs the detection rate; every pair is judged by `xprune.bench.gate.gate` in absolute and in
relative (model / reference) mode, and the alternative decision rules discussed in docs/ci-gate.md are scored on
the same pairs. Everything - raw samples of every run, the environment, rates with counts and Wilson 95 % intervals
- goes to benchmarks/results/gate_quality.json (atomically), and gate_quality.md is rendered from that JSON.
"""

from __future__ import annotations

import argparse
import json
import datetime as _dt
import math
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xprune.bench.drift import REFERENCE_SUFFIX, ReferenceWorkload, conv_net, measure_interleaved  # noqa: E402
from xprune.bench.environment import environment  # noqa: E402
from xprune.bench.gate import CONTENDED_SPREAD, gate, spread, wilson_interval  # noqa: E402
from xprune.bench.latency import LatencyProtocol, summarize  # noqa: E402
from xprune.bench.results import new_results, validate  # noqa: E402
from xprune.files import read_json, write_with  # noqa: E402
from xprune.runtime.onnxruntime.runner import OnnxRuntimeRunner  # noqa: E402

FORMAT = "xprune-gate-quality-1"
RESULTS_DIR = ROOT / "benchmarks" / "results"
NET = dict(in_channels=3, channels=48, size=48, depth=10, seed=1)
MAX_REGRESSION, CONFIDENCE, RESAMPLES = 0.05, 0.95, 2000
# The rule gate() applies, and the alternatives docs/ci-gate.md argues against, scored on the same pairs.
RULES = {
    "ratio > 1+m and ci_low > 1 (gate)": lambda r, lo, m: r > 1 + m and lo > 1,
    "ratio > 1+m (point estimate only)": lambda r, lo, m: r > 1 + m,
    "ci_low > 1 (significantly slower)": lambda r, lo, m: lo > 1,
    "ci_low > 1+m (confidently beyond tolerance)": lambda r, lo, m: lo > 1 + m,
}
MODES = {"absolute": False, "relative": True}


def _r(samples: list[float]) -> list[float]:
    return [round(v, 5) for v in samples]  # 10 ns: below the timer's meaning, keeps the JSON small


def _row(name: str, macs: int, shape, samples, ref_samples, threads: int) -> dict:
    # A and B share every ROW_KEY field: B is "the same model after a regression"
    return {"model": "gate-quality-convnet", "variant": None, "method": None, "rate": None, "engine": "onnxruntime",
            "device": "cpu", "precision": "fp32", "input_shape": list(shape), "threads": threads,
            "true_model": name, "macs": macs, "samples_ms": _r(samples), "reference_samples_ms": _r(ref_samples),
            **{k: v for k, v in summarize(samples).items() if k != "n"}}


def measure_run(name: str, model: bytes, macs: int, shape, x, protocol: LatencyProtocol, threads: int,
                ref_desc: dict) -> dict:
    """One separate measurement run: fresh sessions, warm-up, samples with a paired reference sample each."""
    with OnnxRuntimeRunner(model, threads=threads, spinning=False) as runner, ReferenceWorkload(threads) as ref:
        out = measure_interleaved({"model": lambda: runner.infer(x)}, protocol, reference=ref.run)
    env = {"timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "see": "the environment at the top of gate_quality.json"}
    doc = new_results([_row(name, macs, shape, out["model"], out["model" + REFERENCE_SUFFIX], threads)], env,
                      protocol={**protocol.__dict__, "interleave": False, "reference_workload": ref_desc,
                                "ort_threads": threads, "spinning": False},
                      command=f"gate_quality {name} run")
    validate(doc, f"{name} run")
    return doc


def measure_pair(models: dict, x, protocol: LatencyProtocol, threads: int) -> dict:
    """A and B interleaved in one process, reference after each: the best estimate of the true slowdown."""
    with OnnxRuntimeRunner(models["A"], threads=threads) as a, OnnxRuntimeRunner(models["A"], threads=threads) as a2, \
            OnnxRuntimeRunner(models["B"], threads=threads) as b, ReferenceWorkload(threads) as ref:
        # A2 is a second session of A: the A/A control of the interleaved mode
        out = measure_interleaved({"A": lambda: a.infer(x), "A2": lambda: a2.infer(x), "B": lambda: b.infer(x)},
                                  protocol, reference=ref.run)
    per_round = [tb / ta for ta, tb in zip(out["A"], out["B"])]
    rel = [(tb / rb) / (ta / ra) for ta, tb, ra, rb in zip(out["A"], out["B"], out["A" + REFERENCE_SUFFIX],
                                                           out["B" + REFERENCE_SUFFIX])]
    return {"samples_ms": {k: _r(v) for k, v in out.items()}, "paired_ratio_median": statistics.median(per_round),
            "paired_relative_ratio_median": statistics.median(rel)}


def judge(baseline: dict, current: dict) -> dict:
    out = {"contended": any(spread(d["rows"][0]["reference_samples_ms"]) > CONTENDED_SPREAD
                            for d in (baseline, current))}
    for mode, relative in MODES.items():
        r = gate(baseline, current, MAX_REGRESSION, CONFIDENCE, RESAMPLES, seed=0, relative=relative).rows[0]
        out[mode] = {"ratio": r.ratio, "ci_low": r.ci_low, "ci_high": r.ci_high, "decision": r.decision}
    return out


def _rate(k: int, n: int) -> dict:
    lo, hi = wilson_interval(k, n)
    return {"count": k, "n": n, "rate": k / n if n else None, "wilson95": [lo, hi]}


def analyse(pairs: list[dict], slowdown: dict) -> dict:
    out: dict = {"contended_pairs": {k: sum(p["contended"] for p in pairs if p["kind"] == k) for k in ("A/A", "A/B")}}
    for mode in MODES:
        aa = [p[mode] for p in pairs if p["kind"] == "A/A"]
        ab = [p[mode] for p in pairs if p["kind"] == "A/B"]
        quiet_aa = [p[mode] for p in pairs if p["kind"] == "A/A" and not p["contended"]]
        quiet_ab = [p[mode] for p in pairs if p["kind"] == "A/B" and not p["contended"]]
        log_aa = [math.log(p["ratio"]) for p in aa]
        rules = {}
        for rule, fn in RULES.items():
            rules[rule] = {"false_alarm": _rate(sum(fn(p["ratio"], p["ci_low"], MAX_REGRESSION) for p in aa), len(aa)),
                           "detection": _rate(sum(fn(p["ratio"], p["ci_low"], MAX_REGRESSION) for p in ab), len(ab))}
        gate_rule = rules[next(iter(RULES))]
        out[mode] = {
            "false_alarm": gate_rule["false_alarm"], "detection": gate_rule["detection"],
            # the same, leaving out pairs where either run was contended (reference p90 > 1.25x its median)
            "false_alarm_uncontended": _rate(sum(p["decision"] == "regression" for p in quiet_aa), len(quiet_aa)),
            "detection_uncontended": _rate(sum(p["decision"] == "regression" for p in quiet_ab), len(quiet_ab)),
            "inconclusive_aa": sum(p["decision"] == "inconclusive" for p in aa),
            "inconclusive_ab": sum(p["decision"] == "inconclusive" for p in ab),
            # between-run spread of log(ratio) on A/A pairs: the noise the decision threshold has to beat
            "aa_log_ratio_sd": statistics.stdev(log_aa) if len(log_aa) > 1 else None,
            "aa_ratio_quantiles": _quantiles([p["ratio"] for p in aa]),
            "ab_ratio_quantiles": _quantiles([p["ratio"] for p in ab]),
            "rules": rules,
        }
    out["true_slowdown"] = slowdown
    return out


def _quantiles(v: list[float]) -> dict:
    if not v:
        return {}
    q = np.quantile(v, [0.0, 0.05, 0.5, 0.95, 1.0])
    return dict(zip(("min", "p5", "median", "p95", "max"), (float(x) for x in q)))


def render_markdown(doc: dict) -> str:
    s, a, env = doc["settings"], doc["analysis"], doc["environment"]
    sd = a["true_slowdown"]
    lines = [
        "# Latency gate quality", "",
        f"Generated by `benchmarks/gate_quality.py` from `{doc['json_name']}`"
        f"{' (QUICK smoke run: too few repetitions to mean anything)' if s['quick'] else ''}.", "",
        f"- Machine: {env.get('cpu')}, {env.get('cpu_count')} logical CPUs; onnxruntime "
        f"{env.get('libraries', {}).get('onnxruntime')}, {s['threads']} intra-op thread(s), spinning off; "
        f"{env.get('timestamp')}; wall time {doc['wall_s']:.0f} s.",
        f"- {s['repetitions']} repetitions; each run: warm-up {s['protocol']['warmup_runs']} runs and "
        f"{s['protocol']['warmup_s']} s, then {s['protocol']['runs']} samples, reference workload timed after each; "
        f"baseline of repetition i vs current of repetition i+{s['lag']} (mod N).",
        f"- Gate: max_regression {s['max_regression']}, confidence {s['confidence']}, {s['resamples']} resamples.",
        f"- A: {s['macs']['A'] / 1e6:.1f} M MACs; B: {s['macs']['B'] / 1e6:.1f} M MACs "
        f"(x{s['macs']['B'] / s['macs']['A']:.4f}).",
        f"- Measured slowdown B/A: interleaved in one process {sd['interleaved_paired_median']:.4f} "
        f"(repetitions' p5-p95 {sd['interleaved_p5']:.4f}-{sd['interleaved_p95']:.4f}); separate runs "
        f"{sd['separate_runs_median']:.4f} absolute, {sd['separate_runs_relative_median']:.4f} relative."
        + ("" if 1.07 <= sd["interleaved_paired_median"] <= 1.13 else
           " **Not ~10 %: the detection rate below is for this slowdown, not for 10 %.**"), "",
        "## Baseline and candidate measured in separate runs (`xprune bench` twice, then `xprune gate`)", "",
        *_rates_table(a), ""]
    cp = a["contended_pairs"]
    lines += ["", "Rates with Wilson 95 % intervals in brackets. Targets: false alarms <= 5 % (aim 1 %), "
              "detection >= 95 %.", "",
              f"Contended pairs (either run's reference p90 > {CONTENDED_SPREAD}x its median: other work shared "
              f"the cores): {cp['A/A']} A/A, {cp['A/B']} A/B. Without them: "
              + "; ".join(f"{mode} false alarms {_fmt(a[mode]['false_alarm_uncontended'])}, detection "
                          f"{_fmt(a[mode]['detection_uncontended'])}" for mode in MODES) + ".", "",
              "Decision rules compared on the same pairs (false alarms / detection):", "",
              "| rule | " + " | ".join(MODES) + " |", "|---|" + "---|" * len(MODES)]
    for rule in RULES:
        cells = []
        for mode in MODES:
            r = a[mode]["rules"][rule]
            cells.append(f"{r['false_alarm']['count']}/{r['false_alarm']['n']} / "
                         f"{r['detection']['count']}/{r['detection']['n']}")
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    if "analysis_interleaved" in doc:
        lines += ["", "## Baseline and candidate interleaved in one run "
                  "(`xprune bench CANDIDATE --baseline BASELINE --interleave`, then `xprune gate --interleaved`)", "",
                  "The same repetitions; in each, A, a second session of A and B were timed round by round in one "
                  "process. A/A = A vs its second session, A/B = A vs B, judged by the same gate.", "",
                  *_rates_table(doc["analysis_interleaved"])]
    lines += ["", "A sd of log ratio s on A/A pairs predicts, for the gate's rule at m = 0.05, about "
              "P(z > 0.05/s) false alarms and as many misses of a 10 % slowdown (docs/ci-gate.md).", ""]
    return "\n".join(lines)


def _rates_table(a: dict) -> list[str]:
    lines = ["| mode | false alarms (A/A) | detection (A/B) | inconclusive A/A, A/B | sd of log ratio, A/A | "
             "A/A ratio p5-p95 | A/B ratio p5-p95 |", "|---|---|---|---|---:|---|---|"]
    for mode in MODES:
        m = a[mode]
        fa, de = m["false_alarm"], m["detection"]
        qa, qb = m["aa_ratio_quantiles"], m["ab_ratio_quantiles"]
        lines.append(f"| {mode} | {fa['count']}/{fa['n']} = {100 * fa['rate']:.1f}% "
                     f"[{100 * fa['wilson95'][0]:.1f}, {100 * fa['wilson95'][1]:.1f}] "
                     f"| {de['count']}/{de['n']} = {100 * de['rate']:.1f}% "
                     f"[{100 * de['wilson95'][0]:.1f}, {100 * de['wilson95'][1]:.1f}] "
                     f"| {m['inconclusive_aa']}, {m['inconclusive_ab']} "
                     f"| {100 * (m['aa_log_ratio_sd'] or 0):.2f}% "
                     f"| {qa.get('p5', float('nan')):.3f}-{qa.get('p95', float('nan')):.3f} "
                     f"| {qb.get('p5', float('nan')):.3f}-{qb.get('p95', float('nan')):.3f} |")
    return lines


def _fmt(r: dict) -> str:
    return f"{r['count']}/{r['n']}" + (f" = {100 * r['rate']:.1f}%" if r["n"] else "")


def write_report(doc: dict, json_path: Path) -> Path:
    md_path = json_path.with_suffix(".md")
    text = render_markdown(doc)
    write_with(md_path, lambda tmp: tmp.write_text(text))
    return md_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=100, help="repetitions (each: A baseline, A current, B current, "
                                                          "A/B interleaved); default 100")
    ap.add_argument("--samples", type=int, default=30, help="timed samples per run (default 30)")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    ap.add_argument("--lag", type=int, default=None, help="pair baseline i with current i+lag (default runs/2)")
    ap.add_argument("--seed", type=int, default=0, help="run-order shuffling")
    ap.add_argument("--quick", action="store_true", help="smoke run: 4 repetitions of 15 samples")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON path (default benchmarks/results/gate_quality.json, .quick.json with --quick)")
    ap.add_argument("--report-only", action="store_true", help="re-render the .md from an existing JSON")
    args = ap.parse_args(argv)
    out = args.out or RESULTS_DIR / ("gate_quality.quick.json" if args.quick else "gate_quality.json")
    if args.report_only:
        print(write_report(read_json(out, "gate-quality results"), out))
        return 0
    if args.quick:
        args.runs, args.samples = min(args.runs, 4), min(args.samples, 15)
    n = args.runs
    if n < 2 or args.samples < 5 or args.threads < 1:
        ap.error("need --runs >= 2, --samples >= 5, --threads >= 1")
    lag = (n // 2 if args.lag is None else args.lag) % n

    t_start = time.perf_counter()
    models, macs = {}, {}
    models["A"], macs["A"], shape = conv_net(**NET)
    models["B"], macs["B"], _ = conv_net(**NET, extra_layers=1)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    protocol = LatencyProtocol(warmup_runs=10, warmup_s=0.5, runs=args.samples, min_s=0.0, max_s=30.0)
    env = environment()
    ref_desc = ReferenceWorkload(args.threads).describe()
    # One second of A and the reference before anything is recorded, so the first run of the process (CPU clocks,
    # allocator, thread pool start) is not different in kind from the other 4N - 1; a CI job's own warm-up does
    # the same for its single run.
    with OnnxRuntimeRunner(models["A"], threads=args.threads) as warm, ReferenceWorkload(args.threads) as ref:
        measure_interleaved({"A": lambda: warm.infer(x)}, LatencyProtocol(warmup_runs=10, warmup_s=1.0, runs=1,
                                                                          min_s=0.0), reference=ref.run)
    shuffle = random.Random(args.seed)

    reps = []
    for i in range(n):
        order = ["A_baseline", "A_current", "B_current", "interleaved"]
        shuffle.shuffle(order)
        rep: dict = {"order": order}
        for what in order:
            if what == "interleaved":
                rep[what] = measure_pair(models, x, protocol, args.threads)
            else:
                name = what[0]
                rep[what] = measure_run(name, models[name], macs[name], shape, x, protocol, args.threads, ref_desc)
        reps.append(rep)
        a_med = rep["A_current"]["rows"][0]["median_ms"]
        b_med = rep["B_current"]["rows"][0]["median_ms"]
        print(f"[{i + 1}/{n}] A {a_med:.3f} ms, B {b_med:.3f} ms, interleaved B/A "
              f"{rep['interleaved']['paired_ratio_median']:.4f}  ({time.perf_counter() - t_start:.0f} s)",
              file=sys.stderr)

    pairs = []
    for i in range(n):
        j = (i + lag) % n
        for kind, cur in (("A/A", "A_current"), ("A/B", "B_current")):
            pairs.append({"kind": kind, "baseline_rep": i, "current_rep": j,
                          **judge(reps[i]["A_baseline"], reps[j][cur])})

    # The interleaved mode (`xprune bench CANDIDATE --baseline BASELINE --interleave`): baseline and candidate
    # from the same run of one process, A vs a second session of A (A/A) and A vs B (A/B).
    interleaved_pairs = []
    for i, rep in enumerate(reps):
        smp = rep["interleaved"]["samples_ms"]

        def one(name: str, key: str) -> dict:
            return new_results([_row(name, macs[name], shape, smp[key], smp[key + REFERENCE_SUFFIX], args.threads)],
                               {"see": "the environment at the top of gate_quality.json"},
                               protocol={**protocol.__dict__, "interleave": True, "reference_workload": ref_desc})
        for kind, key in (("A/A", "A2"), ("A/B", "B")):
            interleaved_pairs.append({"kind": kind, "baseline_rep": i, "current_rep": i,
                                      **judge(one("A", "A"), one(key[0], key))})

    inter = [r["interleaved"]["paired_ratio_median"] for r in reps]

    def run_ratio(rel: bool) -> list[float]:
        out_ = []
        for r in reps:
            a, b = r["A_current"]["rows"][0], r["B_current"]["rows"][0]
            if rel:
                out_.append(statistics.median(np.divide(b["samples_ms"], b["reference_samples_ms"]))
                            / statistics.median(np.divide(a["samples_ms"], a["reference_samples_ms"])))
            else:
                out_.append(statistics.median(b["samples_ms"]) / statistics.median(a["samples_ms"]))
        return out_

    slowdown = {"macs_ratio": macs["B"] / macs["A"], "interleaved_paired_median": statistics.median(inter),
                "interleaved_p5": float(np.quantile(inter, 0.05)), "interleaved_p95": float(np.quantile(inter, 0.95)),
                "interleaved_relative_median": statistics.median(
                    r["interleaved"]["paired_relative_ratio_median"] for r in reps),
                "separate_runs_median": statistics.median(run_ratio(False)),
                "separate_runs_relative_median": statistics.median(run_ratio(True))}
    doc = {"format": FORMAT, "json_name": out.name, "command": " ".join(["python", *sys.argv]),
           "environment": env,
           "settings": {"quick": args.quick, "repetitions": n, "lag": lag, "seed": args.seed,
                        "threads": args.threads, "protocol": protocol.__dict__, "net": NET, "macs": macs,
                        "input_shape": list(shape), "reference_workload": ref_desc,
                        "max_regression": MAX_REGRESSION, "confidence": CONFIDENCE, "resamples": RESAMPLES},
           "analysis": analyse(pairs, slowdown), "pairs": pairs,
           "analysis_interleaved": analyse(interleaved_pairs, slowdown), "interleaved_pairs": interleaved_pairs,
           "repetitions": reps}
    doc["wall_s"] = time.perf_counter() - t_start
    # compact: ~2,400 raw samples per 10 repetitions would otherwise take a line each
    write_with(out, lambda tmp: tmp.write_text(json.dumps(doc, separators=(",", ":")) + "\n"))
    md = write_report(doc, out)
    print(render_markdown(doc))
    print(f"wrote {out} and {md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
