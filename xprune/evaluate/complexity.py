"""Parameters and MACs through ptflops (whole model and per conv layer). ptflops counts multiply-accumulates: MACs."""

from __future__ import annotations

import contextlib
import io

import torch
from ptflops import get_model_complexity_info
from ptflops.pytorch_ops import conv_flops_counter_hook
from torch import nn

from xprune.errors import XpruneError
from xprune.models.detector import Detector, RawHeads


def _fixed_image(shape: tuple[int, ...]) -> dict:
    # ptflops' default input is uninitialized memory; two-stage detectors then count whatever proposals garbage gives.
    return {"x": torch.rand(1, *shape, generator=torch.Generator().manual_seed(0))}


def complexity(detector: Detector) -> dict:
    """{'params', 'macs', 'conv_macs': {layer: MACs}} for one image at the detector's input size."""
    own = detector.own_complexity()
    if own is not None:  # ptflops traces torch modules only; a family it cannot see counts its convs the same way
        return own
    names = {id(m): n for n, m in detector.model.named_modules() if isinstance(m, nn.Conv2d)}
    per_layer: dict[str, int] = {n: 0 for n in names.values()}

    def conv_hook(module, inputs, output):
        before = module.__flops__
        conv_flops_counter_hook(module, inputs, output)
        if id(module) in names:
            per_layer[names[id(module)]] += int(module.__flops__ - before)

    detector.model.eval()
    size = detector.input_size
    log = io.StringIO()
    with torch.no_grad(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        macs, params = get_model_complexity_info(
            RawHeads(detector), (3, size, size), as_strings=False, print_per_layer_stat=False,
            backend="pytorch", custom_modules_hooks={nn.Conv2d: conv_hook}, input_constructor=_fixed_image)
    if macs is None:
        raise XpruneError(f"ptflops could not count {detector.family}: {log.getvalue().strip().splitlines()[-1:]}")
    return {"params": int(params), "macs": int(macs), "conv_macs": per_layer}
