"""Timing a model's variants on each backend: what each backend runs of a variant, every variant of one model
interleaved in one process (`xprune.bench.run.bench`), beside an A/A control (the baseline timed twice). Each
round runs the targets in an order drawn from the study's `order_seed` (`xprune.bench.drift.round_order`), so the
A/A copy does not always follow the baseline; the seed and every round's order are kept with the samples.

A backend of `xprune.runtime.registry` joins the study with an entry in `STUDY_BACKENDS`: the facts study.json
records about it and how it opens a variant. Files go through the registry (`open_target`), so the runner is the
one `xprune bench` would use for them.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from xprune.bench.latency import LatencyProtocol
from xprune.bench.run import BenchSettings, Target, bench, open_target
from xprune.errors import XpruneError
from xprune.runtime.registry import BACKENDS as RUNTIME_BACKENDS
from xprune.study.settings import Log, StudySettings
from xprune.bench.paired import paired_summary
from xprune.study.variants import BASELINE, BASELINE_COPY, Variant

MODEL, COPY, ZEROED = "model", "copy", "zeroed"  # what of a variant a target runs: it, its A/A copy, its unfolded ONNX


@dataclass(frozen=True)
class Timed:
    """One target to build: which variant, under which id in the results, and what of it runs."""

    variant_id: str
    variant: Variant
    part: str = MODEL


def torch_facts(version: str, settings: StudySettings) -> dict:
    import torch

    # OpenMP's wait policy decides whether idle torch threads spin; on a busy small CPU spinning threads slow
    # every op many times over (ONNX Runtime's spinning is off in the study), so it is recorded
    return {"device": "cpu", "threads": torch.get_num_threads(), "version": version,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def onnxruntime_facts(version: str, settings: StudySettings) -> dict:
    return {"device": "cpu", "version": version, "threads": settings.threads or os.cpu_count(), "spinning": False}


def tensorrt_facts(version: str, settings: StudySettings) -> dict:
    return {"device": "cuda:0", "version": version, "precision": "fp16" if settings.trt_fp16 else "fp32"}


def torch_target(model: str, t: Timed, work: Path, settings: StudySettings, log: Log) -> Target:
    """The detector in memory (zeroed weights, dense compute); the A/A copy is a deep copy of the baseline. This is
    the model's own framework: a JAX family runs here jit-compiled by XLA (its rows say `jax` in "runtime")."""
    from xprune.models.jax import is_jax
    from xprune.runtime.pytorch.runner import TorchRunner

    v = t.variant
    det = copy.deepcopy(v.detector) if t.part == COPY else v.detector
    runner: Any
    if is_jax(det):
        from xprune.runtime.jax.runner import JaxRunner
        runner, framework = JaxRunner(det), "jax"
    else:
        runner, framework = TorchRunner(det), "torch"
    info: dict[str, Any] = {"source": f"{framework}:{model}:{t.variant_id}", "model": model,
                            "variant": BASELINE if v.is_baseline else "zeroed",
                            "method": None if v.is_baseline else v.method, "rate": None,
                            "input_shape": [1, 3, det.input_size, det.input_size]}
    return Target(Path(info["source"]), runner, info)


def onnxruntime_target(model: str, t: Timed, work: Path, settings: StudySettings, log: Log) -> Target:
    """The folded export (or the unfolded one); the A/A copy is a second file with the baseline's bytes."""
    v = t.variant
    assert v.onnx is not None
    path = v.onnx_zeroed if t.part == ZEROED else v.onnx
    if t.part == COPY:
        path = work / f"{model}-{BASELINE_COPY}.onnx"
        path.write_bytes(v.onnx.read_bytes())
    assert path is not None
    return open_target(path, threads=settings.threads)


def tensorrt_target(model: str, t: Timed, work: Path, settings: StudySettings, log: Log) -> Target:
    """An engine built from the folded export (the A/A copy: a second engine from the same file)."""
    from xprune.runtime.tensorrt.build import build_engine

    assert t.variant.onnx is not None
    engine = work / f"{model}-{t.variant_id}.engine"
    log(f"[{model}] building TensorRT engine {engine.name}")
    build_engine(t.variant.onnx, engine, fp16=settings.trt_fp16)
    return open_target(engine)


@dataclass(frozen=True)
class StudyBackend:
    timed: str  # what the study times there, as study.json's "backends" block says it
    facts: Callable[[str, StudySettings], dict]
    target: Callable[[str, Timed, Path, StudySettings, Log], Target]
    times_zeroed_onnx: bool = False  # whether `onnx_zeroed` files run here too


STUDY_BACKENDS: dict[str, StudyBackend] = {
    "torch": StudyBackend("the model's framework: zeroed weights, dense compute (PyTorch eager; JAX families jit-compiled)",
                          torch_facts, torch_target),
    "onnxruntime": StudyBackend("exported raw heads, zeroed layers folded (xprune.export.fold)", onnxruntime_facts,
                                onnxruntime_target, times_zeroed_onnx=True),
    "tensorrt": StudyBackend("engine built from the folded ONNX", tensorrt_facts, tensorrt_target),
}


def backends_block(settings: StudySettings) -> dict:
    """study.json's "backends": per requested backend, its version and facts, or why it cannot run here."""
    out = {}
    for name in settings.backends:
        spec = STUDY_BACKENDS.get(name)
        if spec is None:
            out[name] = {"available": False, "reason": "the study has no way to run its variants there yet"}
            continue
        try:
            version = RUNTIME_BACKENDS[name].available()
        except XpruneError as e:
            out[name] = {"available": False, "reason": str(e)}
            continue
        out[name] = {"available": True, **spec.facts(version, settings), "variant": spec.timed}
    return out


def timed_targets(backend: str, variants: list[Variant], aa_control: bool) -> list[Timed]:
    """Every variant in order (each followed by its unfolded ONNX where that runs), the A/A copy second (the
    order within a round is drawn per round when timed: this is only the order of the results rows)."""
    spec = STUDY_BACKENDS[backend]
    out = []
    for v in variants:
        out.append(Timed(v.id, v))
        if spec.times_zeroed_onnx and v.onnx_zeroed is not None:
            out.append(Timed(f"{v.id}-zeroed", v, ZEROED))
    if aa_control:
        out.insert(1, Timed(BASELINE_COPY, variants[0], COPY))
    return out


def time_backend(backend: str, model: str, variants: list[Variant], extra: list[Target], work: Path,
                 settings: StudySettings, protocol: LatencyProtocol, command: str, log: Log) -> tuple[dict, dict]:
    """Time every variant (and the `extra` targets, already opened) interleaved on one backend. Returns the
    results document and its rows by variant id."""
    spec = STUDY_BACKENDS[backend]
    targets: list[tuple[str, Target]] = []
    for t in timed_targets(backend, variants, settings.aa_control):
        target = spec.target(model, t, work, settings, log)
        target.info.update({"variant_id": t.variant_id, "zeroed_layers": list(t.variant.layers)})
        if t.part == COPY:
            target.info["variant"] = BASELINE_COPY
        targets.append((t.variant_id, target))
    targets += [(t.info["variant_id"], t) for t in extra]
    doc = bench([t for _, t in targets], BenchSettings(protocol=protocol, interleave=True, threads=settings.threads,
                                                       order_seed=settings.order_seed), command=command)
    by_source = {r["source"]: r for r in doc["rows"]}
    return doc, {vid: by_source[t.info["source"]] for vid, t in targets}


def timing_order(doc: dict) -> dict:
    """The seed and each timed round's order of one interleaved run, by variant id (study.json "timing_order")."""
    ids = [r.get("variant_id", r["source"]) for r in doc["rows"]]
    orders = doc["protocol"].get("round_orders") or []
    return {"seed": doc["protocol"].get("order_seed"), "targets": ids, "round_orders": orders,
            "copy_right_after_baseline": _follows(ids, orders, BASELINE_COPY, BASELINE)}


def _follows(ids: list[str], orders: list[list[int]], second: str, first: str) -> int | None:
    """In how many rounds `second` ran right after `first` (None when either was not timed)."""
    if second not in ids or first not in ids:
        return None
    a, b = ids.index(first), ids.index(second)
    return sum(1 for o in orders if o.index(b) == o.index(a) + 1)


def aa_control(by_id: dict) -> dict | None:
    """The A/A control of one interleaved run: the baseline's copy against the baseline."""
    if BASELINE_COPY not in by_id:
        return None
    return paired_summary(by_id[BASELINE_COPY], by_id[BASELINE])
