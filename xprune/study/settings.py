"""What a study measures (`StudySettings`), its defaults, and its presets.

The defaults are the protocol of the committed study (`benchmarks/results/study/study.json`, "settings"); every
entry point (`xprune study`, `xprune demo`, `benchmarks/reproduce.py`) starts from them. The presets are named
constructors:

- `StudySettings.paper(out)`  the paper's sweep as committed: the models with reference checkpoints get accuracy
  rows, the others (random init) speed-only rows at fewer rates and a shorter latency protocol; every val image;
- `StudySettings.quick(out)`  a smoke run: random-init YOLOv8n at 64 px, two rates, three timed runs, eight images;
- `StudySettings.demo(out)`   one reference model per trainer (`DEMO_MODELS`) at one rate on PyTorch and ONNX
  Runtime, with the zeroed-only ONNX timed and mAP measured through ONNX Runtime too, on at most `DEMO_VAL_IMAGES` val images.

The measurement protocol every preset shares: mAP of every variant in PyTorch and, for accuracy models, of its
exported ONNX file through ONNX Runtime; a bootstrap interval over images for every mAP and a paired one for every
ΔmAP against the baseline; every interleaved round in an order drawn from `order_seed`; the thread count and the
runner's description in every row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from xprune.bench.latency import LatencyProtocol
from xprune.errors import XpruneError
from xprune.files import display_path
from xprune.runtime.registry import export_backends, onnx_backend

Log = Callable[[str], None]  # where a study reports progress

FORMAT = "xprune-study-3"
# the report still draws studies from before the intervals (1) and before one peer per runtime (2)
READABLE_FORMATS = ("xprune-study-1", "xprune-study-2", FORMAT)
STUDY_FILE = "study.json"
# The study's slot for the model's own framework: the detector in memory, run by the registry's backend for its
# framework (PyTorch eager, or jit-compiled XLA for a JAX family). Study files have always called it "torch".
FRAMEWORK = "torch"
FIGURE_RATE = 0.05  # the paper's rate: the layers marked in the importance figure (Fig. 2)


def map_prefix(source: str) -> str:
    """The prefix of a variant's mAP fields measured on `source` (the framework or a backend that runs exported
    files for their mAP): "" for the framework, "onnx_" for the registry's ONNX backend (as studies have always
    named it), "<backend>_" for the others."""
    if source == FRAMEWORK:
        return ""
    return "onnx_" if source == onnx_backend().name else f"{source}_"

ACCURACY_MODELS = ("yolov8n", "ssdlite320-mbv3", "tinyssd-jax")  # references in the package: accuracy rows
# references kept in the user's cache once trained here (benchmarks/train_reference.py): accuracy rows where they
# are, speed-only rows (random init) elsewhere
SPEED_MODELS = ("ssd-mobilenetv2", "ssd-shufflenetv2")
# The ResNet-50 families join the default study only where their cached reference is: without one they would be
# random-init speed rows that take an hour of this study's CPU time for little
LARGE_MODELS = ("ssd-resnet50", "retinanet-r50-fpn", "fasterrcnn-r50-fpn")
CRITERIA = ("l1", "attr")
RATES = (0.01, 0.02, 0.05, 0.10, 0.15, 0.20)  # the paper's sweep
SPEED_RATES = (0.05, 0.10)
CALIB_IMAGES = 32
MIN_VAL_IMAGES = 300  # fewer val images than this make mAP intervals too wide to tell the criteria apart
BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95
BATCH_SIZE = 8
SPEED_INPUT_SIZE = 256
LATENCY = LatencyProtocol(warmup_runs=10, warmup_s=1.0, runs=60, min_s=3.0)
SPEED_LATENCY = LatencyProtocol(warmup_runs=5, warmup_s=1.0, runs=40, min_s=3.0)



def study_backends() -> tuple[str, ...]:
    """What a model can be timed on: its own framework, then every backend of the registry that runs an exported
    model (the ONNX file, or an engine built from it)."""
    return (FRAMEWORK, *(b.name for b in export_backends()))


def default_models() -> list[str]:
    """The accuracy and speed-only models, less the families that cannot run here (JAX without the `jax` extra),
    and the large families whose reference is here."""
    from xprune.models.zoo import FAMILIES
    from xprune.reference import reference_models

    light = [m for m in (*ACCURACY_MODELS, *SPEED_MODELS) if FAMILIES[m].available()]
    refs = reference_models()
    return light + [m for m in LARGE_MODELS if m in refs]


QUICK_MODELS = ("yolov8n",)
QUICK_RATES = (0.02, 0.05)
QUICK_IMAGES = 8  # calibration (at most) and val images of a quick run
QUICK_LATENCY = LatencyProtocol(warmup_runs=1, warmup_s=0.0, runs=3, min_s=0.0)

DEMO_RATE = 0.05
DEMO_CALIB_IMAGES = 64
DEMO_LATENCY_RUNS = 100
# One reference per trainer (Ultralytics, torchvision, JAX): every reference at once takes about seven minutes on a
# 2-core CPU, over the demo's five. `--models` picks others.
DEMO_MODELS = ("yolov8n", "ssdlite320-mbv3", "tinyssd-jax")
DEMO_VAL_IMAGES = 100  # the demo's cap: three mAP passes per variant must fit its five minutes on a 2-core CPU


@dataclass
class StudySettings:
    """What `run_study` measures. Every model gets the same rates and latency protocol unless `speed_rates` /
    `speed_latency` give others for the speed-only (random-init) ones, as the paper preset does."""

    out: Path
    models: list[str] = field(default_factory=lambda: default_models())
    criteria: tuple[str, ...] = CRITERIA
    rates: tuple[float, ...] = RATES
    policy: str = "safe"
    # Dataset (COCO format). None: the synthetic set (SynthConfig defaults) generated or reused in OUT/data.
    data: Path | None = None
    calib_images: int = CALIB_IMAGES
    val_images: int | None = None  # None: the whole val split
    val_cap_reason: str | None = None  # why a preset evaluates fewer images than the split has (the report says it)
    batch_size: int = BATCH_SIZE
    # Weights: committed reference checkpoints (accuracy rows) unless use_reference is False; `weights` names
    # checkpoints explicitly ({model: path}, accuracy rows too). Anything else is random init: speed-only rows.
    use_reference: bool = True
    weights: dict[str, str] = field(default_factory=dict)
    speed_input_size: int = SPEED_INPUT_SIZE  # input size of random-init (speed-only) families
    speed_rates: tuple[float, ...] | None = None  # rates for speed-only families (None: `rates`)
    backends: tuple[str, ...] = field(default_factory=study_backends)
    latency: LatencyProtocol = LATENCY
    speed_latency: LatencyProtocol | None = None  # protocol for speed-only families (None: `latency`)
    threads: int | None = None  # torch and ONNX Runtime intra-op threads (None: torch's current / all cores)
    aa_control: bool = True  # time the baseline twice per backend (the noise floor of the comparison)
    order_seed: int = 0  # each interleaved round runs its targets in an order drawn from this seed (recorded)
    onnx_map: bool = True  # mAP of every variant's exported file through each timed backend that runs exported
    #                        files for their mAP (ONNX Runtime, OpenVINO; accuracy models): each backend's table
    #                        reports what that runtime detects, not the PyTorch figure
    bootstrap_resamples: int = BOOTSTRAP_RESAMPLES  # resamples of the val images for every mAP and ΔmAP interval
    confidence: float = CONFIDENCE
    onnx_zeroed: bool = False  # also time the zeroed-only (unfolded) ONNX of every variant
    peer: bool = True  # Ultralytics' own export of YOLO models, in the same run of each backend it has a format for
    trt_fp16: bool = False
    keep_onnx: bool = False  # keep exported ONNX files in OUT/onnx (default: a temporary folder)
    command: str | None = None
    progress: bool = True
    resume: bool = False  # keep the models OUT/study.json already holds from the same study (`resume`)

    # -- presets ---------------------------------------------------------------------------------------------------
    @classmethod
    def paper(cls, out: Path, **changes: Any) -> StudySettings:
        """The committed study: `benchmarks/reproduce.py` and `xprune study` without options."""
        return cls(out=Path(out), **{"speed_rates": SPEED_RATES, "speed_latency": SPEED_LATENCY, **changes})

    @classmethod
    def quick(cls, out: Path, **changes: Any) -> StudySettings:
        """A smoke run that exercises every stage in about a minute."""
        calib = min(changes.pop("calib_images", QUICK_IMAGES), QUICK_IMAGES)
        preset: dict[str, Any] = {"models": list(QUICK_MODELS), "rates": QUICK_RATES, "val_images": QUICK_IMAGES,
                                  "batch_size": 4, "use_reference": False, "speed_input_size": 64,
                                  "latency": QUICK_LATENCY}
        return cls(out=Path(out), calib_images=calib, **{**preset, **changes})

    @classmethod
    def demo(cls, out: Path, models: list[str] | None = None, rate: float | None = None,
             latency_runs: int | None = None, calib_images: int | None = None, **changes: Any) -> StudySettings:
        """The `DEMO_MODELS` that have a reference here (or `models`, each of which must have one) at one rate."""
        from xprune.prune.plan import check_rate
        from xprune.reference import reference_models

        rate = check_rate(DEMO_RATE if rate is None else rate)
        refs = reference_models()
        if not refs:
            raise XpruneError("no reference checkpoints found in the package; run benchmarks/train_reference.py")
        names = list(models or [m for m in DEMO_MODELS if m in refs] or sorted(refs))
        unknown = [n for n in names if n not in refs]
        if unknown:
            raise XpruneError(f"no reference checkpoint for {unknown[0]}; available: {', '.join(sorted(refs))}")
        runs = DEMO_LATENCY_RUNS if latency_runs is None else latency_runs
        # a short run is for a look, not a measurement: it skips the minimum timed seconds
        latency = LatencyProtocol(runs=runs, min_s=3.0 if runs >= 100 else 0.0)
        # the model's framework and the runtime of its exported file, whose mAP the demo measures too
        preset: dict[str, Any] = {"backends": (FRAMEWORK, onnx_backend().name), "onnx_map": True,
                                  "onnx_zeroed": True, "peer": False, "val_images": DEMO_VAL_IMAGES,
                                  "val_cap_reason": f"the demo evaluates at most {DEMO_VAL_IMAGES} val images so "
                                                    "that it runs in a few minutes on a small CPU"}
        if changes.get("val_images") is None:  # not given: the demo's cap
            changes.pop("val_images", None)
        else:
            changes.setdefault("val_cap_reason", None)
        return cls(out=Path(out), models=names, rates=(rate,), latency=latency,
                   calib_images=calib_images or DEMO_CALIB_IMAGES, **{**preset, **changes})

    # -- checks and the record -------------------------------------------------------------------------------------
    def validate(self) -> None:
        from xprune.importance.criteria import CRITERIA as KNOWN_CRITERIA
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
            if c not in KNOWN_CRITERIA:
                raise XpruneError(f"unknown criterion '{c}'; choose from: {', '.join(KNOWN_CRITERIA)}")
        if not self.criteria:
            raise XpruneError("the study needs at least one criterion")
        if not self.rates:
            raise XpruneError("the study needs at least one pruning rate")
        for r in (*self.rates, *(self.speed_rates or ())):
            check_rate(r)
        if self.policy not in POLICIES:
            raise XpruneError(f"unknown candidate policy '{self.policy}'; choose one of: {', '.join(POLICIES)}")
        known = study_backends()
        unknown = [b for b in self.backends if b not in known]
        if unknown:
            raise XpruneError(f"unknown backend '{unknown[0]}'; choose from: {', '.join(known)}")
        if self.speed_input_size < 32 or self.speed_input_size % 32:
            raise XpruneError(f"speed_input_size must be a positive multiple of 32, got {self.speed_input_size}")
        for m in self.weights:
            if m not in self.models:
                raise XpruneError(f"weights given for {m}, which is not in the study's models")
        if self.val_images is not None and self.val_images < 1:
            raise XpruneError(f"val_images must be at least 1, got {self.val_images}")
        if self.order_seed < 0:
            raise XpruneError(f"the timing order seed must be >= 0, got {self.order_seed}")
        if self.bootstrap_resamples < 100:
            raise XpruneError(f"bootstrap_resamples must be at least 100, got {self.bootstrap_resamples}")
        if not 0.5 <= self.confidence < 1.0:
            raise XpruneError(f"confidence must be in [0.5, 1), got {self.confidence}")

    def rates_for(self, accuracy: bool) -> tuple[float, ...]:
        return tuple(self.rates if accuracy else (self.speed_rates or self.rates))

    def latency_for(self, accuracy: bool) -> LatencyProtocol:
        return self.latency if accuracy else (self.speed_latency or self.latency)

    def describe(self) -> dict:
        """The "settings" block of study.json."""
        d = asdict(self)
        d["out"] = display_path(self.out)
        d["data"] = display_path(self.data) if self.data else None
        d["latency"] = asdict(self.latency)
        d["speed_latency"] = asdict(self.speed_latency) if self.speed_latency else None
        d["criteria"], d["rates"], d["backends"] = list(self.criteria), list(self.rates), list(self.backends)
        d["speed_rates"] = list(self.speed_rates) if self.speed_rates else None
        return d
