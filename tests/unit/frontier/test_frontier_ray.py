"""The frontier's train phase as Ray Tune trials: the same point files as without Ray, the early stop decided by
Tune's scheduler with the same rule, and a trial killed mid-run restarted from its checkpoint to the same results."""

import contextlib
import importlib.util
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from xprune.errors import XpruneError
from xprune.frontier import run
from xprune.frontier.point import point_path
from xprune.frontier.settings import FrontierSettings

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="the ray extra is not installed")

# two pruned points, so two trials run side by side on two cores; eight epochs, so a kill after the first lands
# mid-run with seven to spare
SETTINGS = FrontierSettings(models=("yolov8n",), criteria=("l1", "random"), targets=(0.1,), size=64, weights="none",
                            val_images=4, calib_images=4, train_images=8, epochs=8, evaluate_at=(0, 1, 4, 8),
                            batch_size=2, stop_after=0, runs=3, warmup_runs=1, resamples=50)


def evaluations(out, pid):
    doc = json.loads(point_path(out, "yolov8n", pid).read_text())
    return doc["status"], [(e["epoch"], e["map"], e["map50"], e["matches"]) for e in doc["evaluations"]]


class Checkpoint:
    """What `settle` reads of a Tune checkpoint: its folder."""

    def __init__(self, folder: Path):
        self.folder = folder

    @contextlib.contextmanager
    def as_directory(self):
        yield str(self.folder)


def _running_doc(pid="attr-30"):
    return {"format": "x", "model": "m", "point": pid, "status": "running",
            "evaluations": [{"epoch": 0, "map": 0.3}, {"epoch": 2, "map": 0.25}],
            "finetune": {"history": [{"epoch": 1, "seconds": 2.0, "cpu_seconds": 3.0},
                                     {"epoch": 2, "seconds": 2.5, "cpu_seconds": 4.0}]}}


def test_the_scheduler_rule_is_the_points_own_and_a_stopped_point_is_closed_as_it_would_close_itself(tmp_path):
    from xprune.files import write_json
    from xprune.frontier.tune import POINT_FILE, settle, stop_record

    s = FrontierSettings(stop_after=2, hopeless=0.1)
    controls = {"m": {"evaluations": [{"epoch": 2, "map": 0.40}]}}
    config = {"model": "m", "criterion": "attr", "target": 0.3}
    assert stop_record(config, {"epoch": 2, "map": 0.28}, s, controls)["epochs_not_run"] == 8
    assert stop_record(config, {"epoch": 2, "map": 0.30}, s, controls) is None
    assert stop_record(config, {"epoch": 1, "map": 0.0}, s, controls) is None  # only at the stop epoch
    assert stop_record({**config, "criterion": None, "target": None}, {"epoch": 2, "map": 0.0}, s, controls) is None

    folder = tmp_path / "checkpoint"
    folder.mkdir()
    write_json(folder / POINT_FILE, _running_doc())
    checkpoint = Checkpoint(folder)
    doc = settle(checkpoint, {"epoch": 2, "map": 0.25}, None, config, s, controls, tmp_path / "out",
                 tmp_path / "work")
    assert doc["status"] == "stopped" and doc["stopped"]["after_epoch"] == 2 and doc["stopped"]["map"] == 0.25
    assert doc["finetune"]["history"][-1]["stopped"] and doc["finetune"]["cpu_seconds"] == 7.0
    assert json.loads(point_path(tmp_path / "out", "m", "attr-30").read_text()) == doc
    # a trial that ended neither finished nor stopped is not written as if it had
    with pytest.raises(XpruneError, match="without finishing or being stopped"):
        settle(checkpoint, {"epoch": 2, "map": 0.35}, None, config, s, controls, tmp_path / "out2",
               tmp_path / "work")
    assert not (tmp_path / "out2").exists()


def test_without_ray_the_ray_options_say_how_to_install(monkeypatch, tmp_path):
    import sys

    from xprune.frontier.tune import train_with_ray
    from xprune.ray_trials import NOT_INSTALLED, RayOptions

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(XpruneError, match="xprune\\[ray\\]") as e:
        train_with_ray(SETTINGS, [], tmp_path, tmp_path, tmp_path, False, RayOptions(), print)
    assert str(e.value) == NOT_INSTALLED


@needs_ray
def test_a_cluster_address_nobody_answers_at_is_one_line_not_minutes_of_retries(synth_data, tmp_path, capsys):
    import socket

    from benchmark_scripts import load_benchmark

    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    frontier = load_benchmark("frontier")
    for address, message in ((f"127.0.0.1:{port}", f"no Ray cluster answers at 127.0.0.1:{port}"),
                             ("somewhere", "is not host:port, ray://host:port or auto")):
        t0 = time.time()
        code = frontier.main(["train", "--quick", "--data", str(synth_data), "--out", str(tmp_path / "out"),
                              "--work", str(tmp_path / "w"), "--ray-address", address])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0] and time.time() - t0 < 60
    assert not (tmp_path / "out").exists()


def _kill_after_first_epoch(storage: Path, point: str, killed: list, stop: threading.Event) -> None:
    """Kill the trial of `point` (its process, SIGKILL) once it has reported its first epoch."""
    while not stop.is_set() and not killed:
        for results in storage.glob("*/*/result.json"):
            lines = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
            mine = [r for r in lines if r.get("point") == point]
            if mine and mine[-1]["epoch"] >= 1 and not mine[-1]["finished"]:
                os.kill(mine[-1]["pid"], signal.SIGKILL)
                killed.append((results, mine[-1]["pid"], mine[-1]["epoch"]))
                return
        time.sleep(0.05)


def train_plain(settings, data, out, work):
    """The run without Ray, on one thread as each trial runs."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run.train(settings, data, out, work, False, lambda line: None)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@needs_ray
@pytest.mark.slow
def test_the_scheduler_stops_a_point_as_the_run_without_ray_stops_it(synth_data, tmp_path, local_ray):
    from xprune.ray_trials import RayOptions

    # every pruned point is hopeless by this rule (the floor is above any mAP), so both runs stop it after epoch 1
    s = SETTINGS.replace(criteria=("l1",), epochs=3, evaluate_at=(0, 1, 3), stop_after=1, hopeless=-1.0)
    train_plain(s, synth_data, tmp_path / "plain", tmp_path / "work-plain")
    run.train_on_ray(s, synth_data, tmp_path / "ray-out", tmp_path / "work-ray", False,
                     RayOptions(cpus_per_trial=1, storage=tmp_path / "ray"), lambda line: None)
    for point in ("control", "l1-10"):
        assert evaluations(tmp_path / "ray-out", point) == evaluations(tmp_path / "plain", point)
        plain, ray = (json.loads(point_path(out, "yolov8n", point).read_text())
                      for out in (tmp_path / "plain", tmp_path / "ray-out"))
        assert ray.get("stopped") == plain.get("stopped")
        assert [h["loss"] for h in ray["finetune"]["history"]] == [h["loss"] for h in plain["finetune"]["history"]]
    assert plain["status"] == "stopped" and plain["stopped"]["epochs_not_run"] == 2


@needs_ray
@pytest.mark.slow
def test_a_trial_killed_mid_run_resumes_to_the_results_of_a_run_without_ray(synth_data, tmp_path, local_ray):
    from xprune.frontier.tune import train_with_ray
    from xprune.ray_trials import RayOptions

    train_plain(SETTINGS, synth_data, tmp_path / "plain", tmp_path / "work-plain")

    storage = tmp_path / "ray"
    killed: list = []
    stop = threading.Event()
    watcher = threading.Thread(target=_kill_after_first_epoch, args=(storage, "l1-10", killed, stop), daemon=True)
    watcher.start()
    opts = RayOptions(cpus_per_trial=1, max_failures=1, storage=storage)
    lines: list[str] = []
    try:
        run.train_on_ray(SETTINGS, synth_data, tmp_path / "ray-out", tmp_path / "work-ray", False, opts, lines.append)
    finally:
        stop.set()
    assert killed, "the trial finished before it could be killed"
    results, pid, epoch = killed[0]
    pids = {json.loads(line)["pid"] for line in results.read_text().splitlines() if line.strip()}
    assert len(pids) == 2 and pid in pids, "the killed trial was restarted in another process"
    for point in ("control", "l1-10", "random-10"):
        assert evaluations(tmp_path / "ray-out", point) == evaluations(tmp_path / "plain", point)
        assert evaluations(tmp_path / "ray-out", point)[0] == "done"
    # an earlier experiment under the same storage is continued only when asked
    with pytest.raises(XpruneError, match="--resume"):
        train_with_ray(SETTINGS, [("yolov8n", "l1", 0.1)], synth_data, tmp_path / "ray-out", tmp_path / "work-ray",
                       False, opts, lines.append)
