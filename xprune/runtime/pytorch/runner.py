"""PyTorch behind the common Runner interface: `ModuleRunner` runs any torch module on CPU or CUDA (fp16, CUDA-graph
replay and CUDA-event timing on CUDA only); `TorchRunner` is it for a zoo Detector's raw heads."""

from __future__ import annotations

import numpy as np
import torch

from xprune.errors import XpruneError
from xprune.models.detector import Detector
from xprune.runtime.base import CUDA_EVENTS, Runner

GRAPH_WARMUP_RUNS = 3  # eager runs on a side stream before capture: lazy initialisation and cuDNN's choices


class ModuleRunner(Runner):
    """A torch module's forward on one device. Subclasses say which module (`load_module`), how to call it
    (`forward`) and what to do when the run ends (`unload_module`).

    With `cuda_graph`, the first `infer` for an input shape captures the forward pass once into a
    `torch.cuda.CUDAGraph` on static input and output buffers; every run after that copies the input in and replays
    the graph, so the host launches one graph instead of every kernel. A forward pass that syncs with the host or
    copies from host memory cannot be captured: that is one XpruneError line. With `device_events`, runs are timed
    by CUDA events around the kernels (`time_device`) instead of the host clock around `infer`.
    """

    def __init__(self, device: str = "cpu", fp16: bool = False, cuda_graph: bool = False,
                 device_events: bool = False):
        on_cuda = device.startswith("cuda")
        if on_cuda and not torch.cuda.is_available():
            raise XpruneError("CUDA was requested but no NVIDIA GPU is visible to PyTorch")
        if fp16 and not on_cuda:
            raise XpruneError("fp16 PyTorch runs need --device cuda")
        if (cuda_graph or device_events) and not on_cuda:
            raise XpruneError(f"{'CUDA-graph replay' if cuda_graph else 'CUDA-event timing'} needs a CUDA device")
        self.device, self.precision = device, "fp16" if fp16 else "fp32"
        self.dtype = torch.float16 if fp16 else torch.float32
        self.cuda_graph = cuda_graph
        if device_events:
            self.timing = CUDA_EVENTS
        self.module: torch.nn.Module | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_input: torch.Tensor | None = None
        self.static_outputs: tuple[torch.Tensor, ...] = ()

    def load_module(self) -> torch.nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def unload_module(self, module: torch.nn.Module) -> None:
        """Called with the module when the run ends."""

    def place(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.to(self.device, self.dtype).eval()

    def activate_impl(self) -> None:
        self.module = self.place(self.load_module())

    def deactivate_impl(self) -> None:
        self.graph, self.static_input, self.static_outputs = None, None, ()
        module, self.module = self.module, None
        if module is not None:
            self.unload_module(module)

    def capture(self, shape: tuple[int, ...]) -> None:
        with torch.cuda.device(torch.device(self.device)):
            static_input = torch.zeros(shape, device=self.device, dtype=self.dtype)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(GRAPH_WARMUP_RUNS):
                    self.forward(static_input)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    outputs = tuple(self.forward(static_input))
            except RuntimeError as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise XpruneError(f"CUDA-graph capture failed ({first[:160]}); the forward pass syncs with the "
                                  "host or copies from host memory") from None
        self.graph, self.static_input, self.static_outputs = graph, static_input, outputs

    def device_input(self, x: np.ndarray) -> torch.Tensor:
        """`x` on the device in the run's dtype; with CUDA graphs, copied into the captured static input."""
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if not self.cuda_graph:
            return xt.to(self.device, self.dtype)
        if self.static_input is None or tuple(self.static_input.shape) != tuple(xt.shape):
            self.capture(tuple(xt.shape))
        assert self.static_input is not None
        self.static_input.copy_(xt)
        return self.static_input

    def run(self, xt: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.graph is not None:
            self.graph.replay()
            return self.static_outputs
        return self.forward(xt)

    @torch.no_grad()
    def infer_impl(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        out = self.run(self.device_input(x))
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
        return tuple(o.float().cpu().numpy() for o in out)

    @torch.no_grad()
    def time_device(self, x: np.ndarray, runs: int = 100, warmup: int = 10) -> list[float]:
        """Milliseconds per run between CUDA events on the current stream (the input copy is not timed)."""
        if self.timing != CUDA_EVENTS:
            return super().time_device(x, runs, warmup)
        if runs < 1 or warmup < 0:
            raise XpruneError(f"runs must be >= 1 and warmup >= 0, got runs={runs} warmup={warmup}")
        self.require_active()
        with torch.cuda.device(torch.device(self.device)):
            xt = self.device_input(x)
            for _ in range(warmup):
                self.run(xt)
            stream = torch.cuda.current_stream()
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(runs)]
            for start, end in events:
                start.record(stream)
                self.run(xt)
                end.record(stream)
            stream.synchronize()
        return [start.elapsed_time(end) for start, end in events]

    def version(self) -> str:
        return torch.__version__

    def effective_threads(self) -> int | None:
        # torch's own count, which other libraries change behind our back (Ultralytics' select_device sets it)
        return torch.get_num_threads() if self.device == "cpu" else None


class TorchRunner(ModuleRunner):
    """PyTorch eager (or CUDA-graph replay) of a Detector's raw heads. Entering moves the model to the device,
    leaving moves it back to CPU float32."""

    name = "torch"

    def __init__(self, detector: Detector, device: str = "cpu", fp16: bool = False, cuda_graph: bool = False,
                 device_events: bool = False):
        super().__init__(device, fp16=fp16, cuda_graph=cuda_graph, device_events=device_events)
        self.detector = detector
        self.nms_iou = detector.nms_iou

    def load_module(self) -> torch.nn.Module:
        return self.detector.model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.detector.raw(x))

    def unload_module(self, module: torch.nn.Module) -> None:
        module.to("cpu", torch.float32)
