"""PyTorch eager: xprune checkpoints (.pt / .pth) of a zoo family, on CPU or CUDA.

The folder is not named `torch` so that it can never stand in for the library itself."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xprune.errors import XpruneError

if TYPE_CHECKING:
    from xprune.models.detector import Detector
    from xprune.runtime.pytorch.runner import TorchRunner
    from xprune.runtime.registry import TargetOptions


def available() -> str:
    import torch

    return torch.__version__


def open_file(path: Path, options: TargetOptions) -> tuple[TorchRunner, dict[str, Any]]:
    if not options.model:
        raise XpruneError(f"{path}: a PyTorch checkpoint needs --model to say which family it is")
    from xprune.export.onnx_export import provenance
    from xprune.runtime.pytorch.loader import DetectorFromCheckpoint
    from xprune.runtime.pytorch.runner import TorchRunner

    det = DetectorFromCheckpoint(path, options.model)()
    facts = {"model": det.family, "input_shape": [1, 3, det.input_size, det.input_size],
             "category_ids": det.category_ids, **provenance(det, folded=False)}
    return TorchRunner(det, device=options.device, fp16=options.fp16), facts


def run_facts(options: TargetOptions) -> dict[str, Any]:
    import torch

    # OpenMP's wait policy decides whether idle torch threads spin; on a busy small CPU spinning threads slow
    # every op many times over (ONNX Runtime's spinning is off), so it is recorded
    return {"device": options.device, "threads": torch.get_num_threads(), "version": available(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def runner_for(detector: Detector, options: TargetOptions) -> TorchRunner:
    from xprune.runtime.pytorch.runner import TorchRunner

    return TorchRunner(detector, device=options.device, fp16=options.fp16)
