"""Converts an ONNX model to the PyTorch module an Onnx2TorchRunner runs, and places that module on a device.

Two things are done around `onnx2torch.convert`: empty optional inputs are made explicit (onnx2torch 1.5 looks an
empty input name up as a tensor, e.g. a Clip with only a max), and when the module moves to a device, the constants
that onnx2torch reads as Python values on every run (shapes, axes, slice bounds, resize scales) stay on the host: on
a GPU each such read would wait for the device, and make CUDA-graph capture impossible.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from xprune.errors import XpruneError

CLIP_BOUNDS = {1: -np.inf, 2: np.inf}  # Clip's optional min and max inputs, by position


def explicit_optional_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` without empty input names that onnx2torch misreads: trailing ones are dropped (an omitted
    optional input means the same), and a Clip bound omitted before a given one becomes a -inf or +inf constant."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for index, node in enumerate(model.graph.node):
        while node.input and not node.input[-1]:
            node.input.pop()
        if node.op_type != "Clip":
            continue
        for position, bound in CLIP_BOUNDS.items():
            if position < len(node.input) and not node.input[position]:
                constant = f"{node.name or 'Clip'}_{index}_bound_{position}"
                model.graph.initializer.append(numpy_helper.from_array(np.array(bound, np.float32), constant))
                node.input[position] = constant
    return model


class ModuleFromOnnx:
    """A torch module (CPU, float32) for an ONNX model given as a path, serialized bytes or a ModelProto.

    The graph is converted at the first call; every call returns a fresh deep copy, so runners built from one loader
    never share a module (each moves its own to a device and precision)."""

    def __init__(self, model: str | os.PathLike | bytes | onnx.ModelProto):
        self.model = model
        self.converted: torch.nn.Module | None = None

    def convert(self) -> torch.nn.Module:
        from onnx2torch import convert

        model = self.model
        if isinstance(model, bytes):
            model = onnx.load_from_string(model)
        elif not isinstance(model, onnx.ModelProto):
            from xprune.export.onnx_export import load_model

            model = load_model(Path(model))
        try:
            return convert(explicit_optional_inputs(model)).eval()
        except (NotImplementedError, KeyError, ValueError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise XpruneError(f"onnx2torch cannot convert the model: {first[:200]}") from None

    def __call__(self) -> torch.nn.Module:
        if self.converted is None:
            self.converted = self.convert()
        return copy.deepcopy(self.converted)


# onnx2torch modules that read their arguments from this position on as Python values (`.tolist()`, `torch.Size`)
# on every run: shapes, axes, slice bounds, scales, pads.
HOST_ARGUMENTS = {"OnnxReshape": 1, "OnnxSlice": 1, "OnnxResize": 1, "OnnxResizeV10": 1, "OnnxSqueezeDynamicAxes": 1,
                  "OnnxUnsqueezeDynamicAxes": 1, "OnnxSplit13": 1, "OnnxExpand": 1, "OnnxTile": 1,
                  "OnnxConstantOfShape": 0, "OnnxPadDynamic": 1, "OnnxReduceSumDynamicAxes": 1, "OnnxTopK": 1}


def read_on_host(node: torch.fx.Node, module: torch.fx.GraphModule) -> bool:
    """Whether every use of `node` is an argument that its module reads on the host (positional from the position
    in HOST_ARGUMENTS on, or by keyword other than the data input)."""
    for user in node.users:
        if user.op != "call_module":
            return False
        first = HOST_ARGUMENTS.get(type(module.get_submodule(str(user.target))).__name__)
        positions = [p for p, arg in enumerate(user.args) if arg is node]
        keywords = [k for k, arg in user.kwargs.items() if arg is node]
        if first is None or not positions + keywords or any(p < first for p in positions) or "input_tensor" in keywords:
            return False
    return bool(node.users)


def host_arguments(module: torch.fx.GraphModule) -> list[str]:
    """The buffers of a converted graph that are used only as arguments read on the host (see HOST_ARGUMENTS)."""
    return [str(node.target) for node in module.graph.nodes if node.op == "get_attr" and read_on_host(node, module)]


def to_device(module: torch.nn.Module, device: str | torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """`module.to(device, dtype)`, except for the buffers `host_arguments` names: they stay on the CPU as they are."""
    kept = {}
    if isinstance(module, torch.fx.GraphModule):
        for target in host_arguments(module):
            owner_name, _, leaf = target.rpartition(".")
            owner = module.get_submodule(owner_name)
            if owner._buffers.get(leaf) is not None:
                kept[owner, leaf] = owner._buffers[leaf]
    module.to(device, dtype)
    for (owner, leaf), buffer in kept.items():
        owner._buffers[leaf] = buffer
    return module
