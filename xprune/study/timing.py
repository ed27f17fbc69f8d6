"""Timing a model's variants on each backend: what each backend runs of a variant, every variant of one model
interleaved in one process (`xprune.bench.run.bench`), beside an A/A control (the baseline timed twice). Each
round runs the targets in an order drawn from the study's `order_seed` (`xprune.bench.drift.round_order`), so the
A/A copy does not always follow the baseline; the seed and every round's order are kept with the samples.

Every backend comes from `xprune.runtime.registry`, and what the study times there follows from what it declares:
the model's framework slot (`FRAMEWORK`) runs the detector in memory on the backend of its framework
(`runner_for`); a backend that opens ONNX files runs the folded export itself (and the unfolded one, with
`onnx_zeroed`), even one that can also build its own file from it (OpenVINO); any other backend that builds an engine
gets one built from the folded export. Files go through
`xprune.bench.run.open_target`, so the runner is the one `xprune bench` would use for them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xprune.bench.latency import LatencyProtocol
from xprune.bench.run import BenchSettings, Target, bench, open_target
from xprune.errors import XpruneError
from xprune.runtime.registry import (ONNX_SUFFIX, Backend, EngineOptions, TargetOptions, backend_named,
                                     framework_backend, runner_for)
from xprune.study.settings import FRAMEWORK, Log, StudySettings
from xprune.bench.paired import paired_summary
from xprune.study.variants import BASELINE, BASELINE_COPY, Variant

MODEL, COPY, ZEROED = "model", "copy", "zeroed"  # what of a variant a target runs: it, its A/A copy, its unfolded ONNX
# what the study times on each kind of backend, as study.json's "backends" block says it
FRAMEWORK_TIMED = ("the model's framework: zeroed weights, dense compute (PyTorch eager; JAX families "
                   "jit-compiled)")
ONNX_TIMED = "exported raw heads, zeroed layers folded (xprune.export.fold)"
ENGINE_TIMED = "engine built from the folded ONNX"


@dataclass(frozen=True)
class Timed:
    """One target to build: which variant, under which id in the results, and what of it runs."""

    variant_id: str
    variant: Variant
    part: str = MODEL


def runs_onnx(backend: str) -> bool:
    """Whether the backend runs the exported ONNX file itself (and so the unfolded one too)."""
    return backend != FRAMEWORK and backend_named(backend).runs_exported_onnx


def what_is_timed(backend: str) -> str:
    if backend == FRAMEWORK:
        return FRAMEWORK_TIMED
    return ONNX_TIMED if runs_onnx(backend) else ENGINE_TIMED


def framework_target(model: str, t: Timed) -> Target:
    """The detector in memory (zeroed weights, dense compute) on its own framework's backend; the A/A copy is a
    deep copy of the baseline. Its rows say which backend ran it in "runtime"."""
    v = t.variant
    det = copy.deepcopy(v.detector) if t.part == COPY else v.detector
    runner = runner_for(det)
    info: dict[str, Any] = {"source": f"{runner.name}:{model}:{t.variant_id}", "model": model,
                            "variant": BASELINE if v.is_baseline else "zeroed",
                            "method": None if v.is_baseline else v.method, "rate": None,
                            "input_shape": [1, 3, det.input_size, det.input_size]}
    return Target(Path(info["source"]), runner, info)


def onnx_target(backend: Backend, model: str, t: Timed, work: Path, settings: StudySettings) -> Target:
    """The folded export (or the unfolded one); the A/A copy is a second file with the baseline's bytes."""
    v = t.variant
    assert v.onnx is not None
    path = v.onnx_zeroed if t.part == ZEROED else v.onnx
    if t.part == COPY:
        path = work / f"{model}-{BASELINE_COPY}{ONNX_SUFFIX}"
        path.write_bytes(v.onnx.read_bytes())
    assert path is not None
    return open_target(path, threads=settings.threads, backend=backend)


def engine_target(backend: Backend, model: str, t: Timed, work: Path, settings: StudySettings, log: Log) -> Target:
    """An engine built from the folded export (the A/A copy: a second engine from the same file)."""
    assert t.variant.onnx is not None
    engine = work / f"{model}-{t.variant_id}{backend.suffixes[0]}"
    log(f"[{model}] building {backend.label} engine {engine.name}")
    backend.build(t.variant.onnx, engine, EngineOptions(fp16=settings.trt_fp16))
    return open_target(engine, backend=backend)


def open_timed(backend: str, model: str, t: Timed, work: Path, settings: StudySettings, log: Log) -> Target:
    if backend == FRAMEWORK:
        return framework_target(model, t)
    b = backend_named(backend)
    if runs_onnx(backend):
        return onnx_target(b, model, t, work, settings)
    return engine_target(b, model, t, work, settings, log)


def backends_block(settings: StudySettings) -> dict:
    """study.json's "backends": per requested backend, its version and facts, or why it cannot run here. The
    framework slot reports the backend of the default framework (PyTorch); a JAX family's rows name theirs."""
    out = {}
    for name in settings.backends:
        backend = framework_backend() if name == FRAMEWORK else backend_named(name)
        # `trt_fp16` (as study files name it) is the precision every engine is built in
        options = TargetOptions(threads=settings.threads, fp16=settings.trt_fp16 and backend.builds_engine)
        try:
            facts = backend.run_facts(options)
        except XpruneError as e:
            out[name] = {"available": False, "reason": str(e)}
            continue
        out[name] = {"available": True, **facts, "variant": what_is_timed(name)}
    return out


def timed_targets(backend: str, variants: list[Variant], aa_control: bool) -> list[Timed]:
    """Every variant in order (each followed by its unfolded ONNX where that runs), the A/A copy second (the
    order within a round is drawn per round when timed: this is only the order of the results rows)."""
    zeroed = runs_onnx(backend)
    out = []
    for v in variants:
        out.append(Timed(v.id, v))
        if zeroed and v.onnx_zeroed is not None:
            out.append(Timed(f"{v.id}-zeroed", v, ZEROED))
    if aa_control:
        out.insert(1, Timed(BASELINE_COPY, variants[0], COPY))
    return out


def time_backend(backend: str, model: str, variants: list[Variant], extra: list[Target], work: Path,
                 settings: StudySettings, protocol: LatencyProtocol, command: str, log: Log) -> tuple[dict, dict]:
    """Time every variant (and the `extra` targets, already opened) interleaved on one backend. Returns the
    results document and its rows by variant id."""
    targets: list[tuple[str, Target]] = []
    for t in timed_targets(backend, variants, settings.aa_control):
        target = open_timed(backend, model, t, work, settings, log)
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
