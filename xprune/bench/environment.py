"""What a results file records about where it was measured."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import sys

import torch

LIBRARIES = ("xprune", "torch", "torchvision", "ultralytics", "onnx", "onnxruntime", "onnxslim", "polygraphy",
             "pycocotools", "ptflops", "numpy", "openvino", "nncf")


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str = "cpu") -> dict:
    env = {"python": sys.version.split()[0], "platform": platform.platform(), "cpu": cpu_name(),
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "libraries": library_versions(),
           "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    return env
