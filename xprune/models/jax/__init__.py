"""JAX/Flax detector families (extra `jax`): TinySSD in `flax.nnx`, behind the same score -> prune -> export ->
fold -> bench path as the PyTorch families.

Importing this package does not import JAX: the zoo lists the JAX families and the runtime registry names the `jax`
backend on machines without it, and every entry point calls `require_jax()` first, so a missing extra is one line.

Where the shared pipeline needs to tell a JAX detector apart (scoring, the pruning plan, checkpoints, export),
it asks `is_jax(detector)` and calls the module of this package that does the same work in JAX:

    tinyssd.py     the model (nnx), its anchors, multibox decoding and loss
    detector.py    `JaxDetector`: the `Detector` interface (raw, predict, loss, conv_layers) over an nnx module
    scoring.py     attr / taylor / l1 / random scores and the per-layer facts of scores.json
    pruning.py     zeroing in the parameter tree, the float64 dependence check of the safe policy
    checkpoint.py  msgpack checkpoints (flax.serialization)
    export.py      ONNX through jax2onnx, then xprune's slim + fold
    train.py       the optax training loop of the reference checkpoint
"""

from __future__ import annotations

import importlib
from typing import Any

from xprune.errors import XpruneError

FRAMEWORK = "jax"
EXTRA = 'pip install "xprune[jax]"'
CHECKPOINT_SUFFIX = ".msgpack"


def require_jax(*modules: str) -> None:
    """Raise one XpruneError line naming the extra when JAX, Flax (or one of `modules`) cannot be imported."""
    for name in ("jax", "flax.nnx", *modules):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise XpruneError(f"the JAX families need JAX and Flax ({e}): {EXTRA}") from None


def jax_available() -> bool:
    try:
        require_jax()
    except XpruneError:
        return False
    return True


def is_jax(detector: Any) -> bool:
    """True for a detector whose parameters live in a Flax module (a `JaxDetector`), not in a torch one."""
    return getattr(detector, "framework", None) == FRAMEWORK
