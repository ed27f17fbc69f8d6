"""Reproduce the study of "Explainability-Inspired Layer-Wise Pruning of Deep Neural Networks for Efficient Object
Detection" (attribution vs L1 layer pruning, Table 2 and Figs 1-3) with honest numbers.

    python benchmarks/reproduce.py                  # the committed study -> benchmarks/results/study/
    python benchmarks/reproduce.py --render-only    # redraw report.md and the PNGs from study.json
    python benchmarks/reproduce.py --render-only --out /tmp/report   # the committed study, drawn elsewhere
    python benchmarks/reproduce.py --quick --out /tmp/study   # a tiny smoke run (random-init YOLOv8n, 64 px)

The same run as `xprune study` (`xprune.study.options.run_and_report`), with the results and the dataset in this
checkout: the output goes to benchmarks/results/study, the synthetic dataset is generated in data/synth when it is
not there, and `--render-only` draws the committed study when OUT holds none.

Default run: every model with a reference checkpoint in xprune/reference/ (trained on the synthetic dataset by
benchmarks/train_reference.py) gives accuracy + speed rows at every rate of the paper's sweep (1, 2, 5, 10, 15,
20 %) for l1 and attr, on the whole val split: mAP in PyTorch and of every variant's exported file through ONNX
Runtime, each with a 95 % bootstrap interval over the images, and every ΔmAP with a paired interval against the
baseline. The paper's lightweight families without trained weights give speed-only rows (random init, 256 px,
rates 5 and 10 %). Backends: PyTorch eager CPU (zeroed, the paper's setting) and ONNX Runtime CPU (folded), every
variant of a model timed interleaved, each round in an order drawn from `--order-seed`; TensorRT is recorded as
unavailable unless `require_tensorrt()` passes. YOLOv8n is also compared with Ultralytics' own ONNX export of the
unpruned model. Writes study.json, bench/*.json (every latency sample and every round's order), scores/*.json,
report.md and the figures. How long it takes depends on the machine and the models; study.json records it
("seconds", and per model), and the progress lines say what runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xprune.errors import XpruneError  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "study"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from xprune.study.options import add_study_arguments
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(ap, str(RESULTS), str(ROOT / "data" / "synth"))
    return ap.parse_args(argv)


def main(argv: list[str] | None = None, log=lambda m: print(m, file=sys.stderr, flush=True)) -> int:
    args = parse_args(argv)
    args.command = " ".join(["python", "benchmarks/reproduce.py", *(sys.argv[1:] if argv is None else argv)])
    from xprune.models.yolo import quiet_ultralytics_env
    from xprune.study.options import run_and_report
    from xprune.study.settings import STUDY_FILE

    if args.render_only and args.study is None and not (Path(args.out) / STUDY_FILE).is_file():
        args.study = str(RESULTS / STUDY_FILE)
    quiet_ultralytics_env()
    try:
        study, report = run_and_report(args, log=log, synthesize_data=True)
    except XpruneError as e:
        print(f"reproduce: error: {e}", file=sys.stderr)
        return 2
    print(f"study: {study}\nreport: {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
