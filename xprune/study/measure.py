"""What a study measures of each variant outside the timed runs: mAP in the model's framework and, for accuracy
models, of the exported file on each timed backend that runs exported files for their mAP (`map_backends`: ONNX
Runtime, OpenVINO in fp32), each with its per-image evaluation for the bootstrap intervals; params and MACs by ptflops; and the ONNX export with xprune's fold, checked
against the framework's outputs on a random input. For two-stage models, the proposals that survive the RPN on that
input: their work depends on it.

`evaluation_row` is the same measurement for one model on its own (`xprune evaluate`), with its PyTorch latency.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from xprune.bench.latency import LatencyProtocol
from xprune.models.detector import Detector, postprocess
from xprune.runtime.registry import Backend, TargetOptions, map_backends, onnx_backend
from xprune.study.settings import FRAMEWORK, Log, StudySettings, map_prefix
from xprune.study.variants import Variant


def max_rel_error(a, b) -> float:
    """Largest absolute difference over the outputs, relative to the reference's magnitude (at least 1)."""
    out = 0.0
    for x, y in zip(a, b):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        out = max(out, float(np.max(np.abs(x - y))) / max(1.0, float(np.max(np.abs(x)))))
    return out


def accuracy_and_complexity(det: Detector, val, batch_size: int, progress: bool, per_image: bool = False) -> dict:
    """mAP in PyTorch on `val` (skipped when it is None) and ptflops' dense params and MACs; with `per_image`, the
    per-image evaluation too (under "matches", not JSON)."""
    from xprune.evaluate.complexity import complexity
    from xprune.evaluate.coco_map import evaluate_map

    out = {}
    if val is not None:
        m = evaluate_map(det, val, batch_size=batch_size, progress=progress, per_image=per_image)
        out.update({"map": m["map"], "map50": m["map50"], "val_images": m["images"]})
        if per_image:
            out["matches"] = m["matches"]
    cx = complexity(det)
    out.update({"params": cx["params"], "macs": cx["macs"]})
    return out


def exported_map(path: Path, det: Detector, val, threads: int | None, progress: bool, per_image: bool = False,
                 decode: Callable[[tuple[np.ndarray, ...]], tuple[torch.Tensor, torch.Tensor]] | None = None,
                 backend: Backend | None = None) -> dict:
    """mAP of an exported file on `backend` (default: the registry's ONNX backend) at batch 1 and the shared
    post-process (`decode`: raw outputs -> boxes, scores, for another exporter's outputs); with `per_image`, also
    "matches"."""
    from xprune.evaluate.coco_map import evaluate_predictions

    backend = backend or onnx_backend()
    with backend.runner(path, TargetOptions(threads=threads), nms_iou=det.nms_iou) as r:
        predict = r.predict if decode is None else (
            lambda x: postprocess(*decode(r.infer(x.numpy())), iou=det.nms_iou))
        return evaluate_predictions(predict, val, det.category_ids, batch_size=1, progress=progress,
                                    per_image=per_image)


def is_two_stage(det: Detector) -> bool:
    """A region-proposal model: how much work its second stage does depends on what the RPN lets through."""
    return getattr(det.model, "rpn", None) is not None


def probe_input(size: int) -> np.ndarray:
    """The fixed random input every variant's export is checked on (and its proposals counted on)."""
    return np.random.default_rng(1).random((1, 3, size, size), dtype=np.float32)


def probe_outputs(det: Detector) -> list[np.ndarray]:
    with torch.no_grad():
        return [o.numpy() for o in det.raw(torch.from_numpy(probe_input(det.input_size)))]


def export_variant(v: Variant, name: str, work: Path, settings: StudySettings, reference: list[np.ndarray]) -> None:
    """Export the variant (folded unless it is the baseline), record what the fold removed, and check the file
    against the framework's outputs on the probe input (`reference`); with `onnx_zeroed`, also export it
    unfolded."""
    from xprune.export.onnx_export import export_onnx

    fold = not v.is_baseline
    v.onnx = work / f"{name}-{v.id}{'-folded' if fold else ''}.onnx"
    rep = export_onnx(v.detector, v.onnx, fold=fold)
    v.info.update({"onnx_file": v.onnx.name, "nodes_before": rep["nodes_before"], "nodes_after": rep["nodes_after"],
                   "macs_before_fold": rep["macs_before"], "effective_macs": rep["macs_after"],
                   "params_after_fold": rep["params"], "removed_mac_fraction": rep["removed_mac_fraction"],
                   "dead_outputs": rep["dead_outputs"]})
    with onnx_backend().runner(v.onnx, TargetOptions(threads=settings.threads)) as r:
        v.info["onnx_max_rel_error_vs_torch"] = max_rel_error(reference, r.infer(probe_input(v.detector.input_size)))
    if settings.onnx_zeroed and fold:
        v.onnx_zeroed = work / f"{name}-{v.id}-zeroed.onnx"
        export_onnx(v.detector, v.onnx_zeroed, fold=False)


def measure_variants(name: str, variants: list[Variant], val, work: Path, settings: StudySettings, log: Log) -> None:
    """Fill every variant's `info`: its uses, mAP, complexity and, when a backend runs ONNX, its export."""
    exports = any(b != FRAMEWORK for b in settings.backends)  # every other backend runs the export
    onnx = onnx_backend()
    evaluated = [b for b in map_backends() if b.name in settings.backends] if val is not None and settings.onnx_map \
        else []
    for i, v in enumerate(variants, 1):
        tag = f"[{name}] variant {i}/{len(variants)} {v.id}"
        v.info.update({"id": v.id, "method": v.method, "layers": list(v.layers), "uses": [list(u) for u in v.uses]})
        if val is not None:
            log(f"{tag}: mAP (PyTorch, {len(val)} val images)")
        measured = accuracy_and_complexity(v.detector, val, settings.batch_size, settings.progress, per_image=True)
        if "matches" in measured:
            v.matches[FRAMEWORK] = measured.pop("matches")
        v.info.update(measured)
        two_stage = is_two_stage(v.detector)
        if not exports and not two_stage:
            continue
        reference = probe_outputs(v.detector)
        if two_stage:  # the raw heads are padded to the most proposals any image kept: the second stage's work
            v.info["proposals_probe"] = int(reference[0].shape[1])
        if not exports:
            continue
        log(f"{tag}: ONNX export{'' if v.is_baseline else ' + fold'}")
        export_variant(v, name, work, settings, reference)
        for backend in evaluated:
            assert v.onnx is not None
            log(f"{tag}: mAP ({backend.label}, batch 1)")
            m = exported_map(v.onnx, v.detector, val, settings.threads, settings.progress, per_image=True,
                             backend=backend)
            prefix = map_prefix(backend.name)
            v.info.update({f"{prefix}map": m["map"], f"{prefix}map50": m["map50"],
                           f"{prefix}val_images": m["images"]})
            v.matches[backend.name] = m["matches"]
            if v.onnx_zeroed is not None and backend.name == onnx.name:  # the same runtime on the unfolded file: what folding changed
                m = exported_map(v.onnx_zeroed, v.detector, val, settings.threads, settings.progress)
                v.info.update({"zeroed_onnx_map": m["map"], "zeroed_onnx_map50": m["map50"]})


# --- one model on its own (`xprune evaluate`) ---------------------------------------------------------------------

def torch_latency(det: Detector, protocol: LatencyProtocol) -> dict:
    """PyTorch eager, batch 1, raw head outputs (decode included, NMS excluded: the same work an engine does)."""
    from xprune.bench.latency import measure, summarize

    det.model.eval()
    x = torch.rand(1, 3, det.input_size, det.input_size)
    with torch.no_grad():
        samples = measure(lambda: det.raw(x), protocol)
    return {"samples_ms": [round(s, 4) for s in samples], **summarize(samples)}


def evaluation_row(det: Detector, val, protocol: LatencyProtocol, weights_hash: str, method: str = "evaluate",
                   rate: float = 0.0, batch_size: int = 8, progress: bool = True) -> dict:
    """mAP, params, MACs and PyTorch CPU latency of one model."""
    measured = accuracy_and_complexity(det, val, batch_size, progress)
    latency = torch_latency(det, protocol)
    return {"model": det.family, "method": method, "rate": rate, "backend": FRAMEWORK,
            "variant": "baseline" if method == "baseline" else "zeroed", "precision": "fp32",
            "device": "cpu", "input_size": det.input_size, "batch": 1, "weights_sha256": weights_hash,
            **measured, "latency_ms_median": latency["median_ms"], "fps": latency["fps"], "latency": latency}


def evaluation_table(rows: list[dict]) -> str:
    head = (f"{'model':<18}{'method':<10}{'backend':<13}{'variant':<9}{'rate':>6}{'mAP':>8}{'mAP50':>8}"
            f"{'params':>11}{'MACs(G)':>9}{'ms':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['model']:<18}{r['method']:<10}{r['backend']:<13}{r['variant']:<9}{r['rate']:>6.2f}"
                     f"{r['map']:>8.4f}{r['map50']:>8.4f}{r['params']:>11,}{r['macs'] / 1e9:>9.3f}"
                     f"{r['latency_ms_median']:>9.2f}")
    return "\n".join(lines)
