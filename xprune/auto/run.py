"""The stages of `xprune auto`, each a file in OUT:

    scores.json                 attr (or --method) scores on the first `score_images` calib images
    pruned.pt, pruned.plan.json the budgeted plan: iterative with fine-tuning (`--finetune-epochs` > 0) or the
                                plain rate search, mAP measured on the calib images after the scored ones
    baseline.onnx, model.onnx   the unpruned and the pruned model exported the same way (onnxslim, the fold)
    bench.json                  both timed interleaved with an A/A copy of the baseline, mAP of each per image
    auto.json                   the arguments, each stage's time and file, the verdicts; report.md from it

A stage whose output is there from a run with the same arguments is skipped; other arguments are refused, so an
OUT folder never mixes two jobs.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from xprune.errors import XpruneError
from xprune.files import read_json, write_json

Log = Callable[[str], None]
FORMAT = "xprune-auto-1"
STATE = "auto.json"


@dataclass(frozen=True)
class AutoSettings:
    weights: str
    data: str
    out: str
    model: str | None = None  # read from the checkpoint when it says
    method: str = "attr"
    max_map_drop: float = 0.01
    score_images: int = 32  # calib images scored on; the budget search measures on the ones after them
    held_out_images: int = 64
    rank: str = "plain"
    finetune_epochs: int = 1  # per step of the iterative search; 0: the plain rate search, no fine-tuning
    finetune_images: int | None = 256
    finetune_batch_size: int = 16
    finetune_lr: float = 1e-4
    step_rate: float = 0.05
    max_rate: float | None = 0.5
    val_images: int | None = None  # the benchmark's mAP: the first N val images (default all)
    runs: int = 100  # interleaved timing rounds
    threads: int | None = None
    engine: str = "onnx"  # or "trt": also build a TensorRT engine from the folded model
    fp16: bool = False

    def identity(self) -> dict:
        """What decides the results: everything but where they go."""
        return {k: v for k, v in asdict(self).items() if k != "out"}


def check(s: AutoSettings) -> None:
    """Bad arguments fail before any work, in one line each."""
    from xprune.data.coco import dataset_exists, has_split
    from xprune.importance.criteria import get_criterion
    from xprune.prune.budget import check_max_map_drop, check_step_rate
    from xprune.prune.plan import check_rank

    get_criterion(s.method)
    check_max_map_drop(s.max_map_drop)
    check_step_rate(s.step_rate)
    check_rank(s.rank)
    if s.engine not in ("onnx", "trt"):
        raise XpruneError(f"--engine must be onnx or trt, got {s.engine}")
    if s.engine == "trt":
        from xprune.runtime.tensorrt import require_tensorrt
        require_tensorrt()
    if s.finetune_epochs < 0 or s.runs < 10:
        raise XpruneError("--finetune-epochs must be >= 0 and --runs >= 10")
    if not Path(s.weights).is_file():
        raise XpruneError(f"checkpoint not found: {s.weights}")
    if not dataset_exists(s.data):
        raise XpruneError(f"dataset not found: {s.data}")
    for split in ("calib", "val") + (("train",) if s.finetune_epochs else ()):
        if not has_split(s.data, split):
            raise XpruneError(f"{s.data} has no '{split}' split; auto scores and searches on calib, fine-tunes on "
                              f"train and reports on val")


class Job:
    """OUT and its state file: which stages are done, with what."""

    def __init__(self, s: AutoSettings, log: Log):
        self.s, self.log = s, log
        self.out = Path(s.out)
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / STATE
        if path.is_file():
            state = read_json(path, "auto state")
            if not isinstance(state, dict) or state.get("format") != FORMAT:
                raise XpruneError(f"{path} was not written by xprune auto; use another --out")
            if state.get("settings") != _plain(s.identity()):
                raise XpruneError(f"{self.out} holds a run with other arguments; use another --out or delete it")
            self.state = state
            done = [k for k, v in state["stages"].items() if v.get("done")]
            if done:
                log(f"resuming in {self.out}: {', '.join(done)} done")
        else:
            self.state = {"format": FORMAT, "settings": _plain(s.identity()), "stages": {}}
            self.save()

    def save(self) -> None:
        write_json(self.out / STATE, self.state)

    def stage(self, name: str, files: list[str], work: Callable[[], dict | None]) -> dict:
        """Run `work` unless the stage is recorded done and its files are there; record its time and result."""
        rec = self.state["stages"].get(name)
        if rec and rec.get("done") and all((self.out / f).is_file() for f in files):
            self.log(f"[{name}] done before, kept: {', '.join(files)}")
            return rec
        self.log(f"[{name}] ...")
        t0 = time.perf_counter()
        result = work() or {}
        rec = {"done": True, "seconds": round(time.perf_counter() - t0, 1), "files": files, **result}
        self.state["stages"][name] = rec
        self.save()
        self.log(f"[{name}] {rec['seconds']:.0f} s")
        return rec


def _plain(doc: dict) -> dict:
    import json
    return json.loads(json.dumps(doc))


def run_auto(s: AutoSettings, log: Log = print, command: str = "xprune auto") -> Path:
    """The whole job; returns the path of report.md."""
    check(s)
    from xprune.models import build_detector

    job = Job(s, log)
    out = job.out
    det = build_detector(s.model, s.weights)  # the checkpoint says which family it is, or --model does
    from xprune.data.coco import dataset_num_classes
    classes = dataset_num_classes(s.data)
    if det.category_ids is None and det.num_classes != classes:
        raise XpruneError(f"{s.weights} predicts {det.num_classes} classes, {s.data} has {classes}")
    job.state["model"] = det.family
    job.state["command"] = command

    def score() -> dict:
        from xprune.data.coco import calibration_set
        from xprune.importance.scores import score_layers, write_scores
        calib = calibration_set(s.data, det.input_size, s.score_images)
        doc = score_layers(det, s.method, calib, progress=True, weights=str(s.weights))
        write_scores(out / "scores.json", doc)
        return {"layers": len(doc["layers"]), "method": s.method}

    job.stage("score", ["scores.json"], score)

    def prune() -> dict:
        from xprune.importance.scores import read_scores
        from xprune.models import save_checkpoint
        from xprune.prune.branches import fold_analysis_for
        from xprune.prune.budget import budget_plan, iterative_budget_plan
        from xprune.prune.finetune import FinetuneSettings
        from xprune.prune.plan import apply_plan

        pruned = build_detector(s.model or det.family, s.weights)
        scores = read_scores(out / "scores.json")
        fold = fold_analysis_for(pruned, required=s.rank == "per-mac", log=log)
        report = out / "pruned.search.json"
        if s.finetune_epochs:
            ft = FinetuneSettings(epochs=s.finetune_epochs, batch_size=s.finetune_batch_size, lr=s.finetune_lr)
            plan = iterative_budget_plan(pruned, scores, s.data, s.max_map_drop, ft, out / "pruned.steps", "safe",
                                         s.rank, fold, s.step_rate, s.held_out_images, s.max_rate,
                                         s.finetune_images, search_report=report, log=log, progress=True)
        else:
            plan = budget_plan(pruned, scores, s.data, s.max_map_drop, "safe", held_out_images=s.held_out_images,
                               max_rate=s.max_rate, search_report=report, log=log, rank=s.rank, fold=fold)
        plan.weights = str(s.weights)
        apply_plan(pruned, plan)
        save_checkpoint(pruned, out / "pruned.pt", meta={"pruning": plan.to_json()})
        write_json(out / "pruned.plan.json", plan.to_json())
        return {"layers_zeroed": len(plan.selected), "candidates": plan.candidates, "rate": plan.rate}

    job.stage("prune", ["pruned.pt", "pruned.plan.json"], prune)

    def export() -> dict:
        from xprune.export.onnx_export import export_onnx
        from xprune.models import load_checkpoint
        base = export_onnx(det, out / "baseline.onnx", fold=True, log=log)  # the same passes: nothing to fold
        pruned = load_checkpoint(out / "pruned.pt", det.family, det.input_size)
        model = export_onnx(pruned, out / "model.onnx", fold=True, log=log)
        write_json(out / "model.onnx.json", model)
        return {"baseline": {k: base[k] for k in ("nodes_after", "macs_after", "params")},
                "model": {k: model[k] for k in ("nodes_after", "macs_after", "params", "removed_mac_fraction",
                                                 "dead_outputs")}}

    job.stage("export", ["baseline.onnx", "model.onnx"], export)

    def bench() -> dict:
        from xprune.bench.latency import LatencyProtocol
        from xprune.bench.paired import add_speedups, paired_summary
        from xprune.bench.results import write_results
        from xprune.bench.run import BenchSettings, bench, open_target

        copy = out / "baseline-copy.onnx"  # the A/A control: the same bytes as a second target
        shutil.copyfile(out / "baseline.onnx", copy)
        targets = [open_target(p, threads=s.threads) for p in (out / "baseline.onnx", copy, out / "model.onnx")]
        for t, role in zip(targets, ("baseline", "aa-copy", "candidate")):
            t.info["role"] = role
        protocol = LatencyProtocol(warmup_runs=10, warmup_s=1.0, runs=s.runs, min_s=0.0)
        settings = BenchSettings(protocol=protocol, interleave=True, data=Path(s.data), val_images=s.val_images,
                                 threads=s.threads, order_seed=0)
        doc = bench(targets, settings, command=command, log=log)
        add_speedups(doc)
        write_results(out / "bench.json", doc)
        copy.unlink()
        base, aa, model = doc["rows"]
        return {"latency": paired_summary(model, base), "aa_control": paired_summary(aa, base)}

    job.stage("bench", ["bench.json"], bench)

    def verdict() -> dict:
        from xprune.bench.gate import judge_accuracy
        from xprune.bench.results import read_results
        doc = read_results(out / "bench.json")
        base = next(r for r in doc["rows"] if r.get("role") == "baseline")
        model = next(r for r in doc["rows"] if r.get("role") == "candidate")
        acc = judge_accuracy(base, model, "model.onnx", s.max_map_drop, 0.95, 1000, 0)
        return {"accuracy": dataclasses.asdict(acc)}

    job.stage("verdict", ["bench.json"], verdict)

    if s.engine == "trt":
        def engine() -> dict:
            from xprune.runtime.tensorrt.build import build_engine
            return {"engine": build_engine(out / "model.onnx", out / "model.engine", fp16=s.fp16)}
        job.stage("engine", ["model.engine"], engine)

    from xprune.auto.report import write_report
    return write_report(out)
