"""JAX: checkpoints of the JAX families (.msgpack), jit-compiled and run by XLA on the CPU.

JAX is optional (extra `jax`); `available()` says so in one line on a machine without it. The checkpoint names
its family, so `--model` is optional here (given, it must match).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from xprune.errors import XpruneError

if TYPE_CHECKING:
    from xprune.models.jax.detector import JaxDetector
    from xprune.runtime.jax.runner import JaxRunner
    from xprune.runtime.registry import TargetOptions


def available() -> str:
    from xprune.models.jax import require_jax

    require_jax()
    import jax

    return jax.__version__


def check_options(what: str, options: TargetOptions) -> None:
    if not options.device.startswith("cpu"):
        raise XpruneError(f"{what}: the jax backend runs on the CPU (got --device {options.device})")
    if options.fp16:
        raise XpruneError(f"{what}: the jax backend runs in fp32 only")


def open_file(path: Path, options: TargetOptions) -> tuple[JaxRunner, dict[str, Any]]:
    available()
    check_options(str(path), options)
    from xprune.export.onnx_export import provenance
    from xprune.runtime.jax.loader import DetectorFromCheckpoint
    from xprune.runtime.jax.runner import JaxRunner

    det = DetectorFromCheckpoint(path, options.model)()
    facts = {"model": det.family, "input_shape": [1, 3, det.input_size, det.input_size],
             "category_ids": det.category_ids, **provenance(det, folded=False)}
    return JaxRunner(det), facts


def run_facts(options: TargetOptions) -> dict[str, Any]:
    version = available()
    from xprune.runtime.jax.runner import xla_cpu_threads

    return {"device": "cpu", "threads": xla_cpu_threads(), "version": version}


def runner_for(detector: JaxDetector, options: TargetOptions) -> JaxRunner:
    available()
    check_options(detector.family, options)
    from xprune.runtime.jax.runner import JaxRunner

    return JaxRunner(detector)
