"""The stages of `xprune auto`, each a file in OUT:

    scores.json                 attr (or --method) scores on the first `score_images` calib images (a warning
                                when they are train images: fine for scores, never for the budget)
    pruned.pt, pruned.plan.json the budgeted plan: by default a walk toward `target_macs` of the exported MACs in
                                steps of `step_macs`, each step over budget fine-tuned with distillation from the
                                unpruned model (`--search rate`: the layer-count search), mAP measured on the first
                                `held_out_images` val images
    levels (in auto.json)       which output levels never fire on those images, and which zeroed layers only fed
                                them (`xprune.auto.levels`)
    baseline.onnx, model.onnx   the unpruned and the pruned model exported the same way (onnxslim, the fold);
    silent.onnx                 the unpruned model with only the silent levels' layers of the plan zeroed
    bench.json                  all timed interleaved with an A/A copy of the baseline, mAP of each per image;
                                the verdict's mAP leaves out the val images the search measured on
                                (`xprune.auto.image_sets`)
    auto.json                   the arguments, each stage's time, files and inputs, the verdicts; report.md from it
    auto.stamp.json             the job's input identity (`xprune.resume`): its arguments, the checkpoint's SHA-256

A stage whose files are there from a run with the same arguments and checkpoint, made from the same input files
(SHA-256), is kept; another job's arguments or checkpoint are refused in one line, so an OUT folder never mixes
two jobs. The prune stage is `xprune.prune.run.prune_checkpoint`, as `xprune prune` runs it.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from xprune.auto.image_sets import bench_val_limit, reported_rows, searched_images
from xprune.errors import XpruneError
from xprune.files import read_json, write_json
from xprune.prune.run import PruneRequest, prune_checkpoint
from xprune.resume import Stamp, input_identity, plain

Log = Callable[[str], None]
FORMAT = "xprune-auto-1"
STATE = "auto.json"
STAMP = "auto.stamp.json"  # the job's inputs: its arguments and the SHA-256 of the checkpoint


@dataclass(frozen=True)
class AutoSettings:
    weights: str
    data: str
    out: str
    model: str | None = None  # read from the checkpoint when it says
    method: str = "attr"
    max_map_drop: float = 0.01
    score_images: int = 32  # calib images scored on
    held_out_images: int = 64  # the budget search measures on the first N images of search_split
    search_split: str = "val"  # never train; on val, the report's mAP is on the val images after the search's
    search: str = "mac-target"  # or "rate": the largest number of layers within the budget
    target_macs: float = 0.5  # the walk's goal; the budget usually stops it first
    step_macs: float = 0.05
    rank: str = "plain"  # the rate search's ranking
    finetune_epochs: int = 2  # after a step over budget; 0: no fine-tuning
    finetune_images: int | None = None  # None: the whole train split
    finetune_batch_size: int = 16
    finetune_lr: float | None = None  # default: a fraction of the family's reference learning rate
    distill: bool = True  # fine-tuning distils from the unpruned model
    step_rate: float = 0.05  # the rate search's step, in candidate layers
    max_rate: float | None = 0.5
    val_images: int | None = None  # the report's mAP: N val images after the search's (default all of them)
    runs: int = 100  # interleaved timing rounds
    threads: int | None = None
    engine: str = "onnx"  # or an engine the runtime registry builds from the folded model ("trt": TensorRT)
    fp16: bool = False

    def identity(self) -> dict:
        """What decides the results: everything but where they go."""
        return {k: v for k, v in asdict(self).items() if k != "out"}


SEARCHES = ("mac-target", "rate")


def prune_request(s: AutoSettings, family: str | None = None) -> PruneRequest:
    """The prune stage on OUT/scores.json over the safe candidates: the walk toward the MAC target under the budget
    (or the rate search), fine-tuning after a step over budget unless `finetune_epochs` is 0; OUT/pruned.pt and its
    plan, search record and steps beside it."""
    if s.search not in SEARCHES:
        raise XpruneError(f"unknown search '{s.search}'; choose one of: {', '.join(SEARCHES)}")
    out = Path(s.out)
    walk = s.search == "mac-target"
    return PruneRequest(weights=str(s.weights), scores=str(out / "scores.json"), out=str(out / "pruned.pt"),
                        model=s.model or family, data=s.data, max_map_drop=s.max_map_drop, policy="safe",
                        target_macs=s.target_macs if walk else None, step_macs=s.step_macs,
                        rank=s.rank, held_out_images=s.held_out_images, search_split=s.search_split,
                        max_rate=None if walk else s.max_rate,
                        finetune_epochs=s.finetune_epochs or None, finetune_batch_size=s.finetune_batch_size,
                        finetune_lr=s.finetune_lr, finetune_images=s.finetune_images, step_rate=s.step_rate,
                        distill=s.distill)


def check(s: AutoSettings) -> None:
    """Bad arguments fail before any work, in one line each."""
    from xprune.data.coco import dataset_exists, has_split
    from xprune.importance.criteria import get_criterion

    get_criterion(s.method)
    prune_request(s).check()
    if s.engine != "onnx":  # an engine the registry builds from the folded ONNX, and can build here
        from xprune.runtime.registry import engine_builder
        engine_builder(s.engine).available()
    if s.finetune_epochs < 0 or s.runs < 10:
        raise XpruneError("--finetune-epochs must be >= 0 and --runs >= 10")
    if not Path(s.weights).is_file():
        raise XpruneError(f"checkpoint not found: {s.weights}")
    if not dataset_exists(s.data):
        raise XpruneError(f"dataset not found: {s.data}")
    for split in dict.fromkeys(("calib", "val", s.search_split) + (("train",) if s.finetune_epochs else ())):
        if not has_split(s.data, split):
            raise XpruneError(f"{s.data} has no '{split}' split; auto scores on calib, searches on the first "
                              f"{s.search_split} images, fine-tunes on train and reports on the rest of val")


class Job:
    """OUT, claimed by the job's stamp (another job's folder is refused in one line), and auto.json: which stages
    are done, from which input files, with what result."""

    def __init__(self, s: AutoSettings, log: Log):
        self.s, self.log = s, log
        self.out = Path(s.out)
        self.out.mkdir(parents=True, exist_ok=True)
        identity = input_identity(s.identity(), files={"weights": s.weights})
        path = self.out / STATE
        if Stamp(self.out / STAMP, identity, "pruning job").claim(resumable=[path]):
            state = read_json(path, "auto state")
            if not isinstance(state, dict) or state.get("format") != FORMAT:
                raise XpruneError(f"{path} was not written by xprune auto; use another --out")
            self.state = state
            done = [k for k, v in state["stages"].items() if v.get("done")]
            if done:
                log(f"resuming in {self.out}: {', '.join(done)} done")
        else:
            self.state = {"format": FORMAT, "settings": plain(s.identity()), "stages": {}}
            self.save()

    def save(self) -> None:
        write_json(self.out / STATE, self.state)

    def stage(self, name: str, files: list[str], work: Callable[[], dict | None],
              inputs: Sequence[str] = ()) -> dict:
        """Run `work` unless the stage is recorded done from the same `inputs` (files in OUT, by SHA-256) and its
        `files` are there; record its time, inputs and result. A stage whose inputs were remade runs again."""
        identity = input_identity({}, files={f: self.out / f for f in inputs})
        rec = self.state["stages"].get(name)
        if rec and rec.get("done") and rec.get("inputs") == identity and all((self.out / f).is_file() for f in files):
            self.log(f"[{name}] done before, kept: {', '.join(files)}")
            return rec
        self.log(f"[{name}] ...")
        t0 = time.perf_counter()
        result = work() or {}
        rec = {"done": True, "seconds": round(time.perf_counter() - t0, 1), "files": files, "inputs": identity,
               **result}
        self.state["stages"][name] = rec
        self.save()
        self.log(f"[{name}] {rec['seconds']:.0f} s")
        return rec


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
        from xprune.data.splits import calibration_overlap
        from xprune.importance.scores import score_layers, write_scores
        calib = calibration_set(s.data, det.input_size, s.score_images)
        doc = score_layers(det, s.method, calib, progress=True, weights=str(s.weights))
        write_scores(out / "scores.json", doc)
        images = None
        if doc.get("calibration"):  # a data-driven criterion: say when its images are train images
            overlap = calibration_overlap(s.data, s.score_images)
            if overlap.overlaps:
                log(f"warning: {overlap.describe()}; the scores are computed on images the model trained on (the "
                    f"budget search measures on {s.search_split} images, not on them)")
            images = {"split": overlap.split, "images": overlap.images, "train_images": len(overlap.shared)}
        return {"layers": len(doc["layers"]), "method": s.method, "calibration": images}

    job.stage("score", ["scores.json"], score)

    def prune() -> dict:
        plan = prune_checkpoint(prune_request(s, det.family), log=log, progress=True)
        return {"layers_zeroed": len(plan.selected), "candidates": plan.candidates, "rate": plan.rate}

    job.stage("prune", ["pruned.pt", "pruned.plan.json"], prune, inputs=["scores.json"])

    def levels() -> dict:
        from xprune.auto.levels import silent_split
        from xprune.prune.budget import held_out_split
        plan = read_json(out / "pruned.plan.json", "plan")
        held = plan["budget"]["held_out"]
        images = held_out_split(s.data, det.input_size, held["images"], skip=held["first"], split=held["split"])
        return silent_split(det, [c["layer"] for c in plan["selected"]], images.data)

    split = job.stage("levels", ["pruned.plan.json"], levels, inputs=["pruned.plan.json"])
    silent = bool(split.get("silent_layers"))
    files = ["baseline.onnx", "model.onnx"] + (["silent.onnx"] if silent else [])

    def export() -> dict:
        import copy

        from xprune.export.onnx_export import export_onnx
        from xprune.models import load_checkpoint
        base = export_onnx(det, out / "baseline.onnx", fold=True, log=log)  # the same passes: nothing to fold
        pruned = load_checkpoint(out / "pruned.pt", det.family, det.input_size)
        model = export_onnx(pruned, out / "model.onnx", fold=True, log=log)
        write_json(out / "model.onnx.json", model)
        record = {"baseline": {k: base[k] for k in ("nodes_after", "macs_after", "params")},
                  "model": {k: model[k] for k in ("nodes_after", "macs_after", "params", "removed_mac_fraction",
                                                   "dead_outputs")}}
        if silent:  # the unpruned weights with only the silent levels' part of the plan zeroed
            only = copy.deepcopy(det)
            only.zero_layers(split["silent_layers"])
            record["silent"] = {k: v for k, v in export_onnx(only, out / "silent.onnx", fold=True, log=log).items()
                                if k in ("macs_after", "removed_mac_fraction")}
        return record

    job.stage("export", files, export, inputs=["pruned.pt", "pruned.plan.json"])

    def bench() -> dict:
        from xprune.bench.latency import LatencyProtocol
        from xprune.bench.paired import add_speedups, paired_summary
        from xprune.bench.results import write_results
        from xprune.bench.run import BenchSettings, bench, open_target

        copy = out / "baseline-copy.onnx"  # the A/A control: the same bytes as a second target
        shutil.copyfile(out / "baseline.onnx", copy)
        paths = [out / "baseline.onnx", copy, out / "model.onnx"] + ([out / "silent.onnx"] if silent else [])
        targets = [open_target(p, threads=s.threads) for p in paths]
        for t, role in zip(targets, ("baseline", "aa-copy", "candidate", "silent-levels-only")):
            t.info["role"] = role
        protocol = LatencyProtocol(warmup_runs=10, warmup_s=1.0, runs=s.runs, min_s=0.0)
        held = searched_images(read_json(out / "pruned.plan.json", "plan"))
        settings = BenchSettings(protocol=protocol, interleave=True, data=Path(s.data),
                                 val_images=bench_val_limit(s.val_images, held), threads=s.threads, order_seed=0)
        doc = bench(targets, settings, command=command, log=log)
        add_speedups(doc)
        write_results(out / "bench.json", doc)
        copy.unlink()
        base, aa, model = doc["rows"][:3]
        record = {"latency": paired_summary(model, base), "aa_control": paired_summary(aa, base)}
        if silent:
            record["silent_latency"] = paired_summary(doc["rows"][3], base)
        return record

    job.stage("bench", ["bench.json"], bench, inputs=files)

    def verdict() -> dict:
        from xprune.bench.gate import judge_accuracy
        from xprune.bench.results import read_results
        doc = read_results(out / "bench.json")
        base = next(r for r in doc["rows"] if r.get("role") == "baseline")
        model = next(r for r in doc["rows"] if r.get("role") == "candidate")
        held = searched_images(read_json(out / "pruned.plan.json", "plan"))
        (base, model), images = reported_rows([base, model], held)  # none of the images the search chose on
        acc = judge_accuracy(base, model, "model.onnx", s.max_map_drop, 0.95, 1000, 0)
        return {"accuracy": dataclasses.asdict(acc), "images": images}

    job.stage("verdict", ["bench.json"], verdict, inputs=["bench.json", "pruned.plan.json"])

    if s.engine != "onnx":
        from xprune.runtime.registry import EngineOptions, engine_builder
        builder = engine_builder(s.engine)
        engine_file = "model" + builder.suffixes[0]

        def engine() -> dict:
            return {"engine": builder.build(out / "model.onnx", out / engine_file, EngineOptions(fp16=s.fp16))}
        job.stage("engine", [engine_file], engine, inputs=["model.onnx"])

    from xprune.auto.report import write_report
    return write_report(out)
