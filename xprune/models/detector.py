"""The common detector interface every family adapter implements, and the one shared post-process.

Conventions, for every family:
- input `x`: float tensor [B, 3, S, S] in [0, 1], letterboxed by `xprune.data.transforms.letterbox`;
- targets: list of {"boxes": [N, 4] xyxy in input pixels, "labels": [N] int64 in 0..num_classes-1};
- `raw(x)` returns what an exported engine returns: (boxes, scores) with boxes [B, N, 4] (class-agnostic) or
  [B, N, C, 4] (per class) in input pixels, and scores [B, N, C] probabilities. Decoding is part of the graph;
- `postprocess(boxes, scores)` is the one NMS step shared by every backend (PyTorch, ONNX Runtime, TensorRT),
  so mAP differences between backends are the model's and not the plumbing's.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Iterator

import torch
from torch import nn
from torchvision.ops import batched_nms

from xprune.errors import XpruneError
from xprune.files import atomic_path

if TYPE_CHECKING:
    import onnx

# COCO evaluation settings, the same for every backend: scores above 0.001, at most 100 detections per image.
SCORE_THRESHOLD = 0.001
MAX_DETECTIONS = 100
NMS_IOU = 0.5
PRE_NMS_TOPK = 3000
CHECKPOINT_FORMAT = "xprune-checkpoint-1"


@dataclass
class Detector:
    """A detector of one family with its settings. Subclasses implement loss and raw; the rest is written here for
    a PyTorch model and overridden by a family whose parameters live elsewhere (`xprune.models.jax.JaxDetector`),
    so the stages above call one interface whatever the framework."""

    framework: ClassVar[str] = "torch"  # where the parameters live: what a stage picks its implementation by
    family: str
    model: nn.Module
    num_classes: int
    input_size: int
    # Dataset category id of each model class; None means "the dataset's categories in sorted id order".
    category_ids: list[int] | None = None
    # Qualified names of the final predictor convs of every head (protected from pruning unless asked).
    predictor_layers: list[str] = field(default_factory=list)
    nms_iou: float = NMS_IOU
    # What the checkpoint says about where these weights came from (e.g. the pruning plan).
    meta: dict = field(default_factory=dict)

    # --- what every family implements -------------------------------------------------------------------------
    def loss(self, x: torch.Tensor, targets: list[dict]) -> torch.Tensor:  # pragma: no cover - abstract
        """The family's own training loss (a scalar), with BatchNorm statistics frozen."""
        raise NotImplementedError

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def train_step_loss(self, x: torch.Tensor, targets: list[dict]) -> torch.Tensor:
        """Loss in full training mode (BatchNorm updating): what a training loop uses."""
        return self.loss(x, targets)

    # --- shared -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> list[dict]:
        self.model.eval()
        boxes, scores = self.raw(x)
        return postprocess(boxes, scores, iou=self.nms_iou)

    def conv_layers(self) -> dict[str, nn.Conv2d]:
        """Every Conv2d (depthwise included), by qualified name, in module order."""
        return {n: m for n, m in self.model.named_modules() if isinstance(m, nn.Conv2d)}

    def eval(self) -> "Detector":
        self.model.eval()
        return self

    # --- conv weights by layer name: what pruning changes ---------------------------------------------------------
    @contextlib.contextmanager
    def zeroed(self, layers: list[str]) -> Iterator[None]:
        """Temporarily zero the weights of `layers` (biases stay: a zeroed conv outputs its bias)."""
        convs = self.conv_layers()
        saved = {n: convs[n].weight.detach().clone() for n in layers}
        try:
            with torch.no_grad():
                for n in layers:
                    convs[n].weight.zero_()
            yield
        finally:
            with torch.no_grad():
                for n, w in saved.items():
                    convs[n].weight.copy_(w)

    def zero_layers(self, layers: list[str]) -> list[str]:
        """Zero the weights of `layers` in place; returns their names."""
        convs = self.conv_layers()
        with torch.no_grad():
            for name in layers:
                convs[name].weight.zero_()
        return list(layers)

    def nonzero_layers(self, layers: list[str]) -> list[str]:
        """The layers of `layers` whose weights are not all zero."""
        convs = self.conv_layers()
        return [n for n in layers if bool(convs[n].weight.detach().any())]

    def state_sha256(self) -> str:
        """SHA-256 of every tensor of the model, by name: the identity of its weights in memory."""
        from xprune.resume import arrays_sha256
        return arrays_sha256(self.model.state_dict().items())

    def float64_probe(self) -> Detector:
        """A copy whose `outputs_depend_on_input` computes in float64 (the original stays untouched)."""
        probe = copy.deepcopy(self)
        probe.model.double()
        return probe

    def outputs_depend_on_input(self, probes: int = 2, seed: int = 0) -> bool:
        """True when every raw output changes between random inputs. Zeroing makes a dead output exactly constant;
        on a `float64_probe` a live but saturated output (an untrained head) still differs."""
        dtype = next(self.model.parameters()).dtype
        g = torch.Generator().manual_seed(seed)
        s = self.input_size
        xs = torch.rand((probes, 3, s, s), generator=g, dtype=torch.float64).to(dtype)
        self.model.eval()
        with torch.no_grad():
            outs = [self.raw(xs[i:i + 1]) for i in range(probes)]
        return all_outputs_differ(outs)

    # --- facts, export and checkpoints ----------------------------------------------------------------------------
    def conv_summary(self) -> dict[str, dict]:
        """{conv name: {"type", "params"}} in module order (params: weight and bias)."""
        return {n: {"type": conv_type(c), "params": sum(p.numel() for p in c.parameters())}
                for n, c in self.conv_layers().items()}

    def own_complexity(self) -> dict | None:
        """{'params', 'macs', 'conv_macs'} for a model that ptflops cannot trace, counted by the family as ptflops
        counts; None: ptflops counts this one."""
        return None

    def output_levels(self) -> list[tuple[str, int]]:
        """(level name, raw outputs per image) for each output level, in the order of `raw`'s outputs."""
        raise XpruneError(f"{self.family}: output levels are known for one-stage detectors only")

    def level_head_layers(self, level: str) -> list[str]:
        """The convs whose zeroing removes one output level (`output_levels` names it): the fold then drops the
        level's head branches and whatever feeds only them."""
        raise XpruneError(f"{self.family}: removing one output level is not written for this family")

    def raw_onnx(self, batch: int, opset: int, input_name: str, output_names: list[str]) -> onnx.ModelProto:
        """The raw head path as an ONNX model held in memory (static shape, weights as initializers), by torch.onnx."""
        import onnx

        self.model.eval()
        x = torch.rand(batch, 3, self.input_size, self.input_size)
        with tempfile.TemporaryDirectory(prefix="xprune-export-") as tmp:
            path = Path(tmp) / "model.onnx"
            with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(RawHeads(self).eval(), (x,), str(path), dynamo=False, opset_version=opset,
                                  input_names=[input_name], output_names=output_names, do_constant_folding=True)
            return onnx.load(str(path))

    def save_checkpoint(self, path: str | os.PathLike, meta: dict | None = None, half: bool = False) -> None:
        """Weights and the settings needed to rebuild, atomically; `half` stores floats as fp16 (small files)."""
        import torchvision

        state = {k: (v.half() if half and v.is_floating_point() else v).clone()
                 for k, v in self.model.state_dict().items()}
        ckpt = {"format": CHECKPOINT_FORMAT, "family": self.family, "num_classes": self.num_classes,
                "input_size": self.input_size, "category_ids": self.category_ids, "state_dict": state,
                "meta": meta or {}, "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__}}
        with atomic_path(path) as tmp:
            torch.save(ckpt, tmp)


def conv_type(conv: nn.Conv2d) -> str:
    if conv.groups == 1:
        return "pointwise" if conv.kernel_size == (1, 1) else "conv"
    if conv.groups == conv.in_channels == conv.out_channels:
        return "depthwise"
    return "grouped"


def all_outputs_differ(outs: list) -> bool:
    """Over the raw outputs of several probe inputs: False when some output is the same array for every input."""
    for k in range(len(outs[0])):
        first = outs[0][k]
        if all(o[k].shape == first.shape and bool((o[k] == first).all()) for o in outs[1:]):
            return False
    return True


def freeze_batchnorm(model: nn.Module) -> list[nn.Module]:
    """Put norm layers in eval mode (use running statistics) while the model is in train mode; returns them."""
    frozen = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            frozen.append(m)
    return frozen


class RawHeads(nn.Module):
    """The raw head path as a plain module whose forward takes the image tensor, for tracers and MAC counters."""

    def __init__(self, detector: Detector):
        super().__init__()
        self.model = detector.model
        self._raw = detector.raw

    def forward(self, x):
        return self._raw(x)


def postprocess(boxes: torch.Tensor, scores: torch.Tensor, score_threshold: float = SCORE_THRESHOLD,
                max_detections: int = MAX_DETECTIONS, iou: float = NMS_IOU,
                pre_nms_topk: int = PRE_NMS_TOPK) -> list[dict]:
    """Per-class NMS (torchvision.ops.batched_nms) over decoded boxes; one dict per image.

    boxes: [B, N, 4] or [B, N, C, 4] xyxy; scores: [B, N, C]. Returns boxes [K, 4], scores [K], labels [K] (0-based).
    """
    boxes = torch.as_tensor(boxes).float()
    scores = torch.as_tensor(scores).float()
    out = []
    b, n, c = scores.shape
    for i in range(b):
        s = scores[i].reshape(-1)  # (anchor, class) pairs
        keep = torch.nonzero(s > score_threshold).squeeze(1)
        if keep.numel() > pre_nms_topk:
            keep = keep[s[keep].topk(pre_nms_topk).indices]
        anchor, label = keep // c, keep % c
        if boxes.dim() == 4:
            bx = boxes[i, anchor, label]
        else:
            bx = boxes[i, anchor]
        sc = s[keep]
        kept = batched_nms(bx, sc, label, iou)[:max_detections]
        out.append({"boxes": bx[kept], "scores": sc[kept], "labels": label[kept]})
    return out
