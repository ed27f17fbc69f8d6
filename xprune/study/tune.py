"""The study's models as Ray Tune trials (extra `ray`): each trial measures one model (`model.measure_model`: scores,
plans, variants, their mAP on every runtime, exports, intervals) on whatever node Ray gives it, and hands the driver
a checkpoint: what it measured, its exported files and its scores. The driver times every model afterwards, one
after another, in its own process (`model.finish_model`), so latency is never measured beside a trial; study.json is
the same as without Ray.

A trial that fails is run again from the start (`max_failures`): measuring a model takes minutes, not hours, so it
reports no checkpoint on the way. An experiment stopped as a whole continues with `resume` (`Tuner.restore`); the
models it finished are not measured again.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from xprune.errors import XpruneError
from xprune.files import display_path
from xprune.ray_trials import RayOptions, first_error_line, ray_tune, start_ray
from xprune.study.model import MeasuredModel, load_model, measure_model
from xprune.study.settings import StudySettings
from xprune.study.variants import Variant

Log = Callable[[str], None]

MEASURED = "measured.pt"  # a checkpoint's record of the model; its exports in onnx/, its scores in scores/


def measure_trial(trial_config: dict[str, Any]) -> None:
    """One model as a Tune function trainable: measure it, report one result with a checkpoint of it all."""
    tune = ray_tune()
    config = trial_config["model"]
    torch.set_num_threads(config["threads"])
    settings: StudySettings = config["settings"]
    with tempfile.TemporaryDirectory(prefix="xprune-study-trial-") as d:
        folder = Path(d)
        m = measure_model(config["name"], Path(config["data"]), folder / "onnx", folder / "scores", settings,
                          lambda line: print(line, flush=True))
        torch.save(shipped(m), folder / MEASURED)
        tune.report({"model": m.name, "seconds": m.seconds}, checkpoint=tune.Checkpoint.from_directory(d))


def shipped(m: MeasuredModel) -> dict:
    """What the driver needs of a measured model, without the models in memory (it rebuilds them from the weights
    and each variant's layers)."""
    return {"name": m.name, "weights": m.weights, "entry": m.entry, "seconds": m.seconds,
            "variants": [{"id": v.id, "method": v.method, "layers": list(v.layers), "uses": v.uses, "info": v.info,
                          "matches": v.matches, "onnx": v.onnx.name if v.onnx else None,
                          "onnx_zeroed": v.onnx_zeroed.name if v.onnx_zeroed else None} for v in m.variants]}


def received(record: dict, folder: Path, data: Path, work: Path, scores_dir: Path,
             settings: StudySettings) -> MeasuredModel:
    """A trial's checkpoint as the model it measured: the weights loaded here again (refused if they are not the
    ones the trial measured), each variant zeroed as it was, its exports and scores copied to `work` and
    `scores_dir`."""
    from xprune.data.coco import CocoDetectionSet
    from xprune.study.intervals import Intervals

    name = record["name"]
    det, weights = load_model(name, data, settings)
    if weights.get("sha256") != record["weights"].get("sha256"):
        raise XpruneError(f"{name}: the trial measured other weights than the ones here; measure it again")
    work.mkdir(parents=True, exist_ok=True)
    for f in (folder / "onnx").glob("*.onnx"):
        shutil.copyfile(f, work / f.name)
    scores_dir.mkdir(parents=True, exist_ok=True)
    for f in (folder / "scores").glob("*.json"):
        shutil.copyfile(f, scores_dir / f.name)
    variants = []
    for v in record["variants"]:
        model = det if not v["layers"] else copy.deepcopy(det)
        if v["layers"]:
            model.zero_layers(v["layers"])
        variants.append(Variant(v["id"], v["method"], tuple(v["layers"]), model, [tuple(u) for u in v["uses"]],
                                v["info"], work / v["onnx"] if v["onnx"] else None,
                                work / v["onnx_zeroed"] if v["onnx_zeroed"] else None, v["matches"]))
    accuracy = weights["accuracy"]
    val = CocoDetectionSet.from_folder(data, "val", det.input_size, limit=settings.val_images) if accuracy else None
    intervals = Intervals(settings.bootstrap_resamples, settings.confidence) if accuracy else None
    return MeasuredModel(name, det, weights, val, variants, intervals, record["entry"], record["seconds"])


def measure_on_ray(names: list[str], data: Path, work: Callable[[str], Path], settings: StudySettings,
                   opts: RayOptions, log: Log) -> dict[str, MeasuredModel]:
    """Measure `names` as Tune trials; returns each model as measured, its exports under `work(model)`."""
    from xprune.resume import json_sha256

    tune = ray_tune()
    start_ray(opts, log)
    out = Path(settings.out)
    from xprune.reference import cache_dir
    storage = (opts.storage or cache_dir() / "ray").resolve()  # beside the results, not in them
    # one experiment per study (its settings and models): a rerun of the same command continues it
    where = storage / f"{opts.name}-{json_sha256({'settings': settings.describe(), 'models': names})[:8]}"
    trainable = tune.with_resources(measure_trial, {"cpu": opts.cpus_per_trial})
    if tune.Tuner.can_restore(str(where)):
        if not settings.resume:
            raise XpruneError(f"{display_path(where)} holds an earlier Ray run: pass --resume to continue it, or "
                              "delete it")
        log(f"Ray: continuing {display_path(where)}")
        tuner = tune.Tuner.restore(str(where), trainable, resume_errored=True)
    else:
        configs = [{"name": n, "settings": settings, "data": str(data.resolve()), "threads": opts.cpus_per_trial}
                   for n in names]
        tuner = tune.Tuner(
            trainable, param_space={"model": tune.grid_search(configs)},
            tune_config=tune.TuneConfig(reuse_actors=False, trial_name_creator=trial_name,
                                        trial_dirname_creator=trial_name),
            run_config=tune.RunConfig(name=where.name, storage_path=str(storage), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=opts.max_failures)))
    log(f"Ray: measuring {len(names)} models as trials; experiment under {display_path(where)}")
    measured, failed = {}, []
    for result in tuner.fit():
        name = result.config["model"]["name"]
        if result.error is not None or result.checkpoint is None:
            failed.append(f"{name}: {first_error_line(result.error)}")
            continue
        with result.checkpoint.as_directory() as d:
            record = torch.load(Path(d) / MEASURED, map_location="cpu", weights_only=False)
            measured[name] = received(record, Path(d), data, work(name), out / "scores", settings)
    if failed:
        raise XpruneError(f"{len(failed)} trial(s) failed ({'; '.join(failed)}); rerun with --resume to continue")
    return measured


def trial_name(trial) -> str:
    return trial.config["model"]["name"]
