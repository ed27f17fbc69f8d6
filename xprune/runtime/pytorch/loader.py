"""Loads the model a TorchRunner runs: a Detector from an xprune checkpoint, when called."""

from __future__ import annotations

from pathlib import Path

from xprune.models.detector import Detector


class DetectorFromCheckpoint:
    """A callable that reads `path` with the adapter of `family` (the checkpoint alone does not say which)."""

    def __init__(self, path: str | Path, family: str):
        self.path, self.family = Path(path), family

    def __call__(self) -> Detector:
        from xprune.models import load_checkpoint

        return load_checkpoint(self.path, self.family)
