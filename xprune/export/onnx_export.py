"""Export a detector's raw head outputs to ONNX (static shape), fold zeroed layers out, simplify with onnxslim.

The graph computes (boxes [B, N, 4|C x 4], scores [B, N, C]) exactly as `Detector.raw`; NMS stays outside, in the
shared post-process. Model facts a runtime needs (family, input size, category ids) travel as ONNX metadata.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import onnx

from xprune.errors import XpruneError
from xprune.files import atomic_path
from xprune.models.detector import Detector

OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAMES = ["boxes", "scores"]


def export_raw(detector: Detector, batch: int = 1, opset: int = OPSET) -> onnx.ModelProto:
    """The raw head path as an ONNX model held in memory (files over 2 GB are not expected here), traced by the
    family (`Detector.raw_onnx`: torch.onnx, or jax2onnx for a JAX family), with the facts a runtime needs as
    metadata; the passes after it are the same for every family."""
    model = detector.raw_onnx(batch, opset, INPUT_NAME, OUTPUT_NAMES)
    set_metadata(model, {"xprune.family": detector.family, "xprune.input_size": detector.input_size,
                         "xprune.num_classes": detector.num_classes, "xprune.nms_iou": detector.nms_iou,
                         "xprune.category_ids": detector.category_ids})
    return model


def set_metadata(model: onnx.ModelProto, values: dict) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for key, value in values.items():
        text = json.dumps(value)
        if key in existing:
            existing[key].value = text
        else:
            model.metadata_props.add(key=key, value=text)


def get_metadata(model: onnx.ModelProto) -> dict:
    out = {}
    for p in model.metadata_props:
        if p.key.startswith("xprune."):
            try:
                out[p.key[len("xprune."):]] = json.loads(p.value)
            except json.JSONDecodeError:
                out[p.key[len("xprune."):]] = p.value
    return out


def slim(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxslim: constant folding, Conv+BN fusion, dead-node removal. It does not remove all-zero convs."""
    import onnxslim

    meta = list(model.metadata_props)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = onnxslim.slim(model)
    if out is None:
        raise XpruneError("onnxslim failed to simplify the model")
    del out.metadata_props[:]
    out.metadata_props.extend(meta)
    return out


def save_model(model: onnx.ModelProto, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def load_model(path: str | Path) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise XpruneError(f"ONNX file not found: {path}")
    try:
        return onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError and friends
        raise XpruneError(f"{path} is not a valid ONNX model ({type(e).__name__})") from None


def provenance(detector: Detector, folded: bool) -> dict:
    """What a benchmark row needs to say which model this is: baseline, zeroed-only or folded, by which method."""
    plan = detector.meta.get("pruning") if detector.meta else None
    if not plan:
        return {"variant": "baseline", "method": None, "rate": None}
    return {"variant": "folded" if folded else "zeroed", "method": plan.get("method"), "rate": plan.get("rate"),
            "zeroed_layers": [e["layer"] for e in plan.get("selected", [])]}


def export_onnx(detector: Detector, out: str | Path, fold: bool = True, batch: int = 1, opset: int = OPSET,
                log=lambda message: None) -> dict:
    """Export → onnxslim → fold zeroed layers → onnxslim, written atomically to `out`. Returns the report that is
    also stored in the model's metadata: nodes and MACs before and after folding."""
    from xprune.export.fold import count_macs, fold_model

    log("exporting to ONNX")
    model = slim(export_raw(detector, batch, opset))
    before = {"nodes": len(model.graph.node), "macs": count_macs(model)}
    dead: list[str] = []
    after = before
    if fold:
        log("folding zeroed layers")
        model, folding = fold_model(model)
        model = slim(model)
        dead = folding.dead_outputs
        after = {"nodes": len(model.graph.node), "macs": count_macs(model)}  # counted after the second slim
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    report = {**provenance(detector, fold), "folded": fold, "opset": opset, "input_shape": [batch, 3, detector.input_size, detector.input_size],
              "nodes_before": before["nodes"], "nodes_after": after["nodes"], "macs_before": before["macs"],
              "macs_after": after["macs"], "params": params,
              "removed_mac_fraction": 1.0 - after["macs"] / before["macs"] if before["macs"] else 0.0,
              "dead_outputs": dead}
    set_metadata(model, {f"xprune.{k}": v for k, v in report.items()})
    save_model(model, out)
    return report
