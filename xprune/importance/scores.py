"""Score every conv layer of a detector and read/write scores.json.

scores.json: {"model", "weights", "method", "input_size", "calibration", "layers": [{"layer", "type", "params",
"macs", "score", "rank", "predictor"}]}. rank 1 is the least important layer (the first to prune).
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from xprune.data.coco import CocoDetectionSet
from xprune.errors import XpruneError
from xprune.evaluate.complexity import complexity
from xprune.files import display_path, read_json, write_json
from xprune.importance.criteria import get_criterion
from xprune.models.detector import Detector
from xprune.models.jax import is_jax

SCORES_FORMAT = "xprune-scores-1"


def conv_type(conv: nn.Conv2d) -> str:
    if conv.groups == 1:
        return "pointwise" if conv.kernel_size == (1, 1) else "conv"
    if conv.groups == conv.in_channels == conv.out_channels:
        return "depthwise"
    return "grouped"


def conv_facts(detector: Detector) -> dict[str, dict]:
    """{conv name: {"type", "params", "macs"}} in module order, MACs by ptflops for one image."""
    macs = complexity(detector)["conv_macs"]
    return {n: {"type": conv_type(c), "params": sum(p.numel() for p in c.parameters()), "macs": macs.get(n, 0)}
            for n, c in detector.conv_layers().items()}


def calibration_batches(calib: CocoDetectionSet, batch_size: int) -> list[tuple[torch.Tensor, list[dict]]]:
    return [(x, targets) for x, targets, _ in calib.batches(batch_size)]


def score_layers(detector: Detector, method: str, calib: CocoDetectionSet | None = None, batch_size: int = 8,
                 progress: bool = False, seed: int = 0, weights: str = "") -> dict:
    criterion = get_criterion(method)
    score: Callable[..., dict[str, float]] = criterion.score
    facts: Callable[..., dict[str, dict]] = conv_facts
    if is_jax(detector):  # the same criteria and layer facts, computed in JAX
        from xprune.models.jax import scoring as jax_scoring
        jax_scoring.check_method(detector, method)
        score, facts = functools.partial(jax_scoring.score, criterion=criterion), jax_scoring.conv_facts
    torch.manual_seed(seed)
    batches = None
    calibration = None
    if criterion.needs_data:
        if calib is None:
            raise XpruneError(f"method '{method}' needs calibration data: pass --data DIR")
        batches = calibration_batches(calib, batch_size)
        calibration = {"annotations": display_path(calib.annotations), "images": len(calib), "batch_size": batch_size,
                       "batches": len(batches)}
    t0 = time.perf_counter()
    scores = score(detector, batches, progress=progress, seed=seed,
                   total=len(batches) if batches is not None else None)
    seconds = time.perf_counter() - t0
    bad = [n for n, s in scores.items() if not math.isfinite(s)]
    if bad:
        raise XpruneError(f"non-finite {method} scores for {len(bad)} layers (first: {bad[0]}); check the weights")
    predictors = set(detector.predictor_layers)
    order = sorted(scores, key=lambda n: (scores[n], n))
    rank = {n: i + 1 for i, n in enumerate(order)}
    layers = [{"layer": n, **f, "score": scores[n], "rank": rank[n], "predictor": n in predictors}
              for n, f in facts(detector).items()]
    return {"format": SCORES_FORMAT, "model": detector.family, "weights": weights, "method": method,
            "about": criterion.about, "input_size": detector.input_size, "seed": seed, "calibration": calibration,
            "seconds": round(seconds, 3), "layers": layers}


def write_scores(path: str | Path, doc: dict) -> None:
    write_json(path, doc)


def read_scores(path: str | Path) -> dict:
    doc = read_json(path, "scores file")
    if not isinstance(doc, dict) or doc.get("format") != SCORES_FORMAT or not isinstance(doc.get("layers"), list):
        raise XpruneError(f"{path} is not an xprune scores file")
    for layer in doc["layers"]:
        if not isinstance(layer, dict) or not {"layer", "score"} <= layer.keys():
            raise XpruneError(f"{path} has a malformed layer entry: {str(layer)[:80]}")
    return doc
