"""What every runner shares: a context manager with one active-state guard, `infer(x) -> raw outputs` on numpy
arrays, the shared post-process, a uniform `describe()`, and a declaration of how its runs are timed.

Subclasses implement `activate_impl` / `infer_impl` / `deactivate_impl` (polygraphy's runner shape); the base
class makes sure `infer` is only reached inside the `with` block and that a runner is entered once at a time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from xprune.errors import XpruneError
from xprune.models.detector import NMS_IOU, postprocess

HOST_CLOCK = "host-wall-clock"  # perf_counter around `infer`, host copies included
CUDA_EVENTS = "cuda-events"  # device events around the kernels only, via `time_device`


class Runner:
    name = "runner"  # the backend's name in the registry and in results rows ("engine")
    precision = "fp32"
    device = "cpu"
    threads: int | None = None  # intra-op threads asked for (None: the library's default)
    timing = HOST_CLOCK
    nms_iou = NMS_IOU  # the model family's NMS IoU; ONNX and engine files carry it in their metadata
    is_active = False

    def __enter__(self) -> Runner:
        if self.is_active:
            raise XpruneError(f"{type(self).__name__} is already active; enter a runner once at a time")
        self.activate_impl()
        self.is_active = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.is_active:
            self.is_active = False
            self.deactivate_impl()

    def activate_impl(self) -> None:
        """Load what `infer` needs (a session, an engine, weights on the device)."""

    def deactivate_impl(self) -> None:
        """Free what `activate_impl` loaded."""

    def infer_impl(self, x: np.ndarray) -> tuple[np.ndarray, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def require_active(self) -> None:
        if not self.is_active:
            raise XpruneError(f"{type(self).__name__} is used outside its `with` block")

    def infer(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """Raw outputs (boxes, scores for an xprune model) as host arrays."""
        self.require_active()
        return self.infer_impl(x)

    def predict(self, x: torch.Tensor) -> list[dict]:
        """Detections through the shared post-process (the same NMS for every backend)."""
        boxes, scores = self.infer(x.numpy())[:2]
        return postprocess(torch.from_numpy(np.asarray(boxes)), torch.from_numpy(np.asarray(scores)), iou=self.nms_iou)

    def version(self) -> str | None:
        return None

    def effective_threads(self) -> int | None:
        """Host threads the backend really uses (None where it does not run on host threads)."""
        return self.threads

    def describe(self) -> dict[str, Any]:
        """What ran the model, the same keys for every backend."""
        return {"backend": self.name, "version": self.version(), "device": self.device, "precision": self.precision,
                "threads": self.effective_threads()}

    def time_device(self, x: np.ndarray, runs: int, warmup: int) -> list[float]:
        """Milliseconds per run from device events; only runners whose `timing` is CUDA_EVENTS provide it."""
        raise XpruneError(f"{self.name} runs are timed on the host clock, not with device events")


def silent_polygraphy():
    """A context in which polygraphy's logger prints nothing (its level set above CRITICAL): its failures still
    raise, and xprune reports them as one line."""
    from polygraphy.logger import G_LOGGER

    return G_LOGGER.verbosity(G_LOGGER.CRITICAL + 1)
