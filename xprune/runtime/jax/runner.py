"""A JaxDetector behind the common Runner interface: the raw head path jit-compiled by XLA on the CPU. `infer`
waits for the result (`block_until_ready`) and copies it to host arrays, as every runner returns host arrays."""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from xprune.models.jax.detector import JaxDetector
from xprune.models.jax.jitted import compiled
from xprune.runtime.base import Runner


def xla_cpu_threads() -> int:
    """The threads XLA's CPU client runs a computation's ops on: its intra-op pool is sized by PJRT_NPROC or NPROC
    where set, else by the CPUs this process may run on; `--xla_cpu_multi_thread_eigen=false` keeps them on one."""
    if "--xla_cpu_multi_thread_eigen=false" in os.environ.get("XLA_FLAGS", ""):
        return 1
    for name in ("PJRT_NPROC", "NPROC"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity call on this platform
        return os.cpu_count() or 1


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

    def effective_threads(self) -> int:
        return xla_cpu_threads()
