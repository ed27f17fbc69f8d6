"""Resuming a study: the models an earlier run of the same study measured are kept, the others run.

A study of every family takes hours on a small CPU (the ResNet-50 families most of it), and `run_study` rewrites
study.json after each model. With `resume`, a new run reads that file back and keeps every model entry measured
under the same protocol, on the same dataset and machine, with the weights the model has now; a model whose weights
changed since (a retrained reference) is measured again. A file measured under another protocol, dataset or
machine is refused rather than mixed in: its rows would not compare with the new ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from xprune.errors import XpruneError
from xprune.files import display_path, read_json
from xprune.resume import first_difference, plain
from xprune.study.settings import FORMAT, Log

# settings that do not change what a model's rows measure; each model's weights are checked by their SHA-256
UNCOMPARED_SETTINGS = ("out", "models", "weights", "command", "progress", "keep_onnx", "resume")
# the machine and its software; the timestamp and thread count are checked elsewhere or may differ
COMPARED_ENVIRONMENT = ("python", "platform", "cpu", "cpu_count", "libraries")
COMPARED_HEADER = ("dataset", "dataset_stats", "threads", "backends")


def _protocol(doc: dict) -> dict:
    # a setting unset (None) is one an older study did not have yet: the same protocol
    return {k: v for k, v in doc["settings"].items() if k not in UNCOMPARED_SETTINGS and v is not None}


def _header(doc: dict) -> dict:
    return {k: doc[k] for k in COMPARED_HEADER}


def _machine(doc: dict) -> dict:
    return {k: doc["environment"].get(k) for k in COMPARED_ENVIRONMENT}


# what of a study header decides whether its rows compare with another's, in the order a difference is reported
COMPARED = ((_protocol, "setting '{}'"), (_header, "'{}'"), (_machine, "machine's {}"))


def _mismatch(old: dict, new: dict) -> str | None:
    """What differs between two study headers in a way that makes their rows incomparable, or None."""
    for part, name in COMPARED:
        where = first_difference(plain(part(old)), plain(part(new)))
        if where is not None:
            return name.format(where)
    return None


def kept_models(path: Path, header: dict, weights_sha: Callable[[str], str | None],
                log: Log) -> dict[str, tuple[dict, list[dict], dict | None]]:
    """{model: (study.json entry, its rows, its peer records by backend)} of every model the study at `path` measured
    that the new run (whose study.json header is `header`) can keep. `weights_sha(model)` is the SHA-256 of the
    weights the model would be measured with now (None: random init). No file at `path`: nothing to keep."""
    if not path.is_file():
        log(f"resume: no earlier study in {display_path(path.parent)}; starting from the first model")
        return {}
    old = read_json(path, "study file")
    if not isinstance(old, dict) or old.get("format") != FORMAT or not all(
            k in old for k in ("settings", "environment", "models", "rows", *COMPARED_HEADER)):
        raise XpruneError(f"cannot resume: {display_path(path)} is not a study file in format '{FORMAT}'; "
                          "use another --out or delete it")
    differs = _mismatch(old, header)
    if differs:
        raise XpruneError(f"cannot resume the study in {display_path(path.parent)}: its {differs} differs from this "
                          "run's; use another --out, or run without --resume to start over")
    kept = {}
    peers = old.get("peers") or {}
    for entry in old["models"]:
        name = entry["model"]
        if entry.get("weights", {}).get("sha256") != weights_sha(name):
            log(f"resume: [{name}] its weights changed since it was measured; measuring it again")
            continue
        entry.setdefault("measured_at", old["environment"].get("timestamp"))  # studies from before the field
        rows = [r for r in old["rows"] if r["model"] == name]
        kept[name] = (entry, rows, {b: p for b, p in peers.items() if p.get("model") == name})
    if kept:
        log(f"resume: keeping {', '.join(kept)} from {display_path(path)}")
    return kept
