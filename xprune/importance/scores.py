"""Score every conv layer of a detector and read/write scores.json.

scores.json: {"model", "weights", "method", "input_size", "calibration", "layers": [{"layer", "type", "params",
"macs", "score", "rank", "predictor"}]}. rank 1 is the least important layer (the first to prune).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from xprune.data.coco import CocoDetectionSet
from xprune.errors import XpruneError
from xprune.evaluate.complexity import complexity
from xprune.files import display_path, read_json, write_json
from xprune.importance.criteria import criterion_for
from xprune.models.detector import Detector

SCORES_FORMAT = "xprune-scores-1"


def conv_facts(detector: Detector) -> dict[str, dict]:
    """{conv name: {"type", "params", "macs"}} in module order, MACs for one image (`complexity`: ptflops, or the
    family's own count where ptflops cannot trace the model)."""
    macs = complexity(detector)["conv_macs"]
    return {n: {**summary, "macs": macs.get(n, 0)} for n, summary in detector.conv_summary().items()}


def calibration_batches(calib: CocoDetectionSet, batch_size: int) -> list[tuple[torch.Tensor, list[dict]]]:
    return [(x, targets) for x, targets, _ in calib.batches(batch_size)]


def score_layers(detector: Detector, method: str, calib: CocoDetectionSet | None = None, batch_size: int = 8,
                 progress: bool = False, seed: int = 0, weights: str = "") -> dict:
    criterion = criterion_for(detector, method)
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
    scores = criterion.score(detector, batches, progress=progress, seed=seed,
                             total=len(batches) if batches is not None else None)
    seconds = time.perf_counter() - t0
    bad = [n for n, s in scores.items() if not math.isfinite(s)]
    if bad:
        raise XpruneError(f"non-finite {method} scores for {len(bad)} layers (first: {bad[0]}); check the weights")
    predictors = set(detector.predictor_layers)
    order = sorted(scores, key=lambda n: (scores[n], n))
    rank = {n: i + 1 for i, n in enumerate(order)}
    layers = [{"layer": n, **f, "score": scores[n], "rank": rank[n], "predictor": n in predictors}
              for n, f in conv_facts(detector).items()]
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
