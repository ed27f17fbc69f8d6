"""The frontier's three phases: `train` (every point of the grid, resumable point by point), `time` (the finished
points' latency, on a quiet machine) and `summarize` (frontier.json from the files; frontier.md and .png from it)."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from xprune.errors import XpruneError
from xprune.files import display_path, write_json, write_with
from xprune.frontier.point import point_path, read_point, run_point
from xprune.frontier.settings import FrontierSettings, grid, point_id
from xprune.frontier.start import ModelStart, prepare
from xprune.frontier.summary import SUMMARY_FORMAT, summarize_model
from xprune.frontier.timing import time_model

Log = Callable[[str], None]


def pending(s: FrontierSettings, out: Path) -> list[tuple[str, str | None, float | None]]:
    """The grid's points with no finished file under `out`."""
    left = []
    for model, criterion, target in grid(s):
        doc = read_point(point_path(out, model, point_id(criterion, target)))
        if doc is None or doc["status"] == "running":
            left.append((model, criterion, target))
    return left


def estimate_seconds(start: ModelStart, s: FrontierSettings, points: int) -> float:
    """Recovery time of `points` points of this model: a few timed training steps (with distillation) times the
    epochs, plus the evaluations."""
    import copy

    from xprune.evaluate.coco_map import evaluate_map
    from xprune.prune.finetune import FinetuneSettings
    from xprune.train.distill import Distiller
    from xprune.train.loop import epoch_seconds

    if not s.epochs:
        return 0.0
    det = copy.deepcopy(start.detector)
    ft = FinetuneSettings(epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, seed=s.seed).for_detector(det)
    distiller = Distiller(start.detector, ft.distill_weight) if s.distill else None
    epoch = epoch_seconds(det, start.train, ft.train_settings(), distiller)
    t0 = time.perf_counter()
    evaluate_map(det, start.val, limit=min(16, len(start.val)))
    evaluation = (time.perf_counter() - t0) * len(start.val) / min(16, len(start.val))
    return points * (s.epochs * epoch + len(s.evaluate_at) * evaluation)


def train(s: FrontierSettings, data: Path, out: Path, work: Path, resume: bool, log: Log) -> None:
    left = pending(s, out)
    log(f"frontier: {len(grid(s)) - len(left)} of {len(grid(s))} points finished under {display_path(out)}")
    for model in dict.fromkeys(m for m, _, _ in left):
        start = prepare(model, s, data, log)
        mine = [(c, t) for m, c, t in left if m == model]
        seconds = estimate_seconds(start, s, len(mine))
        log(f"[{model}] {len(mine)} points to run; estimated {seconds / 3600:.1f} h on this machine "
            f"({s.epochs} epochs each on {len(start.train)} images, {len(s.evaluate_at)} evaluations)")
        for criterion, target in mine:
            t0 = time.time()
            doc = run_point(start, criterion, target, s, out, work, resume, log)
            log(f"[{model}] {doc['point']}: {doc['status']} in {(time.time() - t0) / 60:.1f} min")
            resume = True  # the points this run finished are this run's


def train_on_ray(s: FrontierSettings, data: Path, out: Path, work: Path, resume: bool, opts, log: Log) -> None:
    """The train phase as Ray Tune trials (`xprune.frontier.tune`): the same point files, the same early stop."""
    from xprune.frontier.tune import train_with_ray
    from xprune.ray_trials import start_ray

    if s.trainer == "ultralytics":  # a trial's checkpoint carries one state file, not Ultralytics' run folder
        raise XpruneError("--trainer ultralytics runs without --ray (a Ray trial cannot yet resume its run folder)")
    start_ray(opts, log)  # first: a cluster that does not answer is the only line
    left = pending(s, out)
    log(f"frontier: {len(grid(s)) - len(left)} of {len(grid(s))} points finished under {display_path(out)}")
    t0 = time.time()
    train_with_ray(s, left, data, out, work, resume, opts, log)
    log(f"frontier: {len(left)} points through Ray in {(time.time() - t0) / 60:.1f} min")


def time_models(s: FrontierSettings, data: Path, out: Path, work: Path, log: Log) -> None:
    for model in s.models:
        start = prepare(model, s, data, log)
        time_model(start, s, out, work, log)


def summarize(s: FrontierSettings, data: Path, out: Path, command: str) -> Path:
    """frontier.json from every point and timing file under `out`, then frontier.md and frontier.png from it."""
    from xprune.frontier.render import render_markdown, render_plot

    planned = grid(s)
    left = pending(s, out)
    doc = {"format": SUMMARY_FORMAT, "command": command,
           "settings": {**asdict(s), "data": display_path(data)}, "planned": len(planned),
           "measured": len(planned) - len(left),
           "to_come": [f"{m} {point_id(c, t)}" for m, c, t in left],
           "models": [summarize_model(out, m, s.resamples, s.seed) for m in s.models]}
    path = out / "frontier.json"
    write_json(path, doc)
    write_with(path.with_suffix(".md"), lambda tmp: tmp.write_text(render_markdown(doc) + "\n"))
    render_plot(doc, path.with_suffix(".png"))
    return path
