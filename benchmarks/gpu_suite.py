"""GPU evidence suite: does zeroing layers make a detector faster on a GPU, and does folding them out?

For each trained reference family (YOLOv8n, SSDlite320-MobileNetV3) at a few of the study's rates, chosen by attr
and by l1, the baseline, the zeroed model and the folded model are timed on the device:

* PyTorch eager, fp32 and fp16, and the same with CUDA-graph replay (baseline and zeroed: eager PyTorch has no
  folded model);
* the exported ONNX graphs (baseline, zeroed-only, folded) through ONNX Runtime's CUDA provider when it has one,
  otherwise through onnx2torch (PyTorch, fp32/fp16, eager and CUDA graph); `--device cpu` runs both on the CPU;
* TensorRT fp16 and int8 engines when `tensorrt` imports, else one "unavailable: reason" line per precision.

Every runtime x precision is one group, timed in interleaved rounds whose order is shuffled per round from a seed,
with an A/A control (the baseline twice); CUDA events on CUDA, the host clock elsewhere; every sample is kept.
mAP on the synthetic val images checks that zeroed and folded models still detect. Results go to OUT/gpu_suite.json
(written atomically after every model) and the report OUT/gpu_suite.md, which `gpu_report.py` generates from the
JSON alone.

    python benchmarks/gpu_suite.py --out results/gpu                 # on a GPU machine (several minutes)
    python benchmarks/gpu_suite.py --out /tmp/dry --device cpu --quick   # a CPU dry run (well under a minute)
    python benchmarks/gpu_suite.py --out results/gpu --render-only   # redraw the report from the JSON

See docs/gpu.md for installing on a machine without internet and for reading the report.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import importlib
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpu_report import FORMAT, REPORT, RESULTS, paired_ratio, render, write_report  # noqa: E402,F401
from xprune.errors import XpruneError  # noqa: E402  (stdlib only: importable before the requirement check)

# What the suite imports, third-party first; a missing one is named by its pip name in one line.
REQUIRED = ("numpy", "torch", "torchvision", "onnx", "onnxruntime", "onnxslim", "onnx_graphsurgeon", "polygraphy",
            "pycocotools", "ptflops", "tqdm", "PIL", "xprune.models", "xprune.data.synth", "xprune.data.coco",
            "xprune.importance.scores", "xprune.prune.plan", "xprune.export.onnx_export", "xprune.export.fold",
            "xprune.evaluate.coco_map", "xprune.bench.environment", "xprune.bench.latency", "xprune.runtime.compare",
            "xprune.runtime.pytorch.runner", "xprune.runtime.onnxruntime.runner", "xprune.runtime.tensorrt.build")
PIP_NAMES = {"PIL": "pillow", "onnx_graphsurgeon": "onnx-graphsurgeon", "cv2": "opencv-python-headless",
             "yaml": "pyyaml", "google": "protobuf"}
ONNX_CHOICES = ("auto", "onnxruntime", "onnx2torch", "both")


def log_line(message: str) -> None:
    print(f"[gpu-suite] {message}", file=sys.stderr, flush=True)


# --- settings and checks -----------------------------------------------------------------------------------------

@dataclass
class Settings:
    out: Path
    device: str
    quick: bool
    models: list[str]
    criteria: list[str]
    rates: list[float]
    size: int | None
    runs: int
    warmup_runs: int
    warmup_s: float
    val_images: int
    calib_images: int
    data: Path | None
    seed: int
    threads: int | None
    onnx: str
    command: str

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder for gpu_suite.json and gpu_suite.md")
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (a dry run; default: cuda)")
    ap.add_argument("--quick", action="store_true", help="tiny settings: yolov8n at 64 px, attr at 5%%, 3 rounds")
    ap.add_argument("--models", nargs="+", default=None, help="default: the families with reference weights")
    ap.add_argument("--criteria", nargs="+", default=None, help="default: attr l1 (quick: attr)")
    ap.add_argument("--rates", type=float, nargs="+", default=None, help="default: 0.05 0.10 (quick: 0.05)")
    ap.add_argument("--size", type=int, default=None, help="input size (default: the reference's; quick: 64)")
    ap.add_argument("--runs", type=int, default=None, help="timed rounds per group (default 100; quick 3)")
    ap.add_argument("--warmup-runs", type=int, default=None, help="warm-up rounds (default 10, at least 1 s)")
    ap.add_argument("--val-images", type=int, default=None, help="mAP images (default 200; quick 4)")
    ap.add_argument("--calib-images", type=int, default=None, help="attr and int8 images (default 32; quick 4)")
    ap.add_argument("--data", default=None, help="COCO-format dataset (default: the synthetic set, generated)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the inputs and of the round orders")
    ap.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime CPU threads")
    ap.add_argument("--onnx-runtime", choices=ONNX_CHOICES, default="auto",
                    help="how ONNX graphs run on CUDA (auto: ONNX Runtime's CUDA provider if present, else onnx2torch)")
    ap.add_argument("--render-only", action="store_true", help="only regenerate the report from the results JSON")
    return ap.parse_args(argv)


def settings_from(args: argparse.Namespace, command: str) -> Settings:
    device = args.device.strip().lower()
    if device != "cpu" and not (device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
        raise XpruneError(f"unknown device '{args.device}'; expected cpu, cuda or cuda:N")
    def pick(value, quick_default, default):
        return value if value is not None else quick_default if args.quick else default

    s = Settings(out=Path(args.out), device=device, quick=args.quick, models=args.models or [],
                 criteria=pick(args.criteria, ["attr"], ["attr", "l1"]), rates=pick(args.rates, [0.05], [0.05, 0.10]),
                 size=pick(args.size, 64, None), runs=pick(args.runs, 3, 100),
                 warmup_runs=pick(args.warmup_runs, 1, 10), warmup_s=pick(None, 0.0, 1.0),
                 val_images=pick(args.val_images, 4, 200), calib_images=pick(args.calib_images, 4, 32),
                 data=Path(args.data) if args.data else None, seed=args.seed, threads=args.threads,
                 onnx=args.onnx_runtime, command=command)
    if s.size is not None and (s.size < 32 or s.size % 32):
        raise XpruneError(f"--size must be a positive multiple of 32, got {s.size}")
    for name, value in (("--runs", s.runs), ("--val-images", s.val_images), ("--calib-images", s.calib_images)):
        if value < 1:
            raise XpruneError(f"{name} must be at least 1, got {value}")
    if s.warmup_runs < 0 or (s.threads is not None and s.threads < 1):
        raise XpruneError("--warmup-runs must be >= 0 and --threads >= 1")
    return s


def import_error(module: str) -> str | None:
    """The pip name of what is missing to import `module`, or None when it imports."""
    try:
        importlib.import_module(module)
    except ImportError as e:
        missing = (e.name or module).split(".")[0]
        return PIP_NAMES.get(missing, missing)
    return None


def check_requirements(s: Settings) -> None:
    """Import everything the run needs (Ultralytics only for a YOLO family, onnx2torch only where it runs); one
    line naming what is missing."""
    missing = [m for m in (import_error(name) for name in REQUIRED) if m]
    optional = ["ultralytics"] if any(m.startswith("yolo") for m in s.models) else []
    if not s.cuda or s.onnx in ("onnx2torch", "both") or (s.onnx == "auto" and (missing or not ort_has_cuda())):
        optional.append("onnx2torch")
    for name in optional:
        if missing:  # the base is incomplete: only look for the package, importing it could fail on the base
            if importlib.util.find_spec(name) is None:
                missing.append(name)
            continue
        if name == "ultralytics":
            from xprune.models.yolo import quiet_ultralytics_env

            quiet_ultralytics_env()
        error = import_error(name)
        if error:
            missing.append(error)
    if missing:
        names = list(dict.fromkeys(missing))
        raise XpruneError(f"missing: {', '.join(names)} - pip install --no-deps <wheels> (see docs/gpu.md)")


def check_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise XpruneError(f"cannot write to {out}: {e.strerror or e}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise XpruneError(f"cannot write to {out}: permission denied")


def check_device(device: str) -> None:
    import torch

    if not device.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        raise XpruneError(f"--device {device}: no NVIDIA GPU is visible to PyTorch (use --device cpu for a dry run)")
    index = torch.device(device).index or 0
    if index >= torch.cuda.device_count():
        raise XpruneError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible")


def ort_has_cuda() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def onnx_runtimes(s: Settings) -> list[str]:
    """Which runtimes time the ONNX graphs."""
    if not s.cuda or s.onnx == "both":
        return ["onnxruntime", "onnx2torch"]
    if s.onnx == "auto":
        return ["onnxruntime" if ort_has_cuda() else "onnx2torch"]
    return [s.onnx]


# --- environment -------------------------------------------------------------------------------------------------

def dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def nvidia_smi() -> dict[str, Any]:
    """GPU clocks, power and driver from nvidia-smi, or why they could not be read."""
    fields = ("index,name,driver_version,pstate,clocks.sm,clocks.mem,clocks.max.sm,clocks.max.mem,power.draw,"
              "power.limit,temperature.gpu,persistence_mode")
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=15, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        return {"unavailable": f"{type(e).__name__}: {str(e).strip()[:160]}"}
    keys = fields.split(",")
    return {"gpus": [dict(zip(keys, (v.strip() for v in line.split(",")))) for line in done.stdout.splitlines()
                     if line.strip()]}


def suite_environment(s: Settings) -> dict[str, Any]:
    import onnxruntime
    import torch

    from xprune.bench.environment import environment

    env = environment(s.device)
    env["libraries"].update({n: dist_version(n) for n in ("onnx2torch", "tensorrt", "onnxruntime-gpu")})
    env.update({"threads": s.threads, "onnxruntime_providers": onnxruntime.get_available_providers(),
                "cudnn_benchmark": torch.backends.cudnn.benchmark, "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32})
    if s.cuda:
        from xprune.runtime.tensorrt.build import gpu_facts

        env["gpu"] = {**gpu_facts(torch.device(s.device).index or 0), "cudnn": torch.backends.cudnn.version()}
    env["nvidia_smi"] = nvidia_smi()
    return env


# --- models and variants -----------------------------------------------------------------------------------------

@dataclass
class Variant:
    name: str  # baseline, baseline-copy, <plan>/zeroed, <plan>/folded
    kind: str  # baseline | zeroed | folded
    plan: str | None  # "<criterion>@<rate>"
    detector: Any  # the PyTorch Detector (None for folded: that model exists only as a graph)
    onnx: Path
    nms_iou: float  # the family's, for the shared post-process


def load_detector(name: str, s: Settings, num_classes: int):
    from xprune.files import file_sha256
    from xprune.models import build_detector, load_checkpoint
    from xprune.reference import reference_models

    ref = reference_models().get(name)
    if ref is not None:
        det = load_checkpoint(ref["path"], name, s.size or ref.get("input_size"))
        return det, {"weights": "reference", "weights_sha256": file_sha256(ref["path"]),
                     "reference_val_map": ref.get("val_map")}
    det = build_detector(name, "none", num_classes=num_classes, input_size=s.size)
    return det, {"weights": "random-init", "weights_sha256": None, "reference_val_map": None}


def prepare_model(name: str, s: Settings, data: Path, work: Path, log) -> tuple[dict, list[Variant]]:
    """Score, plan, zero and export one family: its results entry and its variants."""
    from xprune.data.coco import calibration_set, dataset_num_classes
    from xprune.export.onnx_export import export_onnx
    from xprune.importance.scores import score_layers
    from xprune.prune.plan import Infeasible, apply_plan, plans_for_rates

    det, weights = load_detector(name, s, dataset_num_classes(data))
    size = det.input_size
    calib = calibration_set(data, size, s.calib_images)
    base = work / f"{name}-baseline.onnx"
    base_report = export_onnx(det, base, fold=False)
    variants = [Variant("baseline", "baseline", None, det, base, det.nms_iou),
                Variant("baseline-copy", "baseline", None, copy.deepcopy(det), base, det.nms_iou)]
    plans: list[dict] = []
    for criterion in s.criteria:
        log(f"[{name}] scoring with {criterion}")
        scores = score_layers(det, criterion, calib, batch_size=4, weights=weights["weights"])
        for rate, plan in plans_for_rates(det, scores, s.rates).items():
            key = f"{criterion}@{rate:g}"
            if isinstance(plan, Infeasible):
                plans.append({"plan": key, "method": criterion, "rate": rate, "infeasible": plan.reason})
                continue
            pruned = copy.deepcopy(det)
            apply_plan(pruned, plan)
            pruned.meta = {"pruning": plan.to_json()}
            log(f"[{name}] exporting {key}: {len(plan.layers)} layers zeroed, then folded")
            paths = {kind: work / f"{name}-{criterion}-{rate:g}-{kind}.onnx" for kind in ("zeroed", "folded")}
            export_onnx(pruned, paths["zeroed"], fold=False)
            folded = export_onnx(pruned, paths["folded"], fold=True)
            plans.append({"plan": key, "method": criterion, "rate": rate, "zeroed_layers": plan.layers,
                          "removed_mac_fraction": folded["removed_mac_fraction"], "macs_before": folded["macs_before"],
                          "macs_after": folded["macs_after"], "nodes_before": folded["nodes_before"],
                          "nodes_after": folded["nodes_after"]})
            variants += [Variant(f"{key}/zeroed", "zeroed", key, pruned, paths["zeroed"], det.nms_iou),
                         Variant(f"{key}/folded", "folded", key, None, paths["folded"], det.nms_iou)]
    entry = {"model": name, **weights, "input_size": size, "num_classes": det.num_classes,
             "baseline_macs": base_report["macs_after"], "baseline_nodes": base_report["nodes_after"], "plans": plans}
    return entry, variants


# --- groups: one runtime x precision, timed interleaved ----------------------------------------------------------

@dataclass(frozen=True)
class Group:
    runtime: str  # torch | onnxruntime | onnx2torch | tensorrt
    precision: str  # fp32 | fp16 | int8
    cuda_graph: bool = False

    @property
    def label(self) -> str:
        return f"{self.runtime}{'+graph' if self.cuda_graph else ''} {self.precision}"

    def takes(self, variant: Variant) -> bool:
        return variant.kind != "folded" if self.runtime == "torch" else True


def planned_groups(s: Settings, onnx: list[str], tensorrt: str | None) -> list[tuple[Group, str | None]]:
    """Every group the suite claims, with why it is not measured here ("skipped: ..." / "unavailable: ...", None
    when it is). CUDA-graph groups come after the others: a failed capture cannot disturb them."""
    def reason(graph: bool, precision: str) -> str | None:
        if s.cuda or not (graph or precision == "fp16"):
            return None
        return f"skipped: {'CUDA-graph replay' if graph else 'fp16'} needs a CUDA device (this is a CPU dry run)"

    modules = ["torch", "onnx2torch"]
    unused = {"onnxruntime": ("unavailable: ONNX Runtime has no CUDA provider here (onnxruntime-gpu is not installed)"
                              if s.onnx == "auto" else f"skipped: --onnx-runtime {s.onnx}"),
              "onnx2torch": f"skipped: ONNX Runtime's CUDA provider runs the ONNX graphs (--onnx-runtime {s.onnx})"}
    eager = [(Group(r, p), unused[r] if r not in onnx and r != "torch" else reason(False, p))
             for r in modules for p in ("fp32", "fp16")]
    ort = [(Group("onnxruntime", "fp32"), None if "onnxruntime" in onnx else unused["onnxruntime"])]
    graphs = [(Group(r, p, True), unused[r] if r not in onnx and r != "torch" else reason(True, p))
              for r in modules for p in ("fp32", "fp16")]
    trt = [(Group("tensorrt", p), tensorrt and f"unavailable: {tensorrt}") for p in ("fp16", "int8")]
    return eager + ort + graphs + trt


def make_runner(group: Group, variant: Variant, s: Settings, engines: dict[tuple[Path, str], Path], converted):
    if group.runtime == "torch":
        from xprune.runtime.pytorch.runner import TorchRunner

        return TorchRunner(variant.detector, s.device, fp16=group.precision == "fp16", cuda_graph=group.cuda_graph,
                           device_events=s.cuda)
    if group.runtime == "onnx2torch":
        from xprune.runtime.onnx2torch.loader import ModuleFromOnnx
        from xprune.runtime.onnx2torch.runner import Onnx2TorchRunner

        loader = converted.setdefault(variant.onnx, ModuleFromOnnx(variant.onnx))
        return Onnx2TorchRunner(loader, s.device, fp16=group.precision == "fp16", cuda_graph=group.cuda_graph,
                                device_events=s.cuda, nms_iou=variant.nms_iou)
    if group.runtime == "onnxruntime":
        from xprune.runtime.onnxruntime.runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner(variant.onnx, device=s.device, threads=s.threads, nms_iou=variant.nms_iou)
    from xprune.runtime.tensorrt.runner import TensorRTRunner

    return TensorRTRunner(engines[variant.onnx, group.precision], torch_index(s.device))


def torch_index(device: str) -> int:
    return int(device.split(":")[1]) if ":" in device else 0


def sample_ms(runner, x) -> float:
    """One timed run: CUDA events around the kernels when the runner keeps them, else the host clock."""
    from xprune.bench.latency import time_call_ms
    from xprune.runtime.base import CUDA_EVENTS

    if runner.timing == CUDA_EVENTS:
        return runner.time_device(x, runs=1, warmup=0)[0]
    return time_call_ms(lambda: runner.infer(x))


def time_interleaved(runners: dict[str, Any], x, s: Settings, rng) -> tuple[dict[str, list[float]], list[list[int]]]:
    """Warm-up rounds (at least `warmup_runs` and `warmup_s`), then `runs` timed rounds; each round runs every
    variant once in an order drawn from `rng`. Returns the samples per variant and each round's order."""
    names = list(runners)
    start, rounds = time.perf_counter(), 0
    while rounds < s.warmup_runs or time.perf_counter() - start < s.warmup_s:
        for i in rng.permutation(len(names)):
            sample_ms(runners[names[i]], x)
        rounds += 1
    samples: dict[str, list[float]] = {n: [] for n in names}
    orders: list[list[int]] = []
    for _ in range(s.runs):
        order = [int(i) for i in rng.permutation(len(names))]
        for i in order:
            samples[names[i]].append(sample_ms(runners[names[i]], x))
        orders.append(order)
    return samples, orders


def measure_group(model: str, group: Group, variants: list[Variant], s: Settings, x, rng, engines, converted,
                  plans: dict[str, dict]) -> tuple[dict, list[dict]]:
    from xprune.bench.latency import summarize

    members = [v for v in variants if group.takes(v)]
    runners = {v.name: make_runner(group, v, s, engines, converted) for v in members}
    with contextlib.ExitStack() as stack:
        for runner in runners.values():
            stack.enter_context(runner)
        samples, orders = time_interleaved(runners, x, s, rng)
    first = next(iter(runners.values()))
    info = {"status": "measured", "timing": first.timing, "backend": first.describe(), "variants": list(runners),
            "orders": orders}
    rows = []
    for v in members:
        plan = plans.get(v.plan or "", {})
        rows.append({"model": model, "runtime": group.runtime, "precision": group.precision,
                     "cuda_graph": group.cuda_graph, "device": s.device, "variant": v.name, "kind": v.kind,
                     "plan": v.plan, "method": plan.get("method"), "rate": plan.get("rate"),
                     "removed_mac_fraction": plan.get("removed_mac_fraction", 0.0) if v.kind == "folded" else 0.0,
                     "foldable_mac_fraction": plan.get("removed_mac_fraction", 0.0),
                     "samples_ms": [round(t, 5) for t in samples[v.name]], **summarize(samples[v.name])})
    return info, rows


def build_engines(variants: list[Variant], precision: str, data: Path, size: int, s: Settings, log) -> dict:
    from xprune.runtime.tensorrt.build import build_engine, calibration_batches

    engines = {}
    for onnx in dict.fromkeys(v.onnx for v in variants):
        engine = onnx.with_name(f"{onnx.stem}-{precision}.engine")
        log(f"building TensorRT {precision} engine {engine.name}")
        int8 = precision == "int8"
        build_engine(onnx, engine, fp16=True, int8=int8,
                     calibration_batches=calibration_batches(data, size, s.calib_images) if int8 else None)
        engines[onnx, precision] = engine
    return engines


# --- accuracy and exactness --------------------------------------------------------------------------------------

def accuracy(model: str, variants: list[Variant], s: Settings, data: Path, size: int, onnx: str) -> list[dict]:
    """mAP of each distinct model on the device in fp32: PyTorch for baseline and zeroed, the ONNX runtime for the
    folded graph (the same shared post-process for all)."""
    from xprune.data.coco import CocoDetectionSet
    from xprune.evaluate.coco_map import evaluate_predictions

    val = CocoDetectionSet.from_folder(data, "val", size, limit=s.val_images)
    rows = []
    for v in variants:
        if v.name == "baseline-copy":
            continue
        group = Group("torch" if v.kind != "folded" else onnx, "fp32")
        with make_runner(group, v, s, {}, {}) as runner:
            m = evaluate_predictions(runner.predict, val, variants[0].detector.category_ids, batch_size=1)
        rows.append({"model": model, "variant": v.name, "kind": v.kind, "plan": v.plan, "runtime": group.runtime,
                     "device": s.device, "map": m["map"], "map50": m["map50"], "images": m["images"]})
    return rows


@contextlib.contextmanager
def without_tf32():
    """Full fp32 convolutions and matmuls on CUDA (PyTorch lets cuDNN use TF32 by default, ~1e-3 relative error)."""
    import torch

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def folded_exactness(variants: list[Variant], s: Settings, onnx: str, x) -> dict[str, dict]:
    """Per plan: the folded graph's outputs against the zeroed graph's on one input (zeroed is the reference)."""
    from xprune.runtime.compare import compare_outputs

    by_name = {v.name: v for v in variants}
    out = {}
    for v in (v for v in variants if v.kind == "folded"):
        check = Group(onnx, "fp32")
        with without_tf32(), make_runner(check, v, s, {}, {}) as folded, \
                make_runner(check, by_name[f"{v.plan}/zeroed"], s, {}, {}) as zeroed:
            result = compare_outputs(folded.infer(x), zeroed.infer(x), "fp32")
        out[v.plan or ""] = {"runtime": onnx, "passed": result["passed"],
                             "max_rel_error": max(o["max_rel_error"] for o in result["outputs"]),
                             "max_abs_error": max(o["max_abs_error"] for o in result["outputs"])}
    return out


# --- the run -----------------------------------------------------------------------------------------------------

def dataset(s: Settings, work: Path, log) -> Path:
    if s.data is not None:
        return s.data
    from xprune.data.synth import SynthConfig, generate

    log(f"generating {s.val_images} val and {s.calib_images} calibration images of the synthetic set")
    return generate(work / "synth", SynthConfig(train=0, val=s.val_images, calib=s.calib_images))


def tensorrt_reason() -> str | None:
    from xprune.runtime.tensorrt import require_tensorrt

    try:
        require_tensorrt()
    except XpruneError as e:
        return str(e)
    return None


def failure(e: BaseException) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first[:300]}"


def run_model(name: str, s: Settings, data: Path, work: Path, onnx: list[str], trt: str | None, rng,
              log) -> tuple[dict, list[dict], list[dict]]:
    import numpy as np
    import torch

    t0 = time.perf_counter()
    entry, variants = prepare_model(name, s, data, work, log)
    size = entry["input_size"]
    x = rng.random((1, 3, size, size), dtype=np.float32)
    check = onnx[0]
    log(f"[{name}] folded vs zeroed and mAP on {s.val_images} images ({check} for ONNX graphs)")
    try:
        exactness = folded_exactness(variants, s, check, x)
        for plan in entry["plans"]:
            plan["folded_vs_zeroed"] = exactness.get(plan["plan"])
        entry["accuracy"] = accuracy(name, variants, s, data, size, check)
    except Exception as e:  # noqa: BLE001 - recorded like a failed group; the timing still runs
        entry["checks_failed"] = failure(e)
        log(f"[{name}] the checks failed: {entry['checks_failed']}")
    plans = {p["plan"]: p for p in entry["plans"]}
    groups: list[dict] = []
    rows: list[dict] = []
    converted: dict[Path, Any] = {}  # one onnx2torch conversion per graph, copied into every runner
    for group, reason in planned_groups(s, onnx, trt):
        info: dict[str, Any] = {"model": name, "runtime": group.runtime, "precision": group.precision,
                                "cuda_graph": group.cuda_graph, "device": s.device}
        if reason is not None:
            status, _, why = reason.partition(": ")
            groups.append({**info, "status": status, "reason": why})
            continue
        log(f"[{name}] timing {group.label}: {sum(group.takes(v) for v in variants)} variants interleaved, "
            f"{s.runs} rounds")
        try:
            engines = (build_engines(variants, group.precision, data, size, s, log)
                       if group.runtime == "tensorrt" else {})
            measured, group_rows = measure_group(name, group, variants, s, x, rng, engines, converted, plans)
        except Exception as e:  # noqa: BLE001 - one group's failure is a result; the other groups still run
            groups.append({**info, "status": "failed", "reason": failure(e)})
            log(f"[{name}] {group.label} failed: {groups[-1]['reason']}")
            if s.cuda:
                with contextlib.suppress(Exception):
                    torch.cuda.synchronize()
            continue
        finally:
            if s.cuda:
                torch.cuda.empty_cache()
        groups.append({**info, **measured})
        rows += group_rows
    entry["seconds"] = round(time.perf_counter() - t0, 1)
    return entry, groups, rows


def run_suite(s: Settings, log=log_line) -> dict:
    import numpy as np
    import torch

    from xprune.files import write_json

    if s.threads:
        torch.set_num_threads(s.threads)
    onnx = onnx_runtimes(s)
    trt = tensorrt_reason()
    log(f"device {s.device}; ONNX graphs through {' and '.join(onnx)}; TensorRT: {trt or 'available'}")
    doc: dict[str, Any] = {
        "format": FORMAT, "complete": False, "command": s.command,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"device": s.device, "quick": s.quick, "models": s.models, "criteria": s.criteria,
                     "rates": s.rates, "size": s.size, "runs": s.runs, "warmup_runs": s.warmup_runs,
                     "warmup_s": s.warmup_s, "val_images": s.val_images, "calib_images": s.calib_images,
                     "data": str(s.data) if s.data else "synthetic", "seed": s.seed, "threads": s.threads,
                     "onnx_runtimes": onnx, "order": "shuffled per round", "batch": 1},
        "environment": suite_environment(s), "models": [], "groups": [], "rows": []}
    rng = np.random.default_rng(s.seed)
    with tempfile.TemporaryDirectory(prefix="xprune-gpu-suite-") as tmp:
        work = Path(tmp)
        data = dataset(s, work, log)
        for name in s.models:
            entry, groups, rows = run_model(name, s, data, work, onnx, trt, rng, log)
            doc["models"].append(entry)
            doc["groups"] += groups
            doc["rows"] += rows
            write_json(s.out / RESULTS, doc)  # a partial file survives a run cut short
    doc["environment"]["nvidia_smi_after"] = nvidia_smi() if s.cuda else None
    doc["complete"] = True
    write_json(s.out / RESULTS, doc)
    return doc


def main(argv: list[str] | None = None, log=log_line) -> int:
    args = parse_args(argv)
    command = " ".join(["python", "benchmarks/gpu_suite.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        if not args.render_only:
            s = settings_from(args, command)
            s.models = s.models or (["yolov8n"] if s.quick else reference_families())
            check_requirements(s)
            check_inputs(s)
            check_device(s.device)
            check_out(s.out)
            run_suite(s, log)
        report = write_report(Path(args.out))
    except XpruneError as e:
        print(f"gpu_suite: error: {e}", file=sys.stderr)
        return 2
    print(f"results: {Path(args.out) / RESULTS}\nreport: {report}")
    return 0


def reference_families() -> list[str]:
    from xprune.reference import reference_models

    return sorted(reference_models())


def check_inputs(s: Settings) -> None:
    """What can be checked before minutes of work: families, criteria, rates, the dataset's val split."""
    from xprune.data.coco import first_annotated_split
    from xprune.importance.criteria import get_criterion
    from xprune.models.zoo import family
    from xprune.prune.plan import check_rate

    for name in s.models:
        family(name)
    for criterion in s.criteria:
        get_criterion(criterion)
    for rate in s.rates:
        check_rate(rate)
    if s.data is not None:
        first_annotated_split(s.data, ("val",))


if __name__ == "__main__":
    sys.exit(main())
