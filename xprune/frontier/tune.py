"""The frontier's `train` phase as Ray Tune trials (extra `ray`): one trial per point, on a local Ray by default or on
a cluster (`address`), each trial with its own CPUs.

A trial runs `run_point` in a folder of its own and, each time the point's file and its fine-tuning state agree
(after the zeroed evaluation, after every epoch, at the end), reports the latest mAP with a Tune checkpoint holding
both files. A trial that dies (a node lost, a process killed) is restarted by Tune from its last checkpoint, up to
`max_failures` times; an experiment stopped as a whole continues with `resume` (`Tuner.restore`). The early stop is
Tune's: `BudgetStop`, a scheduler that ends a point whose mAP after `stop_after` epochs is hopeless by the rule the
run without Ray applies (`point.early_stop`). ASHA is not used: it keeps the best fraction of trials at each rung,
while a frontier wants every point that can still come back within the budget, however it ranks.

The controls run first, in an experiment of their own, because the rule compares each point with its model's
control at the same epoch. When a trial ends, the driver writes its last checkpoint's files where a run without Ray
writes them (`points/<model>/<point>.json` under `out`, the state under `work`), closing a point the scheduler
stopped as the point itself would have (`point.finish`). The results files are the same with or without Ray.
Latency is never measured in trials: the `time` phase runs afterwards, in one process, on a quiet machine.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from xprune.errors import XpruneError
from xprune.files import display_path, read_json, write_json
from xprune.ray_trials import RayOptions, first_error_line, ray_tune, start_ray
from xprune.frontier.point import (early_stop, finish, identity, point_path, read_point, run_point,
                                   state_path)
from xprune.frontier.settings import CONTROL, FrontierSettings, point_id

try:  # the scheduler and the callback are Tune classes; without Ray this module still imports, and its entry points
    #    say what to install
    from ray.tune import Callback
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler
except ImportError:
    Callback = FIFOScheduler = TrialScheduler = object  # type: ignore[assignment,misc]

Log = Callable[[str], None]

# a checkpoint's files: the point's document, its fine-tuning state and the state's record of its inputs
POINT_FILE, STATE_FILE, STAMP_FILE = "point.json", "state.pt", "state.json"


# --- the trial ------------------------------------------------------------------------------------------------------

def point_trial(trial_config: dict[str, Any]) -> None:
    """One point (`trial_config["point"]`, from `config_of`) as a Tune function trainable: continue from Tune's
    checkpoint when there is one, report one result (with a checkpoint) whenever the point's files agree."""
    import torch

    tune = ray_tune()
    config = trial_config["point"]
    torch.set_num_threads(config["threads"])
    model, pid = config["model"], point_id(config["criterion"], config["target"])
    with tempfile.TemporaryDirectory(prefix="xprune-trial-") as local:
        out, work = Path(local) / "out", Path(local) / "work"
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                _place(Path(d), point_path(out, model, pid), state_path(work, model, pid))
        _run_trial(tune, config, out, work)


def _run_trial(tune, config: dict[str, Any], out: Path, work: Path) -> None:
    """`run_point` in the trial's folders (`out`, `work`), telling Tune each time its files agree."""
    from xprune.frontier.start import prepare

    s: FrontierSettings = config["settings"]
    model, criterion, target = config["model"], config["criterion"], config["target"]
    pid = point_id(criterion, target)

    def log(line: str) -> None:
        print(line, flush=True)

    start = prepare(model, s, Path(config["data"]), log)
    earlier = config.get("identity")
    if earlier is not None:  # a file a run without Ray left half-done: the same inputs, or one line
        from xprune.resume import first_difference
        where = first_difference(earlier, identity(start, s, criterion, target))
        if where is not None:
            raise XpruneError(f"{model}/{pid} was started with other inputs ({where or 'all'} differs); delete "
                              "its point file or use another --out")

    def saved(doc: dict, state: Path | None) -> None:
        with tempfile.TemporaryDirectory(prefix="xprune-checkpoint-") as d:
            write_json(Path(d) / POINT_FILE, doc)
            if state is not None:
                shutil.copyfile(state, Path(d) / STATE_FILE)
                shutil.copyfile(state.with_suffix(".json"), Path(d) / STAMP_FILE)
            tune.report(result_of(doc), checkpoint=tune.Checkpoint.from_directory(d))

    run_point(start, criterion, target, s, out, work, resume=True, log=log, stop_early=False, saved=saved)


def result_of(doc: dict) -> dict:
    """What a trial reports: the epochs trained, and the mAP when the point was evaluated at that epoch."""
    epoch = len((doc.get("finetune") or {}).get("history") or [])
    last = max(doc["evaluations"], key=lambda e: e["epoch"], default=None)
    result: dict[str, Any] = {"epoch": epoch, "point": doc["point"], "finished": doc["status"] != "running"}
    if last is not None and last["epoch"] == epoch:
        result["map"] = last["map"]
    return result


def _place(checkpoint: Path, point: Path | None, state: Path) -> None:
    """A checkpoint's files where `run_point` reads them (the state and its record only, without `point`)."""
    if point is not None:
        point.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(checkpoint / POINT_FILE, point)
    if (checkpoint / STATE_FILE).exists():
        state.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(checkpoint / STAMP_FILE, state.with_suffix(".json"))
        shutil.copyfile(checkpoint / STATE_FILE, state)


def trial_name(trial) -> str:
    """A trial's name and folder: the point's ("yolov8n-beyond-silent-attr-10")."""
    c = trial.config["point"]
    return f"{c['model']}-{point_id(c['criterion'], c['target'])}"


# --- the scheduler ---------------------------------------------------------------------------------------------------

class BudgetStop(FIFOScheduler):
    """A Tune scheduler: first in, first out, and a point whose reported mAP at epoch `stop_after` is hopeless
    against its model's control (`controls`, the control point files) stops there. Tune pickles it with the
    experiment, so a restored run stops by the same controls."""

    def __init__(self, s: FrontierSettings, controls: dict[str, dict | None]):
        super().__init__()
        self.settings, self.controls = s, controls

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if "map" in result and stop_record(trial.config["point"], result, self.settings, self.controls) is not None:
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE


def stop_record(config: dict, result: dict, s: FrontierSettings, controls: dict[str, dict | None]) -> dict | None:
    doc = {"point": point_id(config["criterion"], config["target"])}
    return early_stop(doc, {"epoch": result["epoch"], "map": result["map"]}, controls.get(config["model"]), s)


class Settle(Callback):
    """Writes each point's files as soon as its trial ends, so a long run's finished points are there to read (and
    commit) while the others train."""

    def __init__(self, s: FrontierSettings, controls: dict[str, dict | None], out: Path, work: Path, log: Log):
        self.args = (s, controls, out, work)
        self.log = log

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        config = trial.config["point"]
        if trial.checkpoint is None:
            return
        try:
            doc = settle(trial.checkpoint, trial.last_result or {}, None, config, *self.args)
        except XpruneError as e:
            self.log(f"[{config['model']}] {point_id(config['criterion'], config['target'])}: {e}")
            return
        where = display_path(point_path(self.args[2], config["model"], doc["point"]))
        self.log(f"[{config['model']}] {doc['point']}: {doc['status']} -> {where}")


# --- the driver ------------------------------------------------------------------------------------------------------

def train_with_ray(s: FrontierSettings, todo: list[tuple[str, str | None, float | None]], data: Path, out: Path,
                   work: Path, resume: bool, opts: RayOptions, log: Log) -> None:
    """Run the points `todo` as Tune trials, the controls first; write every finished point's files under `out`
    and `work`. One line and XpruneError when a trial failed for good."""
    tune = ray_tune()
    start_ray(opts, log)
    storage = (opts.storage or work / "ray").resolve()
    log(f"frontier on Ray: experiments under {display_path(storage)}")
    failed: list[str] = []
    for stage, points in (("controls", [p for p in todo if p[1] is None]),
                          ("points", [p for p in todo if p[1] is not None])):
        if not points:
            continue
        controls = {m: read_point(point_path(out, m, CONTROL)) for m in s.models}
        configs = [config_of(s, m, c, t, data, out, opts) for m, c, t in points]
        trainable = tune.with_resources(point_trial, {"cpu": opts.cpus_per_trial})
        where = storage / experiment_name(opts.name, stage, s)
        if tune.Tuner.can_restore(str(where)):
            if not resume:
                raise XpruneError(f"{display_path(where)} holds an earlier Ray run: pass --resume to continue it, "
                                  "or delete it")
            log(f"Ray: continuing {display_path(where)}")
            # the scheduler and the callbacks come back with the experiment
            tuner = tune.Tuner.restore(str(where), trainable, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable, param_space={"point": tune.grid_search(configs)},
                tune_config=tune.TuneConfig(scheduler=BudgetStop(s, controls), reuse_actors=False,
                                            trial_name_creator=trial_name, trial_dirname_creator=trial_name),
                run_config=tune.RunConfig(
                    name=where.name, storage_path=str(storage), verbose=0,
                    callbacks=[Settle(s, controls, out, work, log)],
                    failure_config=tune.FailureConfig(max_failures=opts.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
        log(f"Ray: {len(points)} {stage} as trials")
        for result in tuner.fit():  # `Settle` wrote the files of every trial that ended; these are the others
            config = result.config["point"]
            name = f"{config['model']}/{point_id(config['criterion'], config['target'])}"
            if result.error is not None:
                if result.checkpoint is not None:  # the state it reached, for --resume with or without Ray
                    settle(result.checkpoint, result.metrics or {}, result.error, config, s, controls, out, work)
                failed.append(f"{name}: {first_error_line(result.error)}")
                continue
            doc = read_point(point_path(out, config["model"], point_id(config["criterion"], config["target"])))
            if doc is None or doc["status"] == "running":
                failed.append(f"{name}: its trial ended without finishing or being stopped")
    if failed:
        raise XpruneError(f"{len(failed)} trial(s) failed ({'; '.join(failed)}); rerun with --resume to continue")


def experiment_name(name: str, stage: str, s: FrontierSettings) -> str:
    """One experiment per stage of one grid ("frontier-points-1a2b3c4d"): a rerun of the same command continues it,
    another grid (other models, criteria, targets or recipe) gets its own."""
    from xprune.resume import json_sha256

    grid = {"models": s.models, "criteria": s.criteria, "targets": s.targets, "recipe": s.recipe()}
    return f"{name}-{stage}-{json_sha256(grid)[:8]}"


def config_of(s: FrontierSettings, model: str, criterion: str | None, target: float | None, data: Path, out: Path,
              opts: RayOptions) -> dict:
    existing = read_point(point_path(out, model, point_id(criterion, target)))
    return {"model": model, "criterion": criterion, "target": target, "settings": s, "data": str(data.resolve()),
            "threads": opts.cpus_per_trial, "identity": existing["identity"] if existing else None}


def settle(checkpoint, metrics: dict, error: BaseException | None, config: dict, s: FrontierSettings,
           controls: dict[str, dict | None], out: Path, work: Path) -> dict:
    """A trial's last checkpoint written where a run without Ray writes the point (`metrics`: its last result;
    `error`: why it failed for good, if it did); a point the scheduler stopped is closed with the record the point
    would have written itself."""
    model, pid = config["model"], point_id(config["criterion"], config["target"])
    with checkpoint.as_directory() as d:
        doc = read_json(Path(d) / POINT_FILE, "frontier checkpoint")
        _place(Path(d), None, state_path(work, model, pid))
    if doc["status"] == "running" and error is None:
        stop = None
        if "map" in metrics:
            stop = stop_record(config, metrics, s, controls)
        if stop is None:
            raise XpruneError(f"{model}/{pid}: the trial ended without finishing or being stopped")
        finish(doc, stop)
    write_json(point_path(out, model, pid), doc)
    return doc
