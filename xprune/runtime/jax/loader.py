"""Loads the model a JaxRunner runs: a JaxDetector from an xprune JAX checkpoint, when called."""

from __future__ import annotations

from pathlib import Path

from xprune.errors import XpruneError
from xprune.models.jax.detector import JaxDetector


class DetectorFromCheckpoint:
    """A callable that reads `path` with its family's adapter: the one the checkpoint names, which must be
    `family` when that is given."""

    def __init__(self, path: str | Path, family: str | None = None):
        self.path, self.family = Path(path), family

    def __call__(self) -> JaxDetector:
        from xprune.models.jax.checkpoint import read_checkpoint
        from xprune.models.zoo import family, load_checkpoint

        name = self.family or str(read_checkpoint(self.path).get("family"))
        if family(name).framework != "jax":
            raise XpruneError(f"{self.path}: {name} is not a JAX family; its checkpoints are .pt files")
        det = load_checkpoint(self.path, name)
        assert isinstance(det, JaxDetector)
        return det
