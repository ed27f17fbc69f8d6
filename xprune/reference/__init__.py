"""Reference checkpoints trained by `xprune.train.reference` (`benchmarks/train_reference.py`), with their metrics.

Each reference is NAME-DATASET.json (metrics, command, training log name, SHA-256) beside NAME-DATASET.pt. Checkpoints
too big for the repository (the ResNet-50 families) live in the user's cache folder instead; the JSON says so and its
SHA-256 tells a stale or foreign file from the one that was measured.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from xprune.files import file_sha256

HERE = Path(__file__).parent


def cache_dir() -> Path:
    """xprune's folder in the user's cache ($XDG_CACHE_HOME or ~/.cache)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xprune"


def checkpoint_path(info: dict) -> Path:
    """Where the checkpoint a reference JSON describes lives: in the package, or in the cache."""
    return (cache_dir() / "reference" if info.get("stored") == "cache" else HERE) / info["checkpoint"]


def reference_infos(dataset: str = "synth") -> dict[str, dict]:
    """{model: metrics dict} of every recorded reference on `dataset`, whether or not its checkpoint is here."""
    return {info["model"]: info for info in (json.loads(p.read_text()) for p in sorted(HERE.glob(f"*-{dataset}.json")))}


def reference_models(dataset: str = "synth") -> dict[str, dict]:
    """{model name: metrics dict with an absolute 'path'} for every reference whose checkpoint is present (and, for
    cached ones, has the recorded SHA-256) and whose family can run here (a JAX family needs the `jax` extra)."""
    from xprune.models.zoo import FAMILIES

    out = {}
    for model, info in reference_infos(dataset).items():
        ckpt = checkpoint_path(info)
        if not ckpt.is_file():
            continue
        if model in FAMILIES and not FAMILIES[model].available():
            continue
        if info.get("stored") == "cache" and info.get("sha256") and file_sha256(ckpt) != info["sha256"]:
            continue
        out[model] = {**info, "path": str(ckpt)}
    return out
