"""Recovery fine-tuning of a JAX family (TinySSD) with optax: the counterpart of `xprune.train.loop.train_detector`
with `xprune.prune.finetune.ZeroMask`, over the parameter tree.

The plan's kernels stay exactly 0.0: their gradients are replaced by zeros before the optimizer sees them, so AdamW's
moments stay zero and its update (weight decay included, a multiple of the weight) leaves them at zero, and they are
set to zero again after every step all the same. Their biases train. The loss is SSD's multibox loss plus, with a
teacher, the distillation term of `xprune.train.distill` (the same formula, written here in jax.numpy). The schedule
is torch's: one-cycle (`optax.cosine_onecycle_schedule`, OneCycleLR's defaults) or a linear warm-up and cosine decay.
A state file (parameters, BatchNorm statistics, optimizer state, history) is written every epoch and stamped with
`xprune.train.loop.training_stamp`; each epoch draws its order and augmentation from (seed, epoch), so a resumed run
ends where an uninterrupted one does.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, serialization

from xprune.data.coco import CocoDetectionSet
from xprune.errors import XpruneError
from xprune.files import atomic_path
from xprune.models.jax.detector import JaxDetector
from xprune.models.jax.pruning import kernel_path
from xprune.models.jax.tinyssd import anchors, multibox_loss, raw_outputs
from xprune.train.distill import EPS, MIN_BOX_SIDE
from xprune.train.jax_loop import TrainSet
from xprune.train.loop import TrainSettings, check_settings, epoch_line, estimate_line, training_stamp
from xprune.train.schedule import COSINE_FLOOR

Log = Callable[[str], None]


def distillation_terms(student: tuple[jax.Array, jax.Array], teacher: tuple[jax.Array, jax.Array],
                       sum_images: bool = False) -> tuple[jax.Array, jax.Array]:
    """`xprune.train.distill.distillation_terms` in jax.numpy (class-agnostic boxes [B, N, 4])."""
    (sb, ss), (tb, ts) = student, jax.tree.map(jax.lax.stop_gradient, teacher)
    s, t = jnp.clip(ss, EPS, 1 - EPS), jnp.clip(ts, EPS, 1 - EPS)
    kl = t * (jnp.log(t) - jnp.log(s)) + (1 - t) * (jnp.log(1 - t) - jnp.log(1 - s))
    d_cls = kl.sum((1, 2)) / jnp.maximum(ts.sum((1, 2)), 1.0)
    q = ts.max(-1)
    wh = jnp.maximum(tb[..., 2:] - tb[..., :2], MIN_BOX_SIDE)
    distance = (jnp.abs(sb - tb) / jnp.concatenate([wh, wh], -1)).sum(-1)
    d_box = (q * distance).sum(1) / jnp.maximum(q.sum(1), 1.0)
    reduce = jnp.sum if sum_images else jnp.mean
    return reduce(d_cls), reduce(d_box)


def kept_mask(params: nnx.State, layers: list[str]) -> nnx.State:
    """A tree like `params`: False over the kernels of `layers`, True elsewhere."""
    zero = {kernel_path(n) for n in layers}
    flat = nnx.traversals.flatten_mapping(nnx.to_pure_dict(params))
    missing = sorted(zero - set(flat))
    if missing:
        raise XpruneError(f"the plan names {len(missing)} layers this model does not have (first: {missing[0]})")
    mask = jax.tree.map(lambda a: jnp.ones(jnp.shape(a), bool), params)
    nnx.replace_by_pure_dict(mask, nnx.traversals.unflatten_mapping(
        {k: jnp.full(jnp.shape(v), k not in zero) for k, v in flat.items()}))
    return mask


def make_optimizer(settings: TrainSettings, total_steps: int) -> optax.GradientTransformation:
    if settings.schedule == "one-cycle":
        schedule = optax.cosine_onecycle_schedule(total_steps, settings.lr, settings.warmup_fraction)
    else:
        warmup = max(1, min(total_steps - 1, round(settings.warmup_fraction * total_steps)))
        schedule = optax.warmup_cosine_decay_schedule(0.0, settings.lr, warmup, max(total_steps, warmup + 1),
                                                      end_value=settings.lr * COSINE_FLOOR)
    return optax.chain(optax.clip_by_global_norm(settings.clip_norm),
                       optax.adamw(schedule, weight_decay=settings.weight_decay))


def make_step(graphdef: nnx.GraphDef, graphdef_eval: nnx.GraphDef, rest: nnx.State, tx: optax.GradientTransformation,
              size: int, mask: nnx.State, weight: float | None) -> Callable:
    """The jitted masked step: (params, stats, opt_state, x, boxes, labels, valid, teacher boxes, teacher scores) ->
    (params, stats, opt_state, loss, task loss, distillation term). `weight` None: no distillation."""
    anchor = anchors(size)

    def loss_fn(params, stats, x, boxes, labels, valid, t_boxes, t_scores):
        model = nnx.merge(graphdef, params, jax.tree.map(jnp.asarray, stats), rest)  # BatchNorm updates in place
        logits, deltas = model(x)
        task = multibox_loss(logits, deltas, anchor, boxes, labels, valid)
        term = jnp.zeros(())
        if weight is not None:  # the student's raw outputs on running statistics, as the teacher's
            e_logits, e_deltas = nnx.merge(graphdef_eval, params, stats, rest)(x)
            term = sum(distillation_terms(raw_outputs(e_logits, e_deltas, anchor, size), (t_boxes, t_scores)))
        total = task + (weight or 0.0) * term
        return total, (nnx.state(model, nnx.BatchStat), task, term)

    @jax.jit
    def step(params, stats, opt_state, x, boxes, labels, valid, t_boxes, t_scores):
        (loss, (stats, task, term)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, stats, x, boxes, labels, valid, t_boxes, t_scores)
        grads = jax.tree.map(lambda g, keep: jnp.where(keep, g, 0.0), grads, mask)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = jax.tree.map(lambda p, keep: jnp.where(keep, p, 0.0), optax.apply_updates(params, updates), mask)
        return params, stats, opt_state, loss, task, term

    return step


def finetune_jax_layers(det: JaxDetector, train: CocoDetectionSet, layers: list[str], settings: TrainSettings,
                        state_path: str | Path, teacher: JaxDetector | None = None, weight: float = 1.0,
                        log: Log = print, after_step: Callable[[], None] | None = None,
                        inputs: Mapping[str, Any] | None = None) -> list[dict]:
    """Fine-tune `det` in place with `layers` held at zero (distilled from `teacher` when given); returns one record
    per epoch as `train_detector` does. The state file resumes a run with the same stamp (`training_stamp`)."""
    check_settings(settings)
    if settings.precision != "fp32":
        raise XpruneError(f"the JAX families fine-tune in fp32, not {settings.precision}")
    state_path = Path(state_path)
    data = TrainSet.of(train)
    batch = settings.batch_size
    steps_per_epoch = math.ceil(len(data) / batch)
    det.model.eval()
    graphdef_eval = nnx.split(det.model, nnx.Param, nnx.BatchStat, ...)[0]
    det.model.train()
    graphdef, params, stats, rest = nnx.split(det.model, nnx.Param, nnx.BatchStat, ...)
    mask = kept_mask(params, layers)
    params = jax.tree.map(lambda p, keep: jnp.where(keep, p, 0.0), params, mask)
    tx = make_optimizer(settings, settings.epochs * steps_per_epoch)
    opt_state = tx.init(params)
    distill_weight = weight if teacher is not None else None
    step = make_step(graphdef, graphdef_eval, rest, tx, det.input_size, mask, distill_weight)

    def batch_of(indices: list[int], rng: np.random.Generator):
        x, t = data.batch(indices, rng)
        if teacher is None:
            empty = np.zeros((len(indices), 0, 0), np.float32)
            return x, t, (empty, empty)
        return x, t, teacher.raw_arrays(x)

    history: list[dict] = []
    if training_stamp(state_path, settings, len(train), inputs).claim([state_path]):
        try:
            saved = serialization.msgpack_restore(state_path.read_bytes())
            leaves = [saved["leaves"][str(i)] for i in range(len(saved["leaves"]))]
            params, stats, opt_state = jax.tree.unflatten(jax.tree.structure((params, stats, opt_state)), leaves)
            history = json.loads(saved["history"])
        except Exception as e:  # msgpack's errors, a missing key, another tree: a torn or foreign file
            raise XpruneError(f"cannot resume from {state_path} ({type(e).__name__}); delete it to start over") from None
        log(f"resuming after epoch {len(history)}/{settings.epochs} from {state_path}")
    if len(history) < settings.epochs:  # the estimate: one step compiles, two are timed; nothing is kept
        x, t, tout = batch_of([i % len(data) for i in range(batch)], np.random.default_rng(settings.seed))
        args = (x, t.boxes, t.labels, t.valid, *tout)
        jax.block_until_ready(step(params, stats, opt_state, *args))
        t0 = time.perf_counter()
        jax.block_until_ready([step(params, stats, opt_state, *args) for _ in range(2)])
        seconds = (time.perf_counter() - t0) / 2 * steps_per_epoch
        left = settings.epochs - len(history)
        log(estimate_line(seconds, steps_per_epoch, batch, left))
    for epoch in range(len(history), settings.epochs):
        rng = np.random.default_rng([settings.seed, epoch])
        order = rng.permutation(len(data))
        t0, sums = time.perf_counter(), []
        for s in range(steps_per_epoch):
            x, t, tout = batch_of(order[s * batch:(s + 1) * batch].tolist(), rng)
            params, stats, opt_state, *losses = step(params, stats, opt_state, x, t.boxes, t.labels, t.valid, *tout)
            sums.append(losses)
            if after_step is not None:
                after_step()
        loss, task, term = (float(v) for v in jnp.mean(jnp.asarray(sums), axis=0))
        if not math.isfinite(loss):
            raise XpruneError(f"training diverged at epoch {epoch + 1} (loss {loss})")
        record = {"epoch": epoch + 1, "loss": loss, "seconds": time.perf_counter() - t0}
        if teacher is not None:
            record.update(task_loss=task, distill_loss=term)
        history.append(record)
        doc = {"history": json.dumps(history),
               "leaves": {str(i): np.asarray(v) for i, v in enumerate(jax.tree.leaves((params, stats, opt_state)))}}
        with atomic_path(state_path) as tmp:
            tmp.write_bytes(serialization.msgpack_serialize(doc))
        log(epoch_line(record, settings.epochs))
    nnx.update(det.model, nnx.state(nnx.merge(graphdef_eval, params, stats, rest)))
    det.model.eval()
    return history


__all__ = ["distillation_terms", "finetune_jax_layers", "kept_mask", "make_optimizer"]
