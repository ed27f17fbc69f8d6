"""Frontier v2: how much faster does a folded detector run after real recovery, for how much mAP?

Per model (`xprune.frontier.settings.MODELS`), criterion and removed-MAC target, the start is pruned with
`--target-macs` selection, fine-tuned once (distilled from the start, pruned layers held at zero) and evaluated on
val after each epoch of --evaluate-at; the control is the unpruned start through the same recovery. Three phases:

    python benchmarks/frontier.py train [--resume]   # every point; one file each under points/, resumable
    python benchmarks/frontier.py time               # latency of the finished points: on a quiet machine only
    python benchmarks/frontier.py summarize          # frontier.json, .md and .png from the files

`train --ray` runs the points as Ray Tune trials (extra `ray`; docs/scale-out.md): a local Ray by default,
--ray-address for a cluster, --cpus-per-trial each; the same files come out.

`all` runs the three in turn. The default grid is the first slice of the full one (SSDlite320 and YOLOv8n beyond
its silent level, attr and taylor, 10/20/30 %); --models, --criteria and --targets widen it. --quick is a tiny
configuration for CI (random weights, 128 px, minutes). Fine-tuning states live under --work (not in git), so a run
stopped mid-point continues from its last finished epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xprune.errors import XpruneError  # noqa: E402
from xprune.ray_trials import add_ray_options, ray_options  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "frontier"
WORK = Path.home() / ".cache" / "xprune" / "frontier"
PHASES = ("train", "time", "summarize", "all")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=PHASES)
    ap.add_argument("--out", default=str(RESULTS), help="folder of the point, timing and summary files")
    ap.add_argument("--work", default=str(WORK), help="folder of the fine-tuning states (large; not results)")
    ap.add_argument("--data", default=str(ROOT / "data" / "synth"),
                    help="COCO-format dataset with train, val and calib splits (`xprune data synth` writes one)")
    ap.add_argument("--resume", action="store_true", help="continue the points already under --out")
    ap.add_argument("--quick", action="store_true", help="a tiny configuration; the options below still apply")
    ap.add_argument("--models", type=_names)
    ap.add_argument("--criteria", type=_names)
    ap.add_argument("--targets", type=_floats, help="fractions of the start's MACs, e.g. 0.1,0.2,0.3")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--evaluate-at", type=_ints, help="epochs after which val mAP is measured, e.g. 0,2,5,10")
    ap.add_argument("--val-images", type=int)
    ap.add_argument("--train-images", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--no-distill", dest="distill", action="store_const", const=False)
    ap.add_argument("--trainer", choices=("xprune", "ultralytics"),
                    help="recovery through the project's own loop (default) or Ultralytics' trainer (YOLO models; "
                         "with --no-distill)")
    ap.add_argument("--stop-after", type=int, help="the epoch whose evaluation may stop a hopeless point (0: never)")
    ap.add_argument("--runs", type=int, help="interleaved timing rounds")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--resamples", type=int)
    add_ray_options(ap, "points of the train phase")
    return ap


def settings_from(args):
    from xprune.frontier.settings import FrontierSettings

    base = FrontierSettings.quick() if args.quick else FrontierSettings()
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(FrontierSettings)
             if getattr(args, f.name, None) is not None}
    return base.replace(**given).check()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    command = " ".join(["python", "benchmarks/frontier.py", *(argv if argv is not None else sys.argv[1:])])
    try:
        from xprune.frontier import run

        s = settings_from(args)
        out, work, data = Path(args.out), Path(args.work), Path(args.data)
        if not data.exists():
            raise XpruneError(f"dataset not found: {data} (write the built-in one with `xprune data synth --out "
                              f"{data}`)")
        if s.threads:
            import torch
            torch.set_num_threads(s.threads)
        if args.phase in ("train", "all"):
            opts = ray_options(args, "frontier")
            if opts is not None:
                run.train_on_ray(s, data, out, work, args.resume, opts, log)
            else:
                run.train(s, data, out, work, args.resume, log)
        if args.phase in ("time", "all"):
            run.time_models(s, data, out, work, log)
        path = run.summarize(s, data, out, command)
    except XpruneError as e:
        print(f"frontier: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("frontier: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    print(path.with_suffix(".md").read_text())
    print(f"-> {path}, {path.with_suffix('.md')}, {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
