"""What the frontier and the study share to run their points as Ray Tune trials (extra `ray`): the options a user
gives (`--ray`, `--ray-address`, `--cpus-per-trial`, ...), the check that Ray is there, and starting it.

A trial's torch runs on as many threads as the trial has CPUs: results that depend on the thread count (the order
of floating-point sums in training) then match a run without Ray on the same count. Latency is never measured in
a trial: the stages time their results afterwards, in one process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from xprune.errors import XpruneError

NOT_INSTALLED = 'Ray Tune is not installed; pip install "xprune[ray]"'


def ray_tune():
    """`ray.tune`, or one line naming the extra."""
    try:
        from ray import tune
    except ImportError:
        raise XpruneError(NOT_INSTALLED) from None
    return tune


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # a running cluster ("auto", "ray://host:10001"); None: a local Ray for this run
    cpus_per_trial: int = 2  # also the trial's torch threads
    max_failures: int = 2  # restarts of a failed trial (from its last checkpoint where it reports them)
    storage: Path | None = None  # Tune's experiments (trials, checkpoints); None: the stage's default
    name: str = "frontier"

    def __post_init__(self) -> None:
        if self.cpus_per_trial < 1 or self.max_failures < 0:
            raise XpruneError("--cpus-per-trial must be >= 1 and --max-failures >= 0")

    def describe(self) -> dict:
        """What a results file records of how its points ran."""
        import ray

        return {"ray": ray.__version__, "address": self.address or "local", "cpus_per_trial": self.cpus_per_trial,
                "max_failures": self.max_failures}


def start_ray(opts: RayOptions, log: Callable[[str], None]):
    """Ray itself, started (a local instance) or connected (`opts.address`) unless it already is."""
    ray_tune()
    import ray

    if not ray.is_initialized():
        if opts.address is not None:
            check_reachable(opts.address)
        try:
            ray.init(address=opts.address, include_dashboard=False, log_to_driver=True)
        except ConnectionError as e:  # "auto" with no cluster running here
            raise XpruneError(f"no Ray cluster at {opts.address}: {first_error_line(e)}") from None
        log(f"Ray {ray.__version__}: {ray.cluster_resources().get('CPU', 0):g} CPUs, {opts.cpus_per_trial} per "
            "trial")
    return ray


def check_reachable(address: str, seconds: float = 10.0) -> None:
    """One line when nothing answers at a cluster's host:port (Ray itself retries for minutes before it gives up)."""
    import socket

    if address == "auto":
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise XpruneError(f"--ray-address {address} is not host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
    except OSError as e:
        raise XpruneError(f"no Ray cluster answers at {address} ({e.strerror or e})") from None


def first_error_line(error: BaseException | None) -> str:
    """The line of a trial's error that says what went wrong (Tune wraps it in its own traceback)."""
    if error is None:
        return ""
    text = str(error).strip().splitlines()
    return next((line for line in reversed(text) if "Error" in line), text[-1] if text else type(error).__name__)


def add_ray_options(ap, what: str) -> None:
    """The command-line options of a stage that can run its `what` as Ray Tune trials."""
    group = ap.add_argument_group(f"Ray Tune (the {what} as trials; extra ray; docs/scale-out.md)")
    group.add_argument("--ray", action="store_true", help=f"run the {what} as Ray Tune trials on a local Ray")
    group.add_argument("--ray-address", help="a running Ray cluster instead (implies --ray)")
    group.add_argument("--cpus-per-trial", type=int, default=2, help="CPUs (and torch threads) per trial")
    group.add_argument("--max-failures", type=int, default=2, help="restarts of a failed trial")
    group.add_argument("--ray-storage", help="where Tune keeps its experiments")


def ray_options(args, name: str) -> RayOptions | None:
    """The options `add_ray_options` parsed, or None when the run is not on Ray."""
    if not (getattr(args, "ray", False) or getattr(args, "ray_address", None)):
        return None
    return RayOptions(address=args.ray_address, cpus_per_trial=args.cpus_per_trial, max_failures=args.max_failures,
                      storage=Path(args.ray_storage) if args.ray_storage else None, name=name)
