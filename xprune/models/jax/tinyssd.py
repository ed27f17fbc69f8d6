"""TinySSD in `flax.nnx`: a small down-sampling CNN base, multi-scale feature blocks, a class and a box predictor
per scale over anchors, multibox decoding in the graph (after Dive into Deep Learning's TinySSD, §14.7, with
stride-2 convolutions instead of conv + max-pool and anchors sized for COCO-like object sizes).

    input [B, 3, S, S] in [0, 1] (NCHW, as every xprune family) -> NHWC inside
    base    conv s2 3->16, (conv s2, conv) 16->32, (conv s2, conv) 32->64      scale 1: stride 8
    blocks  three (conv s2, conv) blocks of 128 channels                       scales 2-4: strides 16, 32, 64
            global max pool of the last block                                  scale 5: 1 x 1
    heads   per scale a 3x3 class conv (A x (C + 1) logits, class 0 is background) and a 3x3 box conv (A x 4)

Every conv of the base and blocks is conv (no bias) -> BatchNorm -> ReLU. A = 4 anchors per position: sizes s and
sqrt(s s') at ratio 1, and s at ratios 2 and 1/2. Box deltas use SSD's encoding (variances 0.1 and 0.2); `raw`
decodes them to xyxy input pixels and turns logits into softmax probabilities without the background column,
the raw-head convention of `xprune.models.detector`.

Every conv takes an optional additive tap (`taps[name]`) on its output and records the output (`record[name]`):
the attribution score differentiates the loss with respect to a zero tap, which is the gradient at that
activation. Conv names are the module paths of the nnx graph, e.g. `blocks.0.1.conv` or `cls.2`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, MutableMapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

BASE = ((3, 16, 2), (16, 32, 2), (32, 32, 1), (32, 64, 2), (64, 64, 1))  # (in, out, stride) per conv
BLOCKS = ((64, 128), (128, 128), (128, 128))
FEATURES = (64, 128, 128, 128, 128)  # channels of the five scales
# Anchor sizes per scale as fractions of the input side: s_k, and s'_k = sqrt(s_k s_{k+1}) (s_6 = 0.95). The
# smallest scale (stride 8) starts at 4 % of the frame: COCO-like data has objects down to ~10 px at 320.
SIZES = (0.04, 0.10, 0.22, 0.42, 0.72)
LAST_SIZE = 0.95
RATIOS = (1.0, 2.0, 0.5)
ANCHORS_PER_POSITION = len(RATIOS) + 1
VARIANCES = (0.1, 0.2)  # SSD's box-delta scaling of centres and of log sizes
BOX_EXP_CLIP = math.log(1000.0 / 16)  # torchvision's clamp before exp: no overflow from a wild delta
MATCH_IOU = 0.5
NEG_POS_RATIO = 3  # hard negative mining: at most 3 negatives per positive

Taps = Mapping[str, jax.Array] | None
Record = MutableMapping[str, jax.Array] | None


class TapConv(nnx.Conv):
    """A 3x3 nnx.Conv with symmetric padding whose output can be perturbed and recorded under its name."""

    def __init__(self, cin: int, cout: int, stride: int, use_bias: bool, rngs: nnx.Rngs):
        super().__init__(cin, cout, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)), use_bias=use_bias,
                         rngs=rngs)
        self.name = ""  # its module path, set by TinySSD once the module tree is built

    def __call__(self, x: jax.Array, taps: Taps = None, record: Record = None) -> jax.Array:  # type: ignore[override]
        y = super().__call__(x)
        if taps is not None and self.name in taps:
            y = y + taps[self.name]
        if record is not None:
            record[self.name] = y
        return y


class ConvBN(nnx.Module):
    def __init__(self, cin: int, cout: int, stride: int, rngs: nnx.Rngs):
        self.conv = TapConv(cin, cout, stride, use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(cout, momentum=0.97, rngs=rngs)

    def __call__(self, x: jax.Array, taps: Taps = None, record: Record = None) -> jax.Array:
        return nnx.relu(self.bn(self.conv(x, taps, record)))


class TinySSD(nnx.Module):
    """The detector's module: parameters initialised from `seed`, BatchNorm in training mode until `.eval()`."""

    def __init__(self, num_classes: int, seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.num_classes = num_classes
        self.base = nnx.List([ConvBN(cin, cout, s, rngs) for cin, cout, s in BASE])
        self.blocks = nnx.List([nnx.List([ConvBN(cin, cout, 2, rngs), ConvBN(cout, cout, 1, rngs)])
                                for cin, cout in BLOCKS])
        a = ANCHORS_PER_POSITION
        self.cls = nnx.List([TapConv(c, a * (num_classes + 1), 1, use_bias=True, rngs=rngs) for c in FEATURES])
        self.box = nnx.List([TapConv(c, a * 4, 1, use_bias=True, rngs=rngs) for c in FEATURES])
        for path, node in nnx.iter_graph(self):
            if isinstance(node, TapConv):
                node.name = ".".join(str(p) for p in path)

    def taps_in_order(self) -> list[TapConv]:
        """Every conv in forward order (nnx's own graph order is alphabetical)."""
        convs = [cb.conv for cb in self.base] + [cb.conv for block in self.blocks for cb in block]
        return convs + [t for pair in zip(self.cls, self.box) for t in pair]

    def predictor_names(self) -> list[str]:
        return [t.name for t in (*self.cls, *self.box)]

    def __call__(self, x: jax.Array, taps: Taps = None, record: Record = None) -> tuple[jax.Array, jax.Array]:
        """x [B, 3, S, S] -> (class logits [B, N, C + 1], box deltas [B, N, 4]), anchors in `anchors()` order."""
        h = jnp.transpose(x, (0, 2, 3, 1))
        for cb in self.base:
            h = cb(h, taps, record)
        features = [h]
        for block in self.blocks:
            for cb in block:
                h = cb(h, taps, record)
            features.append(h)
        features.append(jnp.max(h, axis=(1, 2), keepdims=True))
        logits, deltas = [], []
        for f, cls, box in zip(features, self.cls, self.box):
            b = f.shape[0]
            logits.append(cls(f, taps, record).reshape(b, -1, self.num_classes + 1))
            deltas.append(box(f, taps, record).reshape(b, -1, 4))
        return jnp.concatenate(logits, axis=1), jnp.concatenate(deltas, axis=1)


# --- anchors, decoding, the loss ----------------------------------------------------------------------------------

def feature_sizes(size: int) -> list[int]:
    """Side of each scale's feature map for a square input of `size` (a multiple of 32)."""
    side, sides = size, []
    for _, _, stride in BASE:
        side = (side + 2 - 3) // stride + 1
    sides.append(side)
    for _ in BLOCKS:
        side = (side + 2 - 3) // 2 + 1
        sides.append(side)
    return sides + [1]


def anchors(size: int) -> np.ndarray:
    """Anchors (cx, cy, w, h) in input pixels [N, 4], in the order of the heads' outputs: scale, row, column,
    then the four anchors of a position."""
    out = []
    sizes = (*SIZES, LAST_SIZE)
    for k, side in enumerate(feature_sizes(size)):
        s, s2 = sizes[k], math.sqrt(sizes[k] * sizes[k + 1])
        wh = [(s * math.sqrt(r), s / math.sqrt(r)) for r in RATIOS] + [(s2, s2)]
        c = (np.arange(side, dtype=np.float64) + 0.5) * (size / side)
        cy, cx = np.meshgrid(c, c, indexing="ij")
        per = np.stack([np.stack([cx, cy, np.full_like(cx, w * size), np.full_like(cy, h * size)], -1)
                        for w, h in wh], axis=2)  # [side, side, A, 4]
        out.append(per.reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


def decode(deltas: jax.Array, anchor: jax.Array, size: int) -> jax.Array:
    """Box deltas [..., N, 4] -> xyxy boxes in input pixels, clipped to the image."""
    cxy = anchor[:, :2] + deltas[..., :2] * VARIANCES[0] * anchor[:, 2:]
    wh = anchor[:, 2:] * jnp.exp(jnp.minimum(deltas[..., 2:] * VARIANCES[1], BOX_EXP_CLIP))
    return jnp.clip(jnp.concatenate([cxy - wh / 2, cxy + wh / 2], axis=-1), 0.0, float(size))


def encode(boxes: jax.Array, anchor: jax.Array) -> jax.Array:
    """xyxy boxes [N, 4] (one per anchor, positive width and height) -> SSD deltas."""
    wh = boxes[:, 2:] - boxes[:, :2]
    cxy = (boxes[:, :2] + boxes[:, 2:]) / 2
    return jnp.concatenate([(cxy - anchor[:, :2]) / (anchor[:, 2:] * VARIANCES[0]),
                            jnp.log(wh / anchor[:, 2:]) / VARIANCES[1]], axis=-1)


def raw_outputs(logits: jax.Array, deltas: jax.Array, anchor: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """(boxes [B, N, 4] xyxy input pixels, scores [B, N, C] softmax probabilities without the background)."""
    return decode(deltas, anchor, size), jax.nn.softmax(logits, axis=-1)[..., 1:]


def _iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """IoU of xyxy boxes a [N, 4] and b [G, 4] -> [N, G]."""
    lt = jnp.maximum(a[:, None, :2], b[None, :, :2])
    rb = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = jnp.prod(jnp.clip(rb - lt, 0.0), axis=-1)
    area_a = jnp.prod(a[:, 2:] - a[:, :2], axis=-1)
    area_b = jnp.prod(b[:, 2:] - b[:, :2], axis=-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _image_loss(logits: jax.Array, deltas: jax.Array, anchor: jax.Array, boxes: jax.Array, labels: jax.Array,
                valid: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """SSD's multibox loss terms of one image: summed cross-entropy over positives and mined negatives, summed
    smooth-L1 over positives, and the positive count. Padding rows of `boxes` have valid False."""
    n = anchor.shape[0]
    anchor_xyxy = jnp.concatenate([anchor[:, :2] - anchor[:, 2:] / 2, anchor[:, :2] + anchor[:, 2:] / 2], -1)
    iou = jnp.where(valid[None, :], _iou(anchor_xyxy, boxes), -1.0)
    best_gt, best_iou = jnp.argmax(iou, axis=1), jnp.max(iou, axis=1)
    matched = jnp.where(best_iou >= MATCH_IOU, best_gt, -1)
    # every object gets its best anchor, even below the threshold (small objects between anchor centres)
    best_anchor = jnp.where(valid, jnp.argmax(iou, axis=0), n)
    matched = matched.at[best_anchor].set(jnp.arange(boxes.shape[0]), mode="drop")
    pos = matched >= 0
    target_class = jnp.where(pos, labels[jnp.maximum(matched, 0)] + 1, 0)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), target_class[:, None], axis=1)[:, 0]
    num_pos = pos.sum()
    # hard negatives: the background anchors with the highest loss, at most NEG_POS_RATIO per positive
    neg_loss = jnp.where(pos, -jnp.inf, jax.lax.stop_gradient(ce))
    rank = jnp.argsort(jnp.argsort(-neg_loss))
    neg = (~pos) & (rank < NEG_POS_RATIO * num_pos)
    cls_loss = jnp.sum(jnp.where(pos | neg, ce, 0.0))
    target = encode(jnp.where(pos[:, None], boxes[jnp.maximum(matched, 0)], anchor_xyxy), anchor)
    diff = jnp.abs(deltas - target)
    smooth = jnp.where(diff < 1.0, 0.5 * diff ** 2, diff - 0.5)
    box_loss = jnp.sum(jnp.where(pos[:, None], smooth, 0.0))
    return cls_loss, box_loss, num_pos


@dataclass(frozen=True)
class Targets:
    """Ground truth padded to a fixed object count (static shapes under jit): boxes [B, G, 4] xyxy input pixels,
    labels [B, G] 0-based, valid [B, G]."""

    boxes: np.ndarray
    labels: np.ndarray
    valid: np.ndarray

    @classmethod
    def pad(cls, targets: list[dict], max_objects: int | None = None) -> "Targets":
        """From xprune targets ({"boxes", "labels"} per image, torch or numpy) to padded arrays; padding rows
        hold a unit box so no log or division sees zero."""
        counts = [len(t["labels"]) for t in targets]
        g = max(1, max(counts, default=0), max_objects or 0)
        boxes = np.tile(np.array([0.0, 0.0, 1.0, 1.0], np.float32), (len(targets), g, 1))
        labels = np.zeros((len(targets), g), np.int32)
        valid = np.zeros((len(targets), g), bool)
        for i, t in enumerate(targets):
            b = np.asarray(t["boxes"], np.float32).reshape(-1, 4)
            keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])  # a degenerate box has no IoU to match by
            b, lab = b[keep], np.asarray(t["labels"]).reshape(-1)[keep]
            boxes[i, :len(b)], labels[i, :len(b)], valid[i, :len(b)] = b, lab, True
        return cls(boxes, labels, valid)


def multibox_loss(logits: jax.Array, deltas: jax.Array, anchor: jax.Array, boxes: jax.Array, labels: jax.Array,
                  valid: jax.Array) -> jax.Array:
    """SSD's loss over a batch: (cross-entropy + smooth-L1) summed over images, divided by the positives in the
    batch (as torchvision's SSD normalises)."""
    cls_loss, box_loss, num_pos = jax.vmap(_image_loss, in_axes=(0, 0, None, 0, 0, 0))(
        logits, deltas, anchor, boxes, labels, valid)
    return (cls_loss.sum() + box_loss.sum()) / jnp.maximum(num_pos.sum(), 1).astype(logits.dtype)
