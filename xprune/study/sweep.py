"""`run_study`: the experiment of the paper "Explainability-Inspired Layer-Wise Pruning of Deep Neural Networks for
Efficient Object Detection" (sections 3-4, Table 2, Figs 1-3), measured honestly.

For every model: score each conv layer once per criterion, then for every pruning rate zero the bottom of that one
ranking (safe candidate policy: the rates are prefixes of the same greedy selection), and measure

- accuracy: mAP@[.50:.95] and mAP@.50 in PyTorch on the dataset's val split (only for models with trained weights:
  a committed reference checkpoint or a checkpoint the caller names; random-init families are speed-only rows,
  marked `"accuracy": false`);
- complexity: params and MACs by ptflops (dense: zeroing changes neither), and the MACs left after xprune's exact
  fold of the exported ONNX graph ("effective MACs");
- latency and FPS per backend: PyTorch eager CPU (the zeroed model, dense compute: the paper's setting), ONNX
  Runtime CPU (the folded export) and TensorRT when `require_tensorrt()` passes. Every variant of one model is
  timed interleaved in one process per backend (`xprune.bench.run.bench(..., interleave=True)`), beside an A/A
  control (the baseline timed twice), and every sample is kept in `bench/<model>-<backend>.json`.

For YOLOv8 models a peer - the same weights exported by Ultralytics' own ONNX exporter (`xprune.study.peer`) - is
timed in the same ONNX Runtime run and its mAP measured through the shared post-process.

The study file (`study.json`, format `xprune-study-1`) is rewritten atomically after every model, with
`"complete": false` until the last one is done; `xprune.study.report` renders it.
"""

from __future__ import annotations

import copy
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from xprune.bench.environment import environment
from xprune.bench.latency import LatencyProtocol
from xprune.errors import XpruneError
from xprune.files import display_path
from xprune.models.detector import Detector
from xprune.prune.plan import Infeasible, Plan
from xprune.runtime.onnxruntime.runner import OnnxRuntimeRunner
from xprune.runtime.registry import BACKENDS as RUNTIME_BACKENDS

FORMAT = "xprune-study-1"
DEFAULT_MODELS = ("yolov8n", "ssdlite320-mbv3")
DEFAULT_CRITERIA = ("l1", "attr")
DEFAULT_RATES = (0.01, 0.02, 0.05, 0.10, 0.15, 0.20)
BACKENDS = tuple(RUNTIME_BACKENDS)
FIGURE_RATE = 0.05  # the paper's rate: the layers marked in the importance figure (Fig. 2)
STUDY_FILE = "study.json"

Log = Callable[[str], None]


@dataclass
class StudySettings:
    """What `run_study` measures. Defaults are the paper's protocol on this project's synthetic dataset."""

    out: Path
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    criteria: tuple[str, ...] = DEFAULT_CRITERIA
    rates: tuple[float, ...] = DEFAULT_RATES
    policy: str = "safe"
    # Dataset (COCO format). None: the synthetic set (SynthConfig defaults) generated or reused in OUT/data.
    data: Path | None = None
    calib_images: int = 64
    val_images: int | None = None  # None: the whole val split
    batch_size: int = 8
    # Weights: committed reference checkpoints (accuracy rows) unless use_reference is False; `weights` names
    # checkpoints explicitly ({model: path}, accuracy rows too). Anything else is random init: speed-only rows.
    use_reference: bool = True
    weights: dict[str, str] = field(default_factory=dict)
    speed_input_size: int = 320  # input size of random-init (speed-only) families
    speed_rates: tuple[float, ...] | None = None  # rates for speed-only families (None: `rates`)
    backends: tuple[str, ...] = BACKENDS
    latency: LatencyProtocol = LatencyProtocol()
    speed_latency: LatencyProtocol | None = None  # protocol for speed-only families (None: `latency`)
    threads: int | None = None  # torch and ONNX Runtime intra-op threads (None: torch's current / all cores)
    aa_control: bool = True  # time the baseline twice per backend (the noise floor of the comparison)
    onnx_map: bool = False  # also measure mAP through ONNX Runtime for every variant (accuracy models; the fold is
    #                         exact, so this repeats the PyTorch number up to NMS ties: off by default)
    onnx_zeroed: bool = False  # also time the zeroed-only (unfolded) ONNX of every variant
    peer: bool = True  # Ultralytics' own ONNX export of YOLOv8 models, in the same ONNX Runtime run
    trt_fp16: bool = False
    keep_onnx: bool = False  # keep exported ONNX files in OUT/onnx (default: a temporary folder)
    command: str | None = None
    progress: bool = True

    def validate(self) -> None:
        from xprune.importance.criteria import CRITERIA
        from xprune.models.zoo import FAMILIES
        from xprune.prune.plan import POLICIES, check_rate

        if not self.models:
            raise XpruneError("the study needs at least one model")
        for m in self.models:
            if m not in FAMILIES:
                raise XpruneError(f"unknown model '{m}'; choose from: {', '.join(FAMILIES)}")
        if len(set(self.models)) != len(self.models):
            raise XpruneError("a model is listed twice")
        for c in self.criteria:
            if c not in CRITERIA:
                raise XpruneError(f"unknown criterion '{c}'; choose from: {', '.join(CRITERIA)}")
        if not self.criteria:
            raise XpruneError("the study needs at least one criterion")
        if not self.rates:
            raise XpruneError("the study needs at least one pruning rate")
        for r in (*self.rates, *(self.speed_rates or ())):
            check_rate(r)
        if self.policy not in POLICIES:
            raise XpruneError(f"unknown candidate policy '{self.policy}'; choose one of: {', '.join(POLICIES)}")
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown:
            raise XpruneError(f"unknown backend '{unknown[0]}'; choose from: {', '.join(BACKENDS)}")
        if self.speed_input_size < 32 or self.speed_input_size % 32:
            raise XpruneError(f"speed_input_size must be a positive multiple of 32, got {self.speed_input_size}")
        for m in self.weights:
            if m not in self.models:
                raise XpruneError(f"weights given for {m}, which is not in the study's models")

    def describe(self) -> dict:
        d = asdict(self)
        d["out"] = display_path(self.out)
        d["data"] = display_path(self.data) if self.data else None
        d["latency"] = asdict(self.latency)
        d["speed_latency"] = asdict(self.speed_latency) if self.speed_latency else None
        d["criteria"], d["rates"], d["backends"] = list(self.criteria), list(self.rates), list(self.backends)
        d["speed_rates"] = list(self.speed_rates) if self.speed_rates else None
        return d


# --- helpers ------------------------------------------------------------------------------------------------------

def pct_change(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return 100.0 * (value - base) / base


def paired_ratios(samples: list[float], base: list[float]) -> list[float]:
    """Per-round latency ratios of two interleaved sample lists (round i of one with round i of the other)."""
    n = min(len(samples), len(base))
    return [samples[i] / base[i] for i in range(n)]


def ratio_summary(ratios: list[float]) -> dict:
    if not ratios:
        return {"median": None, "p10": None, "p90": None, "n": 0}
    p10, median, p90 = (float(v) for v in np.percentile(ratios, [10, 50, 90]))
    return {"median": median, "p10": p10, "p90": p90, "n": len(ratios)}


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman rank correlation (scipy; average ranks for ties); None when undefined."""
    from scipy.stats import spearmanr
    if len(a) < 2 or len(set(a)) < 2 or len(set(b)) < 2:
        return None
    return float(spearmanr(a, b).statistic)


def max_rel_error(a, b) -> float:
    out = 0.0
    for x, y in zip(a, b):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        out = max(out, float(np.max(np.abs(x - y))) / max(1.0, float(np.max(np.abs(x)))))
    return out


def _latency_fields(row: dict) -> dict:
    return {k: row[k] for k in ("n", "median_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "fps")}


@dataclass
class _Variant:
    """One distinct model measured: the baseline or one set of zeroed layers (shared by every (method, rate)
    that selects exactly that set)."""

    id: str
    method: str
    layers: tuple[str, ...]
    detector: Detector
    uses: list[tuple[str, float]] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    onnx: Path | None = None
    onnx_zeroed: Path | None = None


class _Study:
    def __init__(self, settings: StudySettings, log: Log):
        self.s = settings
        self.log = log
        self.out = Path(settings.out)
        self.command = settings.command or (" ".join(["python", *sys.argv]) if sys.argv else "run_study()")

    # -- setup --------------------------------------------------------------------------------------------------
    def dataset(self) -> Path:
        from xprune.data.synth import SynthConfig, generate
        if self.s.data is not None:
            data = Path(self.s.data)
            if not (data / "annotations").is_dir():
                raise XpruneError(f"dataset folder has no annotations/: {data}")
            return data
        return generate(self.out / "data", SynthConfig())

    def load(self, name: str, data: Path) -> tuple[Detector, dict]:
        """The detector and what the study records about its weights."""
        from xprune.data.coco import calibration_set
        from xprune.models import build_detector, file_sha256, load_checkpoint
        from xprune.reference import reference_models

        if name in self.s.weights:
            path = Path(self.s.weights[name])
            det = load_checkpoint(path, name)
            return det, {"source": "checkpoint", "path": str(path), "sha256": file_sha256(path), "accuracy": True}
        refs = reference_models() if self.s.use_reference else {}
        if name in refs:
            ref = refs[name]
            det = load_checkpoint(ref["path"], name, ref["input_size"])
            return det, {"source": "reference", "path": Path(ref["path"]).name, "sha256": file_sha256(ref["path"]),
                         "accuracy": True, "reference_val_map": ref.get("val_map"),
                         "reference_val_map50": ref.get("val_map50"), "reference_val_images": ref.get("val_images"),
                         "trained": {k: ref.get(k) for k in ("epochs", "train_seconds", "dataset")}}
        classes = calibration_set(data, self.s.speed_input_size, 1).num_classes
        det = build_detector(name, "none", num_classes=classes, input_size=self.s.speed_input_size)
        return det, {"source": "random-init", "path": None, "sha256": None, "accuracy": False}

    # -- one model --------------------------------------------------------------------------------------------
    def run_model(self, name: str, data: Path, work: Path, backends: dict) -> tuple[dict, list[dict], dict | None]:
        from xprune.data.coco import CocoDetectionSet, calibration_set
        from xprune.importance.scores import score_layers, write_scores
        from xprune.prune.plan import apply_plan, layers_for_rate, plans_for_rates

        t_model = time.perf_counter()
        det, weights = self.load(name, data)
        accuracy = weights["accuracy"]
        size = det.input_size
        rates = tuple(self.s.rates if accuracy else (self.s.speed_rates or self.s.rates))
        protocol = self.s.latency if accuracy else (self.s.speed_latency or self.s.latency)
        self.log(f"[{name}] {weights['source']} weights, {size} px, "
                 f"{'accuracy + speed' if accuracy else 'speed only (random init)'}")
        calib = calibration_set(data, size, self.s.calib_images)
        val = CocoDetectionSet.from_folder(data, "val", size, limit=self.s.val_images) if accuracy else None
        if val is not None and det.category_ids is None and det.num_classes != val.num_classes:
            raise XpruneError(f"{name} has {det.num_classes} classes, the dataset {val.num_classes}")

        # 1. one ranking per criterion
        convs = list(det.conv_layers())
        predictors = set(det.predictor_layers)
        candidate_mask = [self.s.policy == "all" or n not in predictors for n in convs]
        layer_scores: dict[str, Any] = {"layers": convs, "predictor": [n in predictors for n in convs],
                        "candidate": candidate_mask, "criteria": {}}
        plans: dict[str, dict[float, Plan | Infeasible]] = {}
        for method in self.s.criteria:
            self.log(f"[{name}] scoring with {method}")
            scores = score_layers(det, method, calib, batch_size=self.s.batch_size, progress=self.s.progress,
                                  weights=weights.get("path") or "random-init")
            write_scores(self.out / "scores" / f"{name}-{method}.json", scores)
            by_layer = {e["layer"]: e["score"] for e in scores["layers"]}
            self.log(f"[{name}] planning {method} at rates {', '.join(f'{r:g}' for r in rates)} ({self.s.policy})")
            plans[method] = plans_for_rates(det, scores, rates, self.s.policy)
            cands = sorted((by_layer[n], n) for n, c in zip(convs, candidate_mask) if c)
            k = layers_for_rate(FIGURE_RATE, len(cands))
            layer_scores["criteria"][method] = {
                "scores": [by_layer[n] for n in convs], "seconds": scores["seconds"],
                "bottom": [n for _, n in cands[:k]], "bottom_rate": FIGURE_RATE,
                "zeroed": {f"{r:g}": p.layers for r, p in plans[method].items() if not isinstance(p, Infeasible)}}

        # 2. distinct variants
        base = _Variant("baseline", "baseline", (), det, [("baseline", 0.0)])
        variants: dict[frozenset, _Variant] = {}
        infeasible = []
        for method, by_rate in plans.items():
            for rate, plan in by_rate.items():
                if isinstance(plan, Infeasible):
                    infeasible.append({"method": method, "rate": rate, "reason": plan.reason})
                    continue
                layers = tuple(plan.layers)
                key = frozenset(layers)
                if key not in variants:
                    pruned = copy.deepcopy(det)
                    apply_plan(pruned, plan)
                    pruned.meta = {"pruning": plan.to_json()}
                    variants[key] = _Variant(f"{method}-{len(layers)}", method, layers, pruned)
                variants[key].uses.append((method, rate))
        all_variants = [base, *variants.values()]
        self.log(f"[{name}] {len(variants)} distinct pruned variants for "
                 f"{sum(len(v.uses) for v in variants.values())} (criterion, rate) pairs")

        # 3. per-variant measurements: mAP (PyTorch), ptflops, ONNX export + fold
        from xprune.evaluate.complexity import complexity
        from xprune.evaluate.coco_map import evaluate_map
        from xprune.export.onnx_export import export_onnx
        x_probe = np.random.default_rng(1).random((1, 3, size, size), dtype=np.float32)
        for i, v in enumerate(all_variants, 1):
            tag = f"[{name}] variant {i}/{len(all_variants)} {v.id}"
            info = v.info
            info.update({"id": v.id, "method": v.method, "layers": list(v.layers), "uses": [list(u) for u in v.uses]})
            if val is not None:
                self.log(f"{tag}: mAP (PyTorch, {len(val)} val images)")
                m = evaluate_map(v.detector, val, batch_size=self.s.batch_size, progress=self.s.progress)
                info.update({"map": m["map"], "map50": m["map50"], "val_images": m["images"]})
            cx = complexity(v.detector)
            info.update({"params": cx["params"], "macs": cx["macs"]})
            if "onnxruntime" in self.s.backends or "tensorrt" in self.s.backends:
                fold = v is not base
                self.log(f"{tag}: ONNX export{' + fold' if fold else ''}")
                v.onnx = work / f"{name}-{v.id}{'-folded' if fold else ''}.onnx"
                rep = export_onnx(v.detector, v.onnx, fold=fold)
                info.update({"onnx_file": v.onnx.name, "nodes_before": rep["nodes_before"],
                             "nodes_after": rep["nodes_after"], "macs_before_fold": rep["macs_before"],
                             "effective_macs": rep["macs_after"], "params_after_fold": rep["params"],
                             "removed_mac_fraction": rep["removed_mac_fraction"], "dead_outputs": rep["dead_outputs"]})
                from xprune.runtime.onnxruntime.runner import OnnxRuntimeRunner
                with torch.no_grad():
                    ref_out = [o.numpy() for o in v.detector.raw(torch.from_numpy(x_probe))]
                with OnnxRuntimeRunner(v.onnx, threads=self.s.threads) as r:
                    info["onnx_max_rel_error_vs_torch"] = max_rel_error(ref_out, r.infer(x_probe))
                if self.s.onnx_zeroed and fold:
                    v.onnx_zeroed = work / f"{name}-{v.id}-zeroed.onnx"
                    export_onnx(v.detector, v.onnx_zeroed, fold=False)
                if val is not None and self.s.onnx_map and "onnxruntime" in self.s.backends:
                    self.log(f"{tag}: mAP (ONNX Runtime, batch 1)")
                    m = self.onnx_map(v.onnx, lambda q: OnnxRuntimeRunner(q, threads=self.s.threads, nms_iou=det.nms_iou), val, det)
                    info.update({"onnx_map": m["map"], "onnx_map50": m["map50"]})

        # 4. timing per backend, interleaved, with an A/A control; the peer joins the ONNX Runtime run
        timings: dict[str, dict] = {}
        controls: dict[str, dict] = {}
        bench_files: dict[str, str] = {}
        peer = None
        for backend in self.s.backends:
            if not backends[backend]["available"]:
                continue
            extra = []
            peer_info = None
            if backend == "onnxruntime" and self.s.peer:
                from xprune.study.peer import is_yolo
                if is_yolo(det):
                    peer_info = self.peer_export(det, work, data)
                    if peer_info.get("available"):
                        extra.append(peer_info.pop("_target"))
            self.log(f"[{name}] timing on {backend}: {len(all_variants) + len(extra) + int(self.s.aa_control)} "
                     f"targets interleaved")
            doc, by_id = self.time_backend(backend, name, all_variants, extra, work, protocol)
            path = self.out / "bench" / f"{name}-{backend}.json"
            from xprune.bench.results import write_results
            write_results(path, doc)
            bench_files[backend] = str(path.relative_to(self.out))
            timings[backend] = by_id
            base_samples = by_id["baseline"]["samples_ms"]
            if "baseline-copy" in by_id:
                controls[backend] = ratio_summary(paired_ratios(by_id["baseline-copy"]["samples_ms"], base_samples))
            if peer_info is not None:
                peer = self.peer_results(peer_info, by_id, all_variants, base, accuracy, val, det)

        # 5. rows: one per (backend, method, rate)
        rows = []
        for backend, by_id in timings.items():
            b = by_id["baseline"]
            for v in all_variants:
                for method, rate in v.uses:
                    t = by_id[v.id]
                    row = self.row(name, accuracy, backend, v, method, rate, t, b, base)
                    row["shared_with"] = [list(u) for u in v.uses if u != (method, rate)]
                    if self.s.onnx_zeroed and backend == "onnxruntime" and v is not base:
                        tz = by_id.get(f"{v.id}-zeroed")
                        if tz:
                            row["zeroed_onnx_fps"] = tz["fps"]
                            row["zeroed_onnx_paired_ratio"] = ratio_summary(
                                paired_ratios(tz["samples_ms"], b["samples_ms"]))["median"]
                    rows.append(row)

        agreement = self.agreement(layer_scores, plans, rates)
        model_doc = {"model": name, "input_size": size, "accuracy": accuracy,
                     "weights": weights, "num_classes": det.num_classes, "rates": list(rates),
                     "latency_protocol": asdict(protocol), "conv_layers": len(convs),
                     "candidates": sum(candidate_mask), "predictors": sorted(predictors),
                     "plans": {m: {f"{r:g}": self.plan_brief(p) for r, p in by_rate.items()}
                               for m, by_rate in plans.items()},
                     "infeasible": infeasible, "variants": [v.info for v in all_variants],
                     "layer_scores": layer_scores, "agreement": agreement, "controls": controls,
                     "bench_files": bench_files, "seconds": round(time.perf_counter() - t_model, 1)}
        return model_doc, rows, peer

    @staticmethod
    def plan_brief(plan: Plan | Infeasible) -> dict:
        if isinstance(plan, Infeasible):
            return {"infeasible": plan.reason}
        return {"layers": plan.layers, "candidates": plan.candidates,
                "skipped": [{"layer": e.layer, "reason": e.reason} for e in plan.skipped],
                "zeroed_params": plan.zeroed_params, "zeroed_conv_macs": plan.zeroed_conv_macs}

    def row(self, name, accuracy, backend, v: _Variant, method, rate, t: dict, b: dict, base: _Variant) -> dict:
        info, binfo = v.info, base.info
        map_key = "onnx_map" if backend == "onnxruntime" and "onnx_map" in info else "map"
        mp = info.get(map_key) if accuracy else None
        mp50 = info.get(map_key + "50") if accuracy else None
        bmp = binfo.get(map_key) if accuracy else None
        ratio = ratio_summary(paired_ratios(t["samples_ms"], b["samples_ms"])) if v is not base else None
        variant = "baseline" if v is base else ("zeroed" if backend == "torch" else "folded")
        return {"model": name, "accuracy": accuracy, "backend": backend, "device": t["device"],
                "precision": t["precision"], "method": method, "rate": rate, "variant_id": v.id, "variant": variant,
                "layers_zeroed": len(v.layers), "map": mp, "map50": mp50,
                "map_source": (("onnxruntime" if map_key == "onnx_map" else "torch") if accuracy else None),
                "dmap_pct": pct_change(mp, bmp) if v is not base else None,
                "median_ms": t["median_ms"], "p90_ms": t["p90_ms"], "fps": t["fps"], "n": t["n"],
                "dfps_pct": pct_change(t["fps"], b["fps"]) if v is not base else None,
                "paired_ratio": ratio["median"] if ratio else None,
                "paired_ratio_p10": ratio["p10"] if ratio else None,
                "paired_ratio_p90": ratio["p90"] if ratio else None,
                "params": info["params"], "macs": info["macs"], "effective_macs": info.get("effective_macs"),
                "removed_mac_fraction": info.get("removed_mac_fraction")}

    @staticmethod
    def agreement(layer_scores: dict, plans: dict, rates) -> dict:
        """How far the criteria agree: Spearman correlation of their scores over candidate layers, and the overlap
        of the layers each zeroed per rate (|A & B| / |A|)."""
        crit = list(layer_scores["criteria"])
        out = {}
        mask = layer_scores["candidate"]
        for i, a in enumerate(crit):
            for bname in crit[i + 1:]:
                sa = [s for s, c in zip(layer_scores["criteria"][a]["scores"], mask) if c]
                sb = [s for s, c in zip(layer_scores["criteria"][bname]["scores"], mask) if c]
                per_rate = {}
                for r in rates:
                    pa, pb = plans[a][r], plans[bname][r]
                    if isinstance(pa, Infeasible) or isinstance(pb, Infeasible):
                        continue
                    la, lb = set(pa.layers), set(pb.layers)
                    per_rate[f"{r:g}"] = {"common": sorted(la & lb), "overlap": len(la & lb) / max(len(la), 1)}
                ba = set(layer_scores["criteria"][a]["bottom"])
                bb = set(layer_scores["criteria"][bname]["bottom"])
                out[f"{a}-vs-{bname}"] = {"spearman": spearman(sa, sb), "per_rate": per_rate,
                                          "bottom_overlap": len(ba & bb) / max(len(ba), 1)}
        return out

    # -- timing --------------------------------------------------------------------------------------------------
    def time_backend(self, backend: str, name: str, variants: list[_Variant], extra: list, work: Path,
                     protocol: LatencyProtocol) -> tuple[dict, dict]:
        from xprune.bench.run import BenchSettings, Target, bench, open_target
        from xprune.runtime.pytorch.runner import TorchRunner

        targets: list[tuple[str, Target]] = []
        base = variants[0]
        if backend == "torch":
            for v in variants:
                info: dict[str, Any] = {"source": f"torch:{name}:{v.id}", "model": name, "variant": "baseline" if v is base else "zeroed",
                        "method": None if v is base else v.method, "rate": None, "variant_id": v.id,
                        "zeroed_layers": list(v.layers),
                        "input_shape": [1, 3, v.detector.input_size, v.detector.input_size]}
                targets.append((v.id, Target(Path(str(info["source"])), TorchRunner(v.detector), info)))
            if self.s.aa_control:
                copy_det = copy.deepcopy(base.detector)
                info = {**targets[0][1].info, "source": f"torch:{name}:baseline-copy", "variant": "baseline-copy",
                        "variant_id": "baseline-copy"}
                targets.insert(1, ("baseline-copy", Target(Path(str(info["source"])), TorchRunner(copy_det), info)))
        elif backend == "onnxruntime":
            for v in variants:
                assert v.onnx is not None
                t = open_target(v.onnx, threads=self.s.threads)
                t.info.update({"variant_id": v.id, "zeroed_layers": list(v.layers)})
                targets.append((v.id, t))
                if v.onnx_zeroed is not None:
                    tz = open_target(v.onnx_zeroed, threads=self.s.threads)
                    tz.info.update({"variant_id": f"{v.id}-zeroed", "zeroed_layers": list(v.layers)})
                    targets.append((f"{v.id}-zeroed", tz))
            if self.s.aa_control:
                assert base.onnx is not None
                dup = work / f"{name}-baseline-copy.onnx"
                dup.write_bytes(base.onnx.read_bytes())
                t = open_target(dup, threads=self.s.threads)
                t.info.update({"variant": "baseline-copy", "variant_id": "baseline-copy"})
                targets.insert(1, ("baseline-copy", t))
            targets += [(t.info["variant_id"], t) for t in extra]
        elif backend == "tensorrt":
            from xprune.runtime.tensorrt.build import build_engine
            engines: list[tuple[str, Path]] = [(v.id, v.onnx) for v in variants if v.onnx is not None]
            if self.s.aa_control and base.onnx is not None:
                engines.insert(1, ("baseline-copy", base.onnx))
            for vid, onnx_path in engines:
                engine = work / f"{name}-{vid}.engine"
                self.log(f"[{name}] building TensorRT engine {engine.name}")
                build_engine(onnx_path, engine, fp16=self.s.trt_fp16)
                t = open_target(engine)
                t.info.update({"variant_id": vid})
                targets.append((vid, t))
        else:  # pragma: no cover - validated
            raise XpruneError(f"unknown backend {backend}")
        doc = bench([t for _, t in targets], BenchSettings(protocol=protocol, interleave=True,
                                                           threads=self.s.threads),
                    command=self.command)
        by_source = {r["source"]: r for r in doc["rows"]}
        by_id = {vid: by_source[t.info["source"]] for vid, t in targets}
        return doc, by_id

    # -- ONNX Runtime accuracy ---------------------------------------------------------------------------------
    def onnx_map(self, path: Path, runner_factory, val, det) -> dict:
        from xprune.evaluate.coco_map import evaluate_predictions
        with runner_factory(path) as r:
            return evaluate_predictions(r.predict, val, det.category_ids, batch_size=1, progress=self.s.progress)

    # -- the peer -------------------------------------------------------------------------------------------------
    def peer_export(self, det, work: Path, data: Path) -> dict:
        from xprune.bench.run import Target
        from xprune.data.coco import CocoDetectionSet
        from xprune.study.peer import UltralyticsOnnxRunner, export_ultralytics_onnx

        path = work / f"{det.family}-ultralytics.onnx"
        self.log(f"[{det.family}] peer: Ultralytics' own ONNX export")
        try:
            names: list[str] | None = CocoDetectionSet.from_folder(data, "val", 32, limit=1).class_names
            if names is not None and len(names) != det.num_classes:
                names = None
            info = export_ultralytics_onnx(det, path, names)
        except XpruneError as e:
            self.log(f"[{det.family}] peer export failed: {e}")
            return {"available": False, "reason": str(e)}
        runner = UltralyticsOnnxRunner(path, threads=self.s.threads, nms_iou=det.nms_iou)
        x = np.random.default_rng(1).random((1, 3, det.input_size, det.input_size), dtype=np.float32)
        with torch.no_grad():
            ref = [o.numpy() for o in det.raw(torch.from_numpy(x))]
        with UltralyticsOnnxRunner(path, threads=self.s.threads) as r:
            got = [o.numpy() for o in r.raw(x)]
        tinfo = {"source": str(path), "model": det.family, "variant": "peer-ultralytics", "method": None,
                 "rate": None, "variant_id": "peer-ultralytics", "input_shape": info["input_shape"],
                 "exporter": "ultralytics"}
        return {"available": True, "model": det.family, "export": info, "runner": runner, "path": path,
                "decoded_max_rel_error_vs_torch": max_rel_error(ref, got), "_target": Target(path, runner, tinfo)}

    def peer_results(self, p: dict, by_id: dict, variants: list[_Variant], base: _Variant, accuracy: bool, val,
                     det) -> dict:
        out = {k: v for k, v in p.items() if k not in ("runner", "path", "_target")}
        if not p.get("available"):
            return out
        t = by_id["peer-ultralytics"]
        out.update({**_latency_fields(t), "samples_file_row": "peer-ultralytics"})
        base_t = by_id["baseline"]
        out["xprune_baseline_vs_peer"] = ratio_summary(paired_ratios(base_t["samples_ms"], t["samples_ms"]))
        out["xprune_baseline_fps"] = base_t["fps"]
        if "baseline-copy" in by_id:
            out["aa_control"] = ratio_summary(paired_ratios(by_id["baseline-copy"]["samples_ms"], base_t["samples_ms"]))
        if accuracy:
            from xprune.study.peer import UltralyticsOnnxRunner
            self.log(f"[{det.family}] peer: mAP through ONNX Runtime + shared post-process")
            m = self.onnx_map(p["path"], lambda q: UltralyticsOnnxRunner(q, threads=self.s.threads,
                                                                       nms_iou=det.nms_iou), val, det)
            out.update({"map": m["map"], "map50": m["map50"], "val_images": m["images"]})
            if "onnx_map" not in base.info and base.onnx is not None:  # the peer is compared with xprune's export on the same runtime
                self.log(f"[{det.family}] mAP of xprune's baseline ONNX through ONNX Runtime")
                mb = self.onnx_map(base.onnx, lambda q: OnnxRuntimeRunner(q, threads=self.s.threads, nms_iou=det.nms_iou), val, det)
                base.info.update({"onnx_map": mb["map"], "onnx_map50": mb["map50"]})
        comps = []
        for v in variants:
            if v is base:
                continue
            tv = by_id[v.id]
            ratio = ratio_summary(paired_ratios(tv["samples_ms"], t["samples_ms"]))
            for method, rate in v.uses:
                comps.append({"method": method, "rate": rate, "variant_id": v.id, "layers_zeroed": len(v.layers),
                              "xprune_fps": tv["fps"], "xprune_median_ms": tv["median_ms"],
                              "latency_ratio_vs_peer": ratio["median"], "latency_ratio_p10": ratio["p10"],
                              "latency_ratio_p90": ratio["p90"], "faster": ratio["median"] < 1.0,
                              "clearly_faster": ratio["p90"] < 1.0,
                              "removed_mac_fraction": v.info.get("removed_mac_fraction"),
                              "map": v.info.get("map") if accuracy else None,
                              "map_lost": (base.info["map"] - v.info["map"]) if accuracy else None,
                              "dmap_pct": pct_change(v.info.get("map"), base.info.get("map")) if accuracy else None})
        comps.sort(key=lambda c: (c["method"], c["rate"]))
        out["comparisons"] = comps
        out["baseline_map"] = base.info.get("map") if accuracy else None
        out["baseline_onnx_map"] = base.info.get("onnx_map") if accuracy else None
        return out

    # -- the whole study -----------------------------------------------------------------------------------------
    def backends(self) -> dict:
        import onnxruntime as ort
        out = {}
        threads = torch.get_num_threads()
        if "torch" in self.s.backends:
            out["torch"] = {"available": True, "device": "cpu", "threads": threads, "version": torch.__version__,
                            "variant": "zeroed weights, dense compute (eager)"}
        if "onnxruntime" in self.s.backends:
            import os
            out["onnxruntime"] = {"available": True, "device": "cpu", "version": ort.__version__,
                                  "threads": self.s.threads or os.cpu_count(), "spinning": False,
                                  "variant": "exported raw heads, zeroed layers folded (xprune.export.fold)"}
        if "tensorrt" in self.s.backends:
            from xprune.runtime.tensorrt import require_tensorrt
            try:
                version = require_tensorrt()
                out["tensorrt"] = {"available": True, "device": "cuda:0", "version": version,
                                   "precision": "fp16" if self.s.trt_fp16 else "fp32",
                                   "variant": "engine built from the folded ONNX"}
            except XpruneError as e:
                out["tensorrt"] = {"available": False, "reason": str(e)}
        return out

    def run(self) -> Path:
        s = self.s
        s.validate()
        if s.threads:
            torch.set_num_threads(s.threads)
        t0 = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        data = self.dataset()
        backends = self.backends()
        trt = backends.get("tensorrt")
        if trt is not None and not trt["available"]:
            self.log(f"tensorrt: unavailable ({trt['reason']})")
        env = environment()
        doc: dict[str, Any] = {"format": FORMAT, "complete": False, "command": self.command, "environment": env,
               "settings": s.describe(), "dataset": display_path(data), "backends": backends,
               "tensorrt": (f"available (TensorRT {trt['version']})" if trt and trt["available"]
                            else f"unavailable ({trt['reason']})" if trt else "not requested"),
               "models": [], "rows": [], "peer": None}
        path = self.out / STUDY_FILE
        from xprune.files import write_json
        with tempfile.TemporaryDirectory(prefix="xprune-study-") as tmp:
            for i, name in enumerate(s.models, 1):
                work = (self.out / "onnx") if s.keep_onnx else Path(tmp) / name
                work.mkdir(parents=True, exist_ok=True)
                self.log(f"model {i}/{len(s.models)}: {name}")
                model_doc, rows, peer = self.run_model(name, data, work, backends)
                doc["models"].append(model_doc)
                doc["rows"] += rows
                if peer is not None and doc["peer"] is None:
                    doc["peer"] = peer
                doc["seconds"] = round(time.perf_counter() - t0, 1)
                write_json(path, doc)
                self.log(f"[{name}] done in {model_doc['seconds']:.0f} s -> {path}")
        doc["complete"] = True
        doc["seconds"] = round(time.perf_counter() - t0, 1)
        write_json(path, doc)
        return path


def run_study(settings: StudySettings, log: Log = print) -> Path:
    """Run the study; returns the path of the study results JSON (OUT/study.json)."""
    return _Study(settings, log).run()
