"""Pruning a JAX detector in its parameter tree: the plan's layers are zeroed in the conv kernels (biases stay, so a
zeroed conv outputs its bias, as in PyTorch), and the safe policy's dependence check runs in float64."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import torch

from xprune.models.detector import all_outputs_differ
from xprune.models.jax.jitted import compiled

if TYPE_CHECKING:
    from xprune.models.jax.detector import JaxDetector


def kernel_path(name: str) -> tuple[str | int, ...]:
    """'blocks.0.1.conv' -> ('blocks', 0, 1, 'conv', 'kernel'): where the conv's kernel sits in the state."""
    return (*(int(p) if p.isdigit() else p for p in name.split(".")), "kernel")


@contextlib.contextmanager
def zeroed(detector: JaxDetector, layers: list[str]) -> Iterator[None]:
    """Temporarily zero the kernels of `layers`."""
    convs = detector.conv_layers()
    saved = {n: convs[n].kernel.get_value() for n in layers}
    try:
        for n, w in saved.items():
            convs[n].kernel.set_value(jnp.zeros_like(w))
        yield
    finally:
        for n, w in saved.items():
            convs[n].kernel.set_value(w)


def zero_layers(detector: JaxDetector, layers: list[str]) -> list[str]:
    """Zero the kernels of `layers` in place; returns their names."""
    convs = detector.conv_layers()
    for n in layers:
        convs[n].kernel.set_value(jnp.zeros_like(convs[n].kernel.get_value()))
    return list(layers)


def outputs_depend_on_input(detector: JaxDetector, probes: int = 2, seed: int = 0) -> bool:
    """True when every raw output changes between random inputs (the same inputs as the PyTorch check), computed
    with 64-bit floats so a live but saturated output (an untrained head) still differs."""
    g = torch.Generator().manual_seed(seed)
    s = detector.input_size
    xs = torch.rand((probes, 3, s, s), generator=g, dtype=torch.float64).numpy()
    graphdef, state = detector.split()
    raw = compiled(graphdef, s).raw
    with jax.enable_x64(True):
        state64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating)
                               else a, state)
        outs = [[np.asarray(o) for o in raw(state64, jnp.asarray(xs[i:i + 1]))] for i in range(probes)]
    return all_outputs_differ(outs)
