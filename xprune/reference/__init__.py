"""Reference checkpoints trained by `benchmarks/train_reference.py` on the synthetic dataset, with their metrics."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent


def reference_models() -> dict[str, dict]:
    """{model name: metrics dict with an absolute 'path'} for every committed reference checkpoint."""
    out = {}
    for meta in sorted(HERE.glob("*-synth.json")):
        info = json.loads(meta.read_text())
        ckpt = HERE / info["checkpoint"]
        if ckpt.is_file():
            out[info["model"]] = {**info, "path": str(ckpt)}
    return out
