"""JAX/Flax detector families (extra `jax`): TinySSD in `flax.nnx`, behind the same `Detector` interface as the
PyTorch families, so scoring, pruning, export, the fold and bench take it without asking which framework it is.

Importing this package does not import JAX: the zoo lists the JAX families and the runtime registry names the `jax`
backend on machines without it, and every entry point calls `require_jax()` first, so a missing extra is one line.

    tinyssd.py     the model (nnx), its anchors, multibox decoding and loss
    jitted.py      the module as pure jitted functions of (graphdef, state)
    detector.py    `JaxDetector`: the `Detector` interface over an nnx module
    pruning.py     zeroing in the parameter tree, the float64 dependence check of the safe policy
    counting.py    conv types, params and MACs, counted as ptflops counts a PyTorch conv
    checkpoint.py  msgpack checkpoints (flax.serialization)
    export.py      the raw head path as ONNX through jax2onnx

What is a stage's work lives in that stage: the JAX criteria in `xprune.importance.criteria.jax_criteria`, the
optax training loop in `xprune.train.jax_loop`.
"""

from __future__ import annotations

import importlib

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
