"""onnx2torch: exported ONNX files (.onnx) converted to a PyTorch module and run by PyTorch, on CPU or CUDA.

It measures an ONNX graph (a folded one above all) on a GPU where ONNX Runtime has no CUDA provider, with PyTorch's
fp16 and CUDA-graph replay. `.onnx` files still open with ONNX Runtime by suffix; this backend runs only when asked
for by name (`xprune.runtime.registry.backend_named("onnx2torch")`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from xprune.errors import XpruneError

if TYPE_CHECKING:
    from xprune.runtime.onnx2torch.runner import Onnx2TorchRunner
    from xprune.runtime.registry import TargetOptions


def available() -> str:
    try:
        import onnx2torch  # noqa: F401
    except ImportError as e:
        raise XpruneError(f"onnx2torch cannot be imported ({e}); pip install xprune[gpu]") from None
    import importlib.metadata

    return importlib.metadata.version("onnx2torch")


def open_file(path: Path, options: TargetOptions) -> tuple[Onnx2TorchRunner, dict[str, Any]]:
    """The facts of an ONNX file do not depend on what runs it: they come from the ONNX Runtime backend, whose
    runner (built lazily, never entered) only lends its NMS IoU."""
    from xprune.runtime.onnx2torch.runner import Onnx2TorchRunner
    from xprune.runtime.onnxruntime import open_file as open_onnx

    onnx_runner, facts = open_onnx(path, options)
    return Onnx2TorchRunner(path, device=options.device, fp16=options.fp16, nms_iou=onnx_runner.nms_iou), facts


def run_facts(options: TargetOptions) -> dict[str, Any]:
    return {"device": options.device, "version": available(), "precision": "fp16" if options.fp16 else "fp32"}
