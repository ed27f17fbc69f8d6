"""Every backend xprune can run a model on, in one place; nothing outside `xprune/runtime/` imports a backend's
folder, every caller asks here.

A backend is a package under `xprune/runtime/<folder>/` that defines

    available() -> str                       the library version, or XpruneError saying why it cannot run here
    open_file(path, options) -> (runner, facts)
                                             a runner for the file (not yet entered) and the results-row facts
                                             the file tells (model, variant, input_shape, category_ids, ...)
    run_facts(options) -> dict               how it runs under `options` before any file is opened (device,
                                             version, threads, ...): what a results header records of it

and, as its declaration below says,

    open_runner(path, options, nms_iou) -> runner
                                             (`evaluates_map`) a runner for an exported file without reading the
                                             facts it carries, for mAP and output checks
    build_from_onnx(onnx_path, path, options) -> dict
                                             (`engine`) build the file it runs from an ONNX export; returns what
                                             the build records
    runner_for(detector, options) -> runner  (`framework`) a runner for a detector in memory

plus one line in BACKENDS declaring the file suffixes it opens, its label in reports and what else it does (or in
BY_NAME, for a second way to run files another backend opens: it runs only when named). Adding a backend is that
folder and that line; `xprune bench`, `xprune compare`, `xprune export --engine`, `xprune auto` and the study find
it here. Packages are imported only when used, so reading this table costs nothing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from xprune.errors import XpruneError

if TYPE_CHECKING:
    from xprune.runtime.base import Runner

ONNX_SUFFIX = ".onnx"  # what `xprune export` writes: every engine is built from one
DEFAULT_FRAMEWORK = "torch"  # the framework of a detector that names none: the zoo's PyTorch families


@dataclass(frozen=True)
class TargetOptions:
    """What the command line can say about how to run a file; each backend uses the options that apply to it."""

    device: str = "cpu"
    model: str | None = None  # family of a PyTorch checkpoint (a JAX checkpoint names its own)
    threads: int | None = None
    fp16: bool = False


@dataclass(frozen=True)
class EngineOptions:
    """What the command line can say about building an engine from an ONNX export; each builder uses the options
    that apply to it."""

    fp16: bool = False  # TensorRT: fp16 kernels; OpenVINO: weights stored in fp16
    bf16: bool = False  # infer in bf16 (backends declared `bf16`)
    int8: bool = False
    calibration_data: Path | None = None  # a dataset folder whose calibration images an int8 build reads
    calibration_images: int = 64
    input_size: int | None = None  # the side of the calibration images (the model's input)
    workspace_gb: float = 4.0
    timing_cache: Path | None = None
    dynamic_batch: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class Backend:
    name: str  # as results rows, study files and `--backends` name it
    suffixes: tuple[str, ...]  # files it opens
    package: str
    label: str  # as reports and figures name it
    engine: str | None = None  # `xprune export --engine NAME` builds its file from an ONNX export (None: no build)
    evaluates_map: bool = False  # runs an exported file for its mAP (and the export's output check)
    framework: str | None = None  # runs detectors in memory of this framework (a detector's `framework`)
    bf16: bool = False  # its build takes `EngineOptions.bf16`
    runs_onnx: bool = False  # also runs exported .onnx files, when named (they open with ONNX Runtime by suffix)
    ultralytics_format: str | None = None  # `YOLO.export(format=...)` writes a file it runs: the study's peer

    @property
    def builds_engine(self) -> bool:
        return self.engine is not None

    @property
    def runs_exported_onnx(self) -> bool:
        """Runs an exported ONNX file itself: opens it by suffix, or when named."""
        return self.runs_onnx or ONNX_SUFFIX in self.suffixes

    def module(self) -> ModuleType:
        return importlib.import_module(self.package)

    def available(self) -> str:
        """The backend library's version; raises XpruneError with the reason when it cannot run here."""
        return self.module().available()

    def open(self, path: Path, options: TargetOptions) -> tuple[Runner, dict[str, Any]]:
        return self.module().open_file(path, options)

    def run_facts(self, options: TargetOptions = TargetOptions()) -> dict[str, Any]:
        """How it runs under `options` (device, version, threads, ...); XpruneError when it cannot run here."""
        return self.module().run_facts(options)

    def runner(self, path: str | Path | bytes, options: TargetOptions = TargetOptions(),
               nms_iou: float | None = None) -> Runner:
        """A runner (not yet entered) for an exported file or its bytes, the facts it carries left unread."""
        if not self.evaluates_map:
            raise XpruneError(f"the {self.name} backend does not run exported files for their mAP")
        return self.module().open_runner(path, options, nms_iou)

    def build(self, onnx_path: str | Path, path: str | Path, options: EngineOptions = EngineOptions()) -> dict:
        """Build the file this backend runs from an ONNX export; returns what the build records."""
        if not self.builds_engine:
            raise XpruneError(f"the {self.name} backend builds no engine from ONNX")
        if options.bf16 and not self.bf16:
            raise XpruneError(f"the {self.name} backend builds no bf16 files")
        return self.module().build_from_onnx(Path(onnx_path), Path(path), options)

    def runner_for(self, detector: Any, options: TargetOptions = TargetOptions()) -> Runner:
        """A runner (not yet entered) for a detector in memory of this backend's framework."""
        if self.framework is None:
            raise XpruneError(f"the {self.name} backend runs files, not detectors in memory")
        return self.module().runner_for(detector, options)


BACKENDS: dict[str, Backend] = {
    "torch": Backend("torch", (".pt", ".pth"), "xprune.runtime.pytorch", "PyTorch eager", framework="torch"),
    "onnxruntime": Backend("onnxruntime", (ONNX_SUFFIX,), "xprune.runtime.onnxruntime", "ONNX Runtime",
                           evaluates_map=True, ultralytics_format="onnx"),
    "jax": Backend("jax", (".msgpack",), "xprune.runtime.jax", "JAX jit", framework="jax"),
    "openvino": Backend("openvino", (".xml",), "xprune.runtime.openvino", "OpenVINO", engine="openvino",
                        evaluates_map=True, bf16=True, runs_onnx=True, ultralytics_format="openvino"),
    "tensorrt": Backend("tensorrt", (".engine", ".plan", ".trt"), "xprune.runtime.tensorrt", "TensorRT",
                        engine="trt"),
}
# Backends for files another backend opens by suffix: they run only when named (`backend_named`).
BY_NAME: dict[str, Backend] = {
    "onnx2torch": Backend("onnx2torch", (ONNX_SUFFIX,), "xprune.runtime.onnx2torch", "onnx2torch"),
}


def all_backends() -> list[Backend]:
    return [*BACKENDS.values(), *BY_NAME.values()]


def backend_named(name: str) -> Backend:
    """A backend by its name, including those that never open a file by suffix."""
    table = {**BACKENDS, **BY_NAME}
    if name not in table:
        raise XpruneError(f"unknown backend '{name}'; choose one of: {', '.join(table)}")
    return table[name]


def backend_for(path: str | Path) -> Backend:
    """The backend that runs a file, by its suffix."""
    suffix = Path(path).suffix.lower()
    for backend in BACKENDS.values():
        if suffix in backend.suffixes:
            return backend
    known = [s for b in BACKENDS.values() for s in b.suffixes]
    raise XpruneError(f"{path}: unknown benchmark target type '{suffix}' (expected "
                      f"{', '.join(known[:-1])} or {known[-1]})")


def label(name: str) -> str:
    """How reports name a backend (the name itself where no backend has it, as in files from elsewhere)."""
    table = {**BACKENDS, **BY_NAME}
    return table[name].label if name in table else name


def export_backends() -> list[Backend]:
    """The backends that run an exported model, in table order: the ONNX file itself, or an engine built from it."""
    return [b for b in BACKENDS.values() if b.framework is None and (b.builds_engine or b.runs_exported_onnx)]


def map_backends() -> list[Backend]:
    """The backends that run an exported ONNX file for its mAP, the registry's ONNX backend first."""
    return [b for b in export_backends() if b.evaluates_map and b.runs_exported_onnx]


def onnx_backend() -> Backend:
    """The backend that runs exported ONNX files for their mAP and output checks: the first that opens them by
    suffix and evaluates mAP."""
    for backend in BACKENDS.values():
        if backend.evaluates_map and ONNX_SUFFIX in backend.suffixes:
            return backend
    raise XpruneError(f"no backend runs {ONNX_SUFFIX} files for their mAP")


def framework_backend(framework: str = DEFAULT_FRAMEWORK) -> Backend:
    """The backend that runs detectors in memory of `framework` ("torch", "jax")."""
    for backend in all_backends():
        if backend.framework == framework:
            return backend
    raise XpruneError(f"no backend runs {framework} detectors in memory")


def runner_for(detector: Any, options: TargetOptions = TargetOptions()) -> Runner:
    """A runner (not yet entered) for a detector in memory, on the backend of its own framework: PyTorch eager for
    the torch families, JAX's jit for the JAX ones."""
    return framework_backend(getattr(detector, "framework", DEFAULT_FRAMEWORK)).runner_for(detector, options)


def engine_names() -> list[str]:
    """The names `xprune export --engine` builds, besides plain ONNX."""
    return [b.engine for b in all_backends() if b.engine is not None]


def engine_builder(name: str) -> Backend:
    """The backend whose file `xprune export --engine NAME` builds."""
    for backend in all_backends():
        if backend.engine == name:
            return backend
    raise XpruneError(f"unknown engine '{name}'; choose one of: {', '.join(engine_names())}")
