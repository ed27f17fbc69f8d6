"""The study: the paper's experiment (attribution vs L1 layer pruning across detectors) measured end to end.

- `run_study(StudySettings(...))` -> study.json (+ raw bench docs, scores) — `xprune.study.sweep`
- `write_report(study.json)` -> report.md + PNG figures, every number read from the JSON — `xprune.study.report`
- the Ultralytics peer export and its adapter runner — `xprune.study.peer`
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from xprune.study.report import write_report
    from xprune.study.sweep import StudySettings, run_study

__all__ = ["StudySettings", "run_study", "write_report"]


def __getattr__(name: str):  # heavy imports (torch, onnxruntime, matplotlib) only when used
    if name in ("StudySettings", "run_study"):
        from xprune.study import sweep
        return getattr(sweep, name)
    if name == "write_report":
        from xprune.study.report import write_report
        return write_report
    raise AttributeError(name)
