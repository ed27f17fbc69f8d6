"""Training TinySSD with optax on a COCO-format dataset (the reference checkpoint is trained on xprune's synthetic
set), on the CPU: the JAX families' counterpart of `xprune.train.loop`. Every epoch writes the training state
(parameters, BatchNorm statistics, optimizer state) and the model checkpoint into `work_dir`, atomically, with the
stamp of its settings beside the state (`xprune.resume`); a call with the same settings resumes after the last
finished epoch, and since each epoch draws its data order and augmentation from (seed, epoch), a resumed run ends
where an uninterrupted one does.

    from xprune.train.jax_loop import train_tinyssd
    checkpoint, history = train_tinyssd("data/synth", epochs=40, size=320, log_path="tinyssd-jax-synth.log")

The recipe: AdamW with a linear warm-up (one epoch) and cosine decay, global-norm clipping, batch 16, SSD's
multibox loss (hard negatives 3:1) with BatchNorm in training mode; augmentation by horizontal flip and by
zooming in (a random crop, resized back) or out (the image shrunk onto a grey canvas), SSD's scale augmentation in
its simplest form.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, serialization
from PIL import Image

from xprune.data.coco import CocoDetectionSet
from xprune.data.transforms import PAD_VALUE
from xprune.errors import XpruneError
from xprune.files import atomic_path
from xprune.models.jax.detector import JaxDetector, build_tinyssd
from xprune.models.jax.tinyssd import Targets, anchors, multibox_loss
from xprune.resume import Stamp, input_identity

STATE_FILE = "train-state.msgpack"
LAST_FILE = "last.msgpack"
MIN_BOX = 2.0  # pixels: a box cut smaller than this by a crop is dropped


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    size: int = 320
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    clip_norm: float = 10.0
    warmup_epochs: float = 1.0
    seed: int = 0
    train_images: int | None = None
    eval_every: int = 5  # val mAP in the log every N epochs (0: only after the last)


class Trained(NamedTuple):
    checkpoint: Path
    history: list[dict]


class TrainSet:
    """The training split in memory: letterboxed images as uint8 [N, S, S, 3] and their targets in input pixels."""

    def __init__(self, data_dir: str | Path, size: int, limit: int | None = None):
        self.load(CocoDetectionSet.from_folder(data_dir, "train", size, limit=limit))

    @classmethod
    def of(cls, ds: CocoDetectionSet) -> TrainSet:
        """The images of a dataset already opened (at its letterbox size)."""
        out = cls.__new__(cls)
        out.load(ds)
        return out

    def load(self, ds: CocoDetectionSet) -> None:
        size = ds.size
        self.num_classes, self.category_ids, self.size = ds.num_classes, ds.category_ids, size
        self.images = np.empty((len(ds), size, size, 3), np.uint8)
        self.boxes: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.content: list[float] = []  # width of the image inside the letterbox (flips mirror only that part)
        for i in range(len(ds)):
            s = ds.sample(i)
            # letterbox gives uint8 / 255, so this is exact
            self.images[i] = np.rint(s["image"].permute(1, 2, 0).numpy() * 255.0).astype(np.uint8)
            self.boxes.append(s["boxes"].numpy().astype(np.float32))
            self.labels.append(s["labels"].numpy().astype(np.int32))
            info = ds.coco.imgs[ds.image_ids[i]]
            self.content.append(min(float(size), info["width"] * s["scale"]))
        self.max_objects = max([len(b) for b in self.boxes] + [1])

    def __len__(self) -> int:
        return len(self.images)

    def augmented(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        img, boxes, labels = self.images[i], self.boxes[i].copy(), self.labels[i]
        size = self.size
        if rng.random() < 0.5:
            w = int(round(self.content[i]))
            img = img.copy()
            img[:, :w] = img[:, :w][:, ::-1]
            boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
        mode = rng.integers(3)
        if mode == 1:  # zoom in: a random crop of 50-100 % of the side, resized back to the full frame
            side = size * rng.uniform(0.5, 1.0)
            x0, y0 = rng.uniform(0, size - side, 2)
            im = Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
            img = np.asarray(im)
            centre = (boxes[:, :2] + boxes[:, 2:]) / 2
            inside = np.all((centre >= [x0, y0]) & (centre < [x0 + side, y0 + side]), axis=1)
            boxes = (np.clip(boxes - [x0, y0, x0, y0], 0, side) * (size / side)).astype(np.float32)
            keep = inside & (boxes[:, 2] - boxes[:, 0] >= MIN_BOX) & (boxes[:, 3] - boxes[:, 1] >= MIN_BOX)
            boxes, labels = boxes[keep], labels[keep]
        elif mode == 2:  # zoom out: the frame shrunk to 50-100 % onto a grey canvas
            f = rng.uniform(0.5, 1.0)
            side = max(1, int(round(size * f)))
            x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, 2))
            canvas = np.full_like(img, PAD_VALUE)
            canvas[y0:y0 + side, x0:x0 + side] = np.asarray(Image.fromarray(img).resize((side, side), Image.Resampling.BILINEAR))
            img = canvas
            boxes = (boxes * (side / size) + [x0, y0, x0, y0]).astype(np.float32)
            keep = (boxes[:, 2] - boxes[:, 0] >= MIN_BOX) & (boxes[:, 3] - boxes[:, 1] >= MIN_BOX)
            boxes, labels = boxes[keep], labels[keep]
        return img, boxes, labels

    def batch(self, indices: list[int], rng: np.random.Generator) -> tuple[np.ndarray, Targets]:
        items = [self.augmented(i, rng) for i in indices]
        x = np.stack([im for im, _, _ in items]).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        return x, Targets.pad([{"boxes": b, "labels": lab} for _, b, lab in items], self.max_objects)


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    total = cfg.epochs * steps_per_epoch
    warmup = max(1, min(total - 1, int(cfg.warmup_epochs * steps_per_epoch)))
    # a one-step run still needs a decay step after the warm-up step
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, max(total, warmup + 1), end_value=cfg.lr * 0.01)
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), optax.adamw(schedule, weight_decay=cfg.weight_decay))


def make_train_step(graphdef: nnx.GraphDef, rest: nnx.State, tx: optax.GradientTransformation, size: int) -> Callable:
    anchor = anchors(size)

    def loss_fn(params, stats, x, boxes, labels, valid):
        # fresh Variables at this trace level: BatchNorm updates its statistics in place during the forward pass
        stats = jax.tree.map(jnp.asarray, stats)
        model = nnx.merge(graphdef, params, stats, rest)
        logits, deltas = model(x)
        return multibox_loss(logits, deltas, anchor, boxes, labels, valid), nnx.state(model, nnx.BatchStat)

    @jax.jit
    def step(params, stats, opt_state, x, boxes, labels, valid):
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, x, boxes, labels, valid)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    return step


def training_stamp(state_path: Path, settings: dict) -> Stamp:
    """The record beside a training state (train-state.msgpack -> train-state.json) of the settings that made it."""
    return Stamp(state_path.with_suffix(".json"), input_identity(settings), "training state")


def _detector(graphdef_eval: nnx.GraphDef, params, stats, rest, train: TrainSet) -> JaxDetector:
    det = build_tinyssd(train.num_classes, train.size)
    nnx.update(det.model, nnx.state(nnx.merge(graphdef_eval, params, stats, rest)))
    det.category_ids = train.category_ids
    return det


def train_tinyssd(data_dir: str | Path, epochs: int, size: int, log_path: str | Path, work_dir: str | Path | None = None,
                  batch_size: int = 16, lr: float = 2e-3, seed: int = 0, train_images: int | None = None,
                  eval_every: int = 5, log: Callable[[str], None] = print) -> Trained:
    """Train TinySSD on DATA/train for `epochs`. Returns the last checkpoint (`work_dir/last.msgpack`, fp32, with
    the dataset's category ids) and one record per epoch ({"epoch", "loss", "seconds"}, plus "val_map" where
    measured), over every run that contributed epochs. `work_dir` defaults to the log's folder /
    'tinyssd-jax-train'. The log file gets one line per epoch and the val mAP every `eval_every` epochs and after
    the last. The state stays when training ends: a rerun with the same settings returns at once."""
    from xprune.evaluate.coco_map import evaluate_map

    cfg = TrainConfig(epochs=epochs, size=size, batch_size=batch_size, lr=lr, seed=seed, train_images=train_images,
                      eval_every=eval_every)
    if epochs < 1 or batch_size < 1 or size < 32 or size % 32:
        raise XpruneError(f"need epochs >= 1, batch_size >= 1 and a size that is a multiple of 32: {cfg}")
    log_path = Path(log_path)
    work = Path(work_dir) if work_dir is not None else log_path.parent / "tinyssd-jax-train"
    work.mkdir(parents=True, exist_ok=True)
    t_load = time.time()
    train = TrainSet(data_dir, size, train_images)
    val = CocoDetectionSet.from_folder(data_dir, "val", size)
    log(f"loaded {len(train)} training images in {time.time() - t_load:.0f}s")
    steps_per_epoch = len(train) // batch_size
    if steps_per_epoch < 1:
        raise XpruneError(f"{len(train)} training images are fewer than one batch of {batch_size}")

    det = build_tinyssd(train.num_classes, size, seed=seed)
    det.model.eval()
    graphdef_eval = nnx.split(det.model, nnx.Param, nnx.BatchStat, ...)[0]
    det.model.train()
    graphdef, *states = nnx.split(det.model, nnx.Param, nnx.BatchStat, ...)
    params, stats, rest = states
    tx = make_optimizer(cfg, steps_per_epoch)
    opt_state = tx.init(params)
    step = make_train_step(graphdef, rest, tx, size)

    settings = {**asdict(cfg), "data": str(Path(data_dir).resolve()), "train_len": len(train)}
    start, lines, history = 0, [], []
    state_path = work / STATE_FILE
    if training_stamp(state_path, settings).claim([state_path]):
        try:
            saved = serialization.msgpack_restore(state_path.read_bytes())
        except Exception as e:  # msgpack's ExtraData, ValueError and friends: a torn or foreign file
            raise XpruneError(f"cannot resume from {state_path} ({type(e).__name__}); delete it to start over") from None
        leaves = [saved["leaves"][str(i)] for i in range(len(saved["leaves"]))]
        params, stats, opt_state = jax.tree.unflatten(jax.tree.structure((params, stats, opt_state)), leaves)
        start, lines, history = int(saved["epoch"]), list(saved["lines"]), json.loads(saved["history"])
        log(f"resuming after epoch {start}/{epochs} from {state_path}")

    for epoch in range(start, epochs):
        rng = np.random.default_rng([seed, epoch])  # per-epoch streams: a resumed run draws what a straight one does
        order = rng.permutation(len(train))
        t0 = time.time()
        losses = []
        for s in range(steps_per_epoch):
            x, t = train.batch(order[s * batch_size:(s + 1) * batch_size].tolist(), rng)
            params, stats, opt_state, loss = step(params, stats, opt_state, x, t.boxes, t.labels, t.valid)
            losses.append(loss)  # not read here: the host prepares the next batch while the step runs
        mean = float(jnp.mean(jnp.stack(losses)))
        if not math.isfinite(mean):
            raise XpruneError(f"training diverged at epoch {epoch + 1} (loss {mean})")
        record = {"epoch": epoch + 1, "loss": mean, "seconds": time.time() - t0}
        line = f"epoch {epoch + 1}/{epochs} loss {mean:.4f} time {record['seconds']:.0f}s"
        det = _detector(graphdef_eval, params, stats, rest, train)
        if (eval_every and (epoch + 1) % eval_every == 0) or epoch + 1 == epochs:
            t1 = time.time()
            m = evaluate_map(det, val)
            record["val_map"] = m["map"]
            line += f" val mAP {m['map']:.4f} mAP50 {m['map50']:.4f} ({time.time() - t1:.0f}s)"
        lines.append(line)
        history.append(record)
        det.save_checkpoint(work / LAST_FILE, meta={"epoch": epoch + 1, "train": settings})
        leaves = jax.tree.leaves((params, stats, opt_state))
        doc = {"epoch": epoch + 1, "lines": lines, "history": json.dumps(history),
               "leaves": {str(i): np.asarray(v) for i, v in enumerate(leaves)}}
        with atomic_path(state_path) as tmp:
            tmp.write_bytes(serialization.msgpack_serialize(doc))
        with atomic_path(log_path) as tmp:
            tmp.write_text("\n".join(lines) + "\n")
        log(line)  # after the state is saved: an interruption from here on loses nothing
    return Trained(work / LAST_FILE, history)


def seconds_per_step(data_dir: str | Path, size: int = 320, batch_size: int = 16, steps: int = 2) -> float:
    """Time a few training steps (forward, backward and update, on the first `batch_size` training images) to
    estimate how long training will take; the first step, which compiles, is not timed."""
    train = TrainSet(data_dir, size, batch_size)
    cfg = TrainConfig(epochs=1, size=size, batch_size=batch_size)
    det = build_tinyssd(train.num_classes, size)
    det.model.train()
    graphdef, *states = nnx.split(det.model, nnx.Param, nnx.BatchStat, ...)
    params, stats, rest = states
    tx = make_optimizer(cfg, steps_per_epoch=steps + 1)
    opt_state = tx.init(params)
    step = make_train_step(graphdef, rest, tx, size)
    x, t = train.batch([i % len(train) for i in range(batch_size)], np.random.default_rng(0))
    jax.block_until_ready(step(params, stats, opt_state, x, t.boxes, t.labels, t.valid))
    t0 = time.perf_counter()
    for _ in range(steps):
        params, stats, opt_state, loss = step(params, stats, opt_state, x, t.boxes, t.labels, t.valid)
    jax.block_until_ready(loss)
    return (time.perf_counter() - t0) / steps
