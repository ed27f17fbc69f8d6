"""TensorRT: serialized engines (.engine / .plan / .trt) built from an ONNX export (`xprune export --engine trt`,
`build_from_onnx`), on an NVIDIA GPU.

TensorRT is optional (extra `trt`); every entry point calls `require_tensorrt()` first so a machine without it
gets one clear line instead of a lazy-import traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from xprune.errors import XpruneError

if TYPE_CHECKING:
    from xprune.runtime.registry import EngineOptions, TargetOptions
    from xprune.runtime.tensorrt.runner import TensorRTRunner

NOT_INSTALLED = "TensorRT is not installed; install xprune[trt] on a machine with an NVIDIA GPU"
NO_GPU = "TensorRT needs an NVIDIA GPU; none is visible (torch.cuda.is_available() is False)"


def require_tensorrt() -> str:
    """Return the installed TensorRT version, or raise XpruneError when TensorRT or a GPU is missing.

    The `tensorrt-stubs` package installs a `tensorrt/` folder of `.pyi` files only, which imports as an empty
    namespace package; that counts as not installed.
    """
    try:
        import tensorrt
    except ImportError:
        raise XpruneError(NOT_INSTALLED) from None
    except OSError as e:  # the bindings are there but libnvinfer cannot be loaded
        raise XpruneError(f"TensorRT is installed but its libraries cannot be loaded: {e}") from None
    version = getattr(tensorrt, "__version__", None)
    if not isinstance(version, str) or not hasattr(tensorrt, "Builder"):
        raise XpruneError(NOT_INSTALLED)
    import torch

    if not torch.cuda.is_available():
        raise XpruneError(NO_GPU)
    return version


available = require_tensorrt


def open_file(path: Path, options: TargetOptions) -> tuple[TensorRTRunner, dict[str, Any]]:
    """An engine runs on the GPU and at the precision it was built for; the device and precision options do not
    apply to it."""
    from xprune.runtime.tensorrt.runner import TensorRTRunner

    runner = TensorRTRunner(path)
    return runner, runner.load_engine.model_facts()


def run_facts(options: TargetOptions) -> dict[str, Any]:
    """`fp16`: the precision the engines are built in."""
    return {"device": "cuda:0", "version": require_tensorrt(), "precision": "fp16" if options.fp16 else "fp32"}


def build_from_onnx(onnx_path: Path, engine_path: Path, options: EngineOptions) -> dict[str, Any]:
    """An engine and its sidecar from an ONNX export; int8 calibrates on `options.calibration_data`'s calibration
    images. Returns the sidecar."""
    from xprune.runtime.tensorrt.build import build_engine, calibration_batches

    calibration = None
    if options.int8:
        size = options.input_size
        if size is None:
            raise XpruneError("an int8 build needs the model's input size for its calibration images")
        calibration = calibration_batches(options.calibration_data, size, options.calibration_images)
    return build_engine(onnx_path, engine_path, fp16=options.fp16, int8=options.int8,
                        calibration_batches=calibration, workspace_gb=options.workspace_gb,
                        timing_cache=options.timing_cache, dynamic_batch=options.dynamic_batch)
