"""Checkpoints of JAX families: one msgpack file (flax.serialization) holding every array of the nnx module (its
parameters and BatchNorm statistics as a pure dict, the module paths as keys) and the settings needed to rebuild
it, in the same fields as xprune's PyTorch checkpoints. The suffix is `.msgpack`: it is what routes a file to the
`jax` runtime in `xprune bench`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import jax
import numpy as np
from flax import nnx, serialization

from xprune.errors import XpruneError
from xprune.files import atomic_path
from xprune.models.jax import CHECKPOINT_SUFFIX

if TYPE_CHECKING:
    from xprune.models.jax.detector import JaxDetector

CHECKPOINT_FORMAT = "xprune-jax-checkpoint-1"


def check_suffix(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() != CHECKPOINT_SUFFIX:
        raise XpruneError(f"a JAX checkpoint is a flax msgpack file: name it *{CHECKPOINT_SUFFIX}, not {path.name}")
    return path


def save_checkpoint(det: JaxDetector, path: str | os.PathLike, meta: dict | None = None, half: bool = False) -> None:
    """`half` stores floating arrays as fp16 (for small committed files); they load back as fp32."""
    path = check_suffix(path)
    state = jax.tree.map(lambda a: np.asarray(a, np.float16 if half and np.issubdtype(a.dtype, np.floating)
                                              else a.dtype), nnx.to_pure_dict(nnx.state(det.model)))
    doc = {"format": CHECKPOINT_FORMAT, "family": det.family, "num_classes": det.num_classes,
           "input_size": det.input_size, "category_ids": det.category_ids, "state": state,
           "meta": json.dumps(meta or {}), "versions": {"jax": jax.__version__, "flax": _flax_version()}}
    with atomic_path(path) as tmp:
        tmp.write_bytes(serialization.msgpack_serialize(doc))


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise XpruneError(f"checkpoint not found: {path}")
    try:
        doc = serialization.msgpack_restore(path.read_bytes())
    except Exception as e:  # msgpack's ExtraData, ValueError and friends all mean the same to the user
        raise XpruneError(f"checkpoint {path} is corrupt or not a flax msgpack file ({type(e).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
        raise XpruneError(f"{path} is not an xprune JAX checkpoint")
    return doc


def load_state(det: JaxDetector, state: dict, path: str | os.PathLike) -> None:
    """Put a pure-dict state into the detector's module; shapes and paths must match exactly."""
    current = nnx.state(det.model)
    flat_now = dict(nnx.traversals.flatten_mapping(nnx.to_pure_dict(current)))
    try:
        flat_new = dict(nnx.traversals.flatten_mapping(state))
    except Exception:
        raise XpruneError(f"checkpoint {path} has a malformed state") from None
    missing = sorted(set(flat_now) - set(flat_new), key=str)
    unexpected = sorted(set(flat_new) - set(flat_now), key=str)
    if missing or unexpected:
        key = (missing or unexpected)[0]
        raise XpruneError(f"checkpoint {path} does not fit {det.family}: "
                          f"{'missing' if missing else 'unexpected'} {'.'.join(map(str, key))}")
    for key, value in flat_new.items():
        if np.shape(value) != np.shape(flat_now[key]):
            raise XpruneError(f"checkpoint {path} does not fit {det.family}: {'.'.join(map(str, key))} has shape "
                              f"{np.shape(value)}, the model {np.shape(flat_now[key])}")
    typed = {k: np.asarray(v, np.asarray(flat_now[k]).dtype) for k, v in flat_new.items()}
    nnx.replace_by_pure_dict(current, nnx.traversals.unflatten_mapping(typed))
    nnx.update(det.model, current)


def load_checkpoint(path: str | os.PathLike, name: str, build: Callable[[int, int], JaxDetector],
                    input_size: int | None = None) -> JaxDetector:
    """`build(num_classes, input_size)` makes the randomly initialised detector the state goes into."""
    doc = read_checkpoint(path)
    if doc.get("family") != name:
        raise XpruneError(f"checkpoint {path} holds a {doc.get('family')} model, not {name}")
    det = build(int(doc["num_classes"]), input_size or int(doc["input_size"]))
    load_state(det, doc["state"], path)
    det.category_ids = list(doc["category_ids"]) if doc.get("category_ids") is not None else None
    det.meta = json.loads(doc.get("meta") or "{}")
    return det.eval()


def _flax_version() -> str:
    import flax

    return flax.__version__
