"""A JaxDetector behind the common Runner interface: the raw head path jit-compiled by XLA on the CPU. `infer`
waits for the result (`block_until_ready`) and copies it to host arrays, as every runner returns host arrays."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from xprune.models.jax.detector import JaxDetector, compiled
from xprune.runtime.base import Runner


class JaxRunner(Runner):
    name = "jax"

    def __init__(self, detector: JaxDetector):
        self.detector = detector
        self.nms_iou = detector.nms_iou
        self.fn: Callable | None = None
        self.state: Any = None

    def activate_impl(self) -> None:
        # split once: a timed call is the compiled function alone, on this run's parameters
        graphdef, self.state = self.detector.split()
        self.fn = compiled(graphdef, self.detector.input_size).raw
        s = self.detector.input_size
        self.infer_impl(np.zeros((1, 3, s, s), np.float32))  # compile here, not in the first timed run

    def deactivate_impl(self) -> None:
        self.fn, self.state = None, None

    def infer_impl(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        assert self.fn is not None
        out = jax.block_until_ready(self.fn(self.state, jnp.asarray(x, dtype=jnp.float32)))
        return tuple(np.array(o) for o in out)  # writable host copies, as other runners return

    def version(self) -> str:
        return jax.__version__
