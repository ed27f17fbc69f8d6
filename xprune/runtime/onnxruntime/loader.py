"""Builds the ONNX Runtime session an OnnxRuntimeRunner runs, and reads the facts an exported file carries.

polygraphy's `SessionFromOnnx` sets every thread count to the CPU count and cannot turn thread spinning off, which
interleaved timing needs (two identical spinning sessions in one process measure far apart on a small machine).
`SessionFromOnnx` here takes those settings; like polygraphy's it is a callable that builds the session when
called, so it can also feed polygraphy's `OnnxrtRunner`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xprune.errors import XpruneError

if TYPE_CHECKING:
    import onnx


class SessionFromOnnx:
    """An `onnxruntime.InferenceSession` for a model path or serialized bytes, built when called."""

    def __init__(self, model: str | Path | bytes, device: str = "cpu", threads: int | None = None,
                 spinning: bool = False):
        self.model, self.device, self.threads, self.spinning = model, device, threads, spinning

    def __call__(self):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = self.threads or (os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        if self.device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise XpruneError("ONNX Runtime has no CUDA provider here; install onnxruntime-gpu on a GPU machine")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        source = self.model if isinstance(self.model, bytes) else str(self.model)
        try:
            return ort.InferenceSession(source, opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise XpruneError(f"ONNX Runtime cannot load the model: {str(e).splitlines()[0][:200]}") from None


def model_facts(model: onnx.ModelProto, meta: dict) -> dict[str, Any]:
    """The results-row facts of an exported file: its xprune metadata and its (static) input shape."""
    shape = [d.dim_value if d.HasField("dim_value") else None
             for d in model.graph.input[0].type.tensor_type.shape.dim]
    if not shape or any(not d for d in shape):
        raise XpruneError("benchmarks need a static input shape; fix it with `xprune fold --input-shape` first")
    return {"model": meta.get("family", "onnx"), "variant": meta.get("variant", "unknown"),
            "method": meta.get("method"), "rate": meta.get("rate"), "input_shape": shape,
            "category_ids": meta.get("category_ids"), "removed_mac_fraction": meta.get("removed_mac_fraction")}
