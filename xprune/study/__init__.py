"""The study: the paper's experiment (attribution vs L1 layer pruning across detectors) measured end to end.

- `StudySettings` and its presets (`paper`, `quick`, `demo`) — `xprune.study.settings`
- `run_study(settings)` -> study.json (+ raw bench docs, scores) — `xprune.study.sweep`, which runs
  `variants` (rankings, plans, distinct variants), `measure` (mAP in PyTorch and ONNX Runtime, complexity,
  export + fold), `intervals` (bootstrap intervals of every mAP and paired ΔmAP), `timing` (interleaved runs per
  backend, each round in a seeded order), `peer` (Ultralytics' own export), `rows` and `stats`; `dataset` (the
  val split's object sizes next to COCO's) and `threads` (torch's thread count kept) serve it
- `write_report(study.json)` -> report.md + PNG figures, every number read from the JSON — `xprune.study.report`,
  with `report_tables` (Table 2 per backend, the peer), `report_models` (per-model sections) and `report_format`
- what `xprune demo` leaves out on this machine (the JAX family without JAX) — `xprune.study.demo`
- the options `xprune study` and `benchmarks/reproduce.py` share — `xprune.study.options`
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from xprune.study.report import write_report
    from xprune.study.settings import StudySettings
    from xprune.study.sweep import run_study

__all__ = ["StudySettings", "run_study", "write_report"]


def __getattr__(name: str):  # heavy imports (torch, onnxruntime, matplotlib) only when used
    if name == "StudySettings":
        from xprune.study.settings import StudySettings
        return StudySettings
    if name == "run_study":
        from xprune.study.sweep import run_study
        return run_study
    if name == "write_report":
        from xprune.study.report import write_report
        return write_report
    raise AttributeError(name)
