"""Resuming, one way for every stage: an output (or an unfinished state) is reused only by a run whose inputs are the
same, and the inputs are named by one record, the stamp, written beside it.

An input identity is plain JSON: the settings that decide the result, and the SHA-256 of every input file or model
state. A stage claims its stamp before it works: the same identity recorded means the output or state there is its
own (resume); another identity is refused in one line (or forgotten, for outputs that are cheap to rebuild); none
means a fresh start. When the stage is complete it releases its stamp and states, so nothing is left to resume.

    identity = input_identity({"epochs": 5, "lr": 5e-4}, files={"weights": "pruned.pt"})
    stamp = Stamp(out.with_suffix(".state.json"), identity, "fine-tuning state")
    resumed = stamp.claim()          # XpruneError when another run's state is there
    ...                              # work, checkpointing every epoch
    stamp.release(state_file)        # done: state and stamp removed
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from xprune.errors import XpruneError
from xprune.files import file_sha256, write_json


def plain(doc: Any) -> Any:
    """doc as it reads back from a JSON file (tuples become lists, paths strings)."""
    return json.loads(json.dumps(doc, default=str))


def json_sha256(doc: Any) -> str:
    return hashlib.sha256(json.dumps(plain(doc), sort_keys=True).encode()).hexdigest()


def arrays_sha256(named: Iterable[tuple[str, Any]]) -> str:
    """SHA-256 of named arrays (a model's state dict, a parameter tree's leaves), names and bytes in order."""
    digest = hashlib.sha256()
    for name, value in named:
        digest.update(str(name).encode())
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().contiguous().numpy()
        digest.update(np.ascontiguousarray(np.asarray(value)).tobytes())
    return digest.hexdigest()


def input_identity(settings: Mapping[str, Any], files: Mapping[str, str | os.PathLike | None] | None = None,
                   **digests: str) -> dict:
    """The identity of a stage's inputs: its deciding settings, the SHA-256 of each input file (None: no file), and
    any digests the caller computed (`arrays_sha256` of a model in memory, `json_sha256` of a document)."""
    return plain({"settings": dict(settings),
                  "files": {k: file_sha256(p) if p is not None else None for k, p in (files or {}).items()},
                  **digests})


def first_difference(old: Any, new: Any, prefix: str = "") -> str | None:
    """The first key path at which two identities differ ('settings.lr'), '' when they differ at the top, None when
    they are equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            if key not in old or key not in new:
                return f"{prefix}{key}"
            found = first_difference(old[key], new[key], f"{prefix}{key}.")
            if found is not None:
                return found
        return None
    return None if old == new else prefix.rstrip(".")


class Stamp:
    """The record of which inputs made the output or state beside it."""

    def __init__(self, path: str | os.PathLike, identity: Mapping[str, Any], what: str):
        self.path, self.identity, self.what = Path(path), plain(dict(identity)), what

    def recorded(self) -> dict | None:
        """The identity recorded there (None: no record, or one that cannot be read)."""
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return doc if isinstance(doc, dict) else None

    def matches(self) -> bool:
        return self.recorded() == self.identity

    def claim(self, resumable: Iterable[str | os.PathLike] = (), refuse: bool = True) -> bool:
        """Before the stage works. True when a record of the same inputs is there and so is every `resumable` file:
        the stage continues from them. A record of other inputs is refused in one line (`refuse`), or forgotten:
        the stage starts over. This run's identity is recorded either way."""
        resumable = list(resumable)
        recorded = self.recorded()
        present = any(Path(p).exists() for p in resumable)
        if recorded is not None and recorded != self.identity and (present or not resumable):
            if refuse:
                where = first_difference(recorded, self.identity)
                raise XpruneError(f"{self.path.parent} holds the {self.what} of another run"
                                  f"{f' (its {where} differs)' if where else ''}; delete it or use another output")
            recorded = None
        if recorded is None and present and refuse:
            raise XpruneError(f"{self.path.parent} holds a {self.what} with no record of its inputs; delete it to "
                              "start over")
        write_json(self.path, self.identity)
        return recorded is not None and all(Path(p).exists() for p in resumable)

    def release(self, *paths: str | os.PathLike) -> None:
        """The stage is complete: its states and this record go, so nothing is left to resume."""
        for p in (*paths, self.path):
            Path(p).unlink(missing_ok=True)


__all__ = ["Stamp", "arrays_sha256", "first_difference", "input_identity", "json_sha256", "plain"]
