"""Drift-robust timing: interleave what is compared, and time a fixed reference workload beside every sample.

Shared CPUs (CI runners, a laptop with a browser open, a machine with a training job) change speed while a benchmark
runs and differ from one another. Two defences, both used by `xprune bench --interleave --reference-workload` and by
`benchmarks/gate_quality.py`:

* `measure_interleaved` runs the functions under comparison in rotating order, round by round (A B, B A, A B, ...),
  so a slow spell hits every function alike instead of whichever happened to be measured during it; with a seed,
  each round's order is drawn at random instead (`round_order`), so no function always follows the same other one.
* `ReferenceWorkload` is a small deterministic conv net run in ONNX Runtime with the same thread settings as the
  model. Timed right after each model sample, it gives every model sample a paired reference sample; the gate then
  compares model/reference per sample ("relative latency"), which cancels changes of machine speed that hit both
  alike - including a baseline recorded on another (same-type) machine. It does not make different CPU
  architectures comparable: a model and the reference scale differently with caches and ISA.

Record `ReferenceWorkload.describe()` in the results file's protocol block (`protocol["reference_workload"]`); the
gate refuses to compare relative latencies measured against different reference workloads.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

import numpy as np

from xprune.bench.latency import LatencyProtocol, time_call_ms
from xprune.errors import XpruneError

if TYPE_CHECKING:
    from xprune.runtime.base import Runner

REFERENCE_SUFFIX = "@reference"
REFERENCE_NAME = "xprune-reference-convnet"
REFERENCE_VERSION = 1
REFERENCE_BACKEND = "onnxruntime"  # part of the workload's identity (`describe()`): it always runs there
_OPSET = 17
_IR_VERSION = 8  # old enough for every onnxruntime this project supports


def conv_net(in_channels: int, channels: int, size: int, depth: int, seed: int = 0,
             extra_layers: int = 0) -> tuple[bytes, int, tuple[int, int, int, int]]:
    """A plain conv net as serialized ONNX: a 3x3 stem conv in_channels->channels, then `depth + extra_layers`
    3x3 convs channels->channels (ReLU after each), all at size x size, then a global average pool.

    Weights come from a fixed-seed generator, so the same arguments always give the same bytes. Returns
    (model bytes, MACs, input shape). `extra_layers` adds identical layers: with depth d, one extra layer adds
    close to 1/d of the MACs, which is how the gate-quality benchmark injects a known slowdown."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    shape = (1, in_channels, size, size)
    nodes, inits, macs = [], [], 0
    prev, cin = "input", in_channels
    for i in range(1 + depth + extra_layers):
        w = (rng.standard_normal((channels, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))).astype(np.float32)
        b = np.zeros(channels, np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        macs += channels * cin * 9 * size * size
        prev, cin = f"r{i}", channels
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["output"]))
    graph = helper.make_graph(nodes, "conv_net", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, (1, channels, 1, 1))],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="xprune")
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString(), macs, shape


class ReferenceWorkload:
    """A fixed conv net (118 M MACs: ~1.3 ms on one core of a current x86 server CPU, a few ms on a small CI runner)
    in ONNX Runtime, spinning off, with the thread count of the model it is timed beside. A context manager;
    `run()` is one inference. Long enough that per-call overhead and timer resolution do not dominate it, short
    enough to add little to a detector's sample."""

    # stem 16->32, then 12 convs 32->32, at 32x32: 32*16*9*1024 + 12*32*32*9*1024 = 117.9 M MACs
    IN_CHANNELS, CHANNELS, SIZE, DEPTH, SEED = 16, 32, 32, 12, 20240601

    def __init__(self, threads: int | None = None):
        self.threads = threads
        self.model, self.macs, self.input_shape = conv_net(self.IN_CHANNELS, self.CHANNELS, self.SIZE, self.DEPTH,
                                                           self.SEED)
        self.input = np.random.default_rng(self.SEED).standard_normal(self.input_shape).astype(np.float32)
        self._runner: Runner | None = None

    def describe(self) -> dict:
        """What identifies this workload in a results file; relative latencies are comparable only when equal."""
        return {"name": REFERENCE_NAME, "version": REFERENCE_VERSION, "macs": self.macs,
                "input_shape": list(self.input_shape), "engine": REFERENCE_BACKEND, "threads": self.threads}

    def __enter__(self) -> "ReferenceWorkload":
        from xprune.runtime.registry import TargetOptions, backend_named

        runner = backend_named(REFERENCE_BACKEND).runner(self.model, TargetOptions(threads=self.threads))
        self._runner = runner.__enter__()  # spinning off: the backend's default
        return self

    def __exit__(self, *exc) -> None:
        if self._runner is not None:
            self._runner.__exit__(*exc)
            self._runner = None

    def run(self) -> np.ndarray:
        if self._runner is None:
            raise XpruneError("the reference workload is not open: use it inside a `with` block")
        return self._runner.infer(self.input)[0]


def round_order(n: int, round_index: int, seed: int | None = None) -> list[int]:
    """The order of one round over n functions: rotated by the round index (0 1 2, 1 2 0, ...), or with `seed` a
    permutation drawn for that round alone, so every round's order can be recomputed from (seed, round index)."""
    if seed is None:
        k = round_index % n
        return [*range(k, n), *range(k)]
    return [int(i) for i in np.random.default_rng([seed, round_index]).permutation(n)]


def measure_interleaved(fns: dict[str, Callable[[], object]], protocol: LatencyProtocol = LatencyProtocol(),
                        reference: Callable[[], object] | None = None,
                        seed: int | None = None) -> dict[str, list[float]]:
    """Time several functions interleaved, by the protocol; returns {name: samples_ms}.

    Warm-up: whole rounds (every function, and the reference after each) until `warmup_runs` rounds and
    `warmup_s` seconds have passed. Then timed rounds; round r calls the functions in the order rotated by r
    (A B C, B C A, C A B, ...), so neither position nor drift favours any of them; with `seed` (>= 0), in the
    order `round_order(len(fns), r, seed)`, so no function always runs right after the same other one. With
    `reference`, it is timed right after each model sample and its samples come back under "<name>@reference",
    pair for pair with "<name>". Timing stops after at least `runs` rounds and `min_s` seconds for the whole loop
    (every function gets `runs` samples), or at `max_s` once 10 rounds are in."""
    if not fns:
        raise XpruneError("measure_interleaved needs at least one function to time")
    names = list(fns)
    if seed is not None and seed < 0:
        raise XpruneError(f"the interleaving seed must be >= 0, got {seed}")
    for name in names:
        if name.endswith(REFERENCE_SUFFIX):
            raise XpruneError(f"function name '{name}' clashes with the reference samples' suffix")

    def one_round(order: list[str], out: dict[str, list[float]] | None) -> None:
        for name in order:
            t = time_call_ms(fns[name])
            r = time_call_ms(reference) if reference is not None else None
            if out is not None:
                out[name].append(t)
                if r is not None:
                    out[name + REFERENCE_SUFFIX].append(r)

    start, rounds = time.perf_counter(), 0
    while rounds < protocol.warmup_runs or time.perf_counter() - start < protocol.warmup_s:
        one_round([names[i] for i in round_order(len(names), rounds, seed)], None)
        rounds += 1
        if time.perf_counter() - start > protocol.max_s:
            break

    out: dict[str, list[float]] = {n: [] for n in names}
    if reference is not None:
        out.update({n + REFERENCE_SUFFIX: [] for n in names})
    start, rounds = time.perf_counter(), 0
    while rounds < protocol.runs or time.perf_counter() - start < protocol.min_s:
        one_round([names[i] for i in round_order(len(names), rounds, seed)], out)
        rounds += 1
        if time.perf_counter() - start > protocol.max_s and rounds >= 10:
            break
    return out
