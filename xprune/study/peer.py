"""The peer row: the same YOLOv8 weights exported by Ultralytics' own ONNX exporter, its outputs decoded once so its
accuracy goes through xprune's shared post-process.

Ultralytics exports a detection model as one output `[1, 4 + C, N]`: boxes as (cx, cy, w, h) in input pixels, then
per-class sigmoid scores. `decode_ultralytics` turns that into xprune's raw-head convention (boxes xyxy `[1, N, 4]`,
scores `[1, N, C]`), which goes to `xprune.models.detector.postprocess`, the NMS every other backend uses, so an mAP
difference between the peer and xprune's export is the graph's, not the plumbing's. The file runs on the registry's
ONNX backend (`onnx_backend`), with the runner xprune's own ONNX files get: timing (`infer`) is the bare runtime
call, exactly as for them; the decode is outside the timed region for the peer, while xprune's graph carries its
transpose and cxcywh->xyxy inside.

The export goes through Ultralytics' public API on a checkpoint in Ultralytics' own format:
`YOLO(ckpt).export(format="onnx", imgsz=S, device="cpu")` with every other argument at Ultralytics' defaults (opset
`best_onnx_opset`, `simplify=True`, i.e. onnxslim when it is installed, static batch 1). xprune's reference
checkpoints are in xprune's format (a state dict); `ultralytics_checkpoint` rebuilds the DetectionModel from the
detector and wraps it the way Ultralytics' trainer saves one.

In a study (`export_peer`, `peer_results`) the peer is timed in the same interleaved run of that backend as xprune's
variants, so every pruned variant gets a paired latency ratio against it beside the mAP it lost.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import io
import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch

from xprune.errors import XpruneError
from xprune.files import atomic_path, file_sha256
from xprune.models.detector import Detector
from xprune.models.yolo import decode_yolo_output
from xprune.models.zoo import require_ultralytics
from xprune.runtime.registry import TargetOptions, onnx_backend
from xprune.study.settings import FRAMEWORK
from xprune.study.threads import torch_threads_kept

if TYPE_CHECKING:
    from xprune.bench.run import Target
    from xprune.study.intervals import Intervals
    from xprune.study.settings import Log, StudySettings
    from xprune.study.variants import Variant

PEER = "peer-ultralytics"  # the peer's variant id in results rows


def ultralytics_version() -> str | None:
    try:
        return importlib.metadata.version("ultralytics")
    except importlib.metadata.PackageNotFoundError:
        return None


def is_yolo(detector: Detector) -> bool:
    from xprune.models.yolo import YoloDetector
    return isinstance(detector, YoloDetector)  # every Ultralytics family: YOLOv8, YOLO11


def ultralytics_checkpoint(detector: Detector, path: str | Path, class_names: list[str] | None = None) -> Path:
    """Write the detector's Ultralytics DetectionModel as an Ultralytics checkpoint (float32, the trainer's keys
    that `ultralytics.nn.tasks.load_checkpoint` reads)."""
    if not is_yolo(detector):
        raise XpruneError(f"the Ultralytics peer export needs a YOLOv8 model, not {detector.family}")
    model = copy.deepcopy(detector.model).float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    names = class_names or [str(i) for i in range(detector.num_classes)]
    setattr(model, "names", dict(enumerate(names)))  # what Ultralytics' exporter writes into the metadata
    path = Path(path)
    ckpt = {"model": model, "train_args": {"imgsz": detector.input_size, "task": "detect"},
            "version": ultralytics_version()}
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return path


def export_ultralytics_onnx(detector: Detector, out: str | Path, class_names: list[str] | None = None) -> dict:
    """Export with Ultralytics' own exporter at the detector's input size and Ultralytics' defaults otherwise.
    Returns what the study records about the file (settings used, nodes, MACs, hash)."""
    from xprune.export.fold import count_macs

    require_ultralytics()  # the `yolo` extra; without it, one line naming it
    from ultralytics import YOLO
    from ultralytics.cfg import get_cfg

    defaults = get_cfg()
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="xprune-peer-") as tmp:
        ckpt = ultralytics_checkpoint(detector, Path(tmp) / f"{detector.family}.pt", class_names)
        sink = io.StringIO()
        ul_logger = logging.getLogger("ultralytics")
        level = ul_logger.level
        ul_logger.setLevel(logging.ERROR)
        try:
            # the exporter's select_device sets torch's thread count; later PyTorch timings need it back
            with torch_threads_kept(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), \
                    warnings.catch_warnings():
                warnings.simplefilter("ignore")
                exported = YOLO(str(ckpt), task="detect").export(format="onnx", imgsz=detector.input_size,
                                                                 device="cpu")
        except Exception as e:  # Ultralytics raises assorted types; the message is what the user needs
            tail = sink.getvalue().strip().splitlines()[-1:]
            raise XpruneError(f"Ultralytics' ONNX export failed: {type(e).__name__}: {str(e)[:300]} {tail}") from None
        finally:
            ul_logger.setLevel(level)
        if not exported or not Path(exported).is_file():
            raise XpruneError("Ultralytics' ONNX export produced no file")
        with atomic_path(out) as dst:
            shutil.copyfile(exported, dst)
    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    try:
        import onnxslim
        slim_version = onnxslim.__version__
    except ImportError:
        slim_version = None
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    out_shape = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    return {"exporter": "ultralytics", "ultralytics": ultralytics_version(), "call":
            f"YOLO(ckpt).export(format='onnx', imgsz={detector.input_size}, device='cpu')",
            "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
            "opset_setting": defaults.opset, "simplify": bool(defaults.simplify), "onnxslim": slim_version,
            "dynamic": bool(defaults.dynamic), "quantize": getattr(defaults, "quantize", None), "input_shape": shape,
            "output_shape": out_shape, "nodes": len(model.graph.node), "macs": count_macs(model),
            "params": int(sum(int(np.prod(t.dims)) for t in model.graph.initializer)),
            "sha256": file_sha256(out), "file": out.name, "ultralytics_metadata_args": meta.get("args")}


def decode_ultralytics(output: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, 4 + C, N] (cx, cy, w, h, class scores) -> (boxes xyxy [B, N, 4], scores [B, N, C])."""
    y = torch.as_tensor(np.asarray(output)).float()
    if y.dim() != 3 or y.shape[1] < 5:
        raise XpruneError(f"expected an Ultralytics detection output [B, 4 + C, N], got {list(y.shape)}")
    return decode_yolo_output(y)


def decode_outputs(outputs: tuple[np.ndarray, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """A runner's outputs on an Ultralytics export, in xprune's raw-head convention (boxes, scores)."""
    return decode_ultralytics(outputs[0])


# --- the peer in a study ------------------------------------------------------------------------------------------

def export_peer(det: Detector, work: Path, data: Path, settings: StudySettings, log: Log
                ) -> tuple[dict, Target | None]:
    """Export the peer and check its decoded outputs against PyTorch. Returns study.json's "peer" record so far
    and the target to time (None when the export failed: the record says why)."""
    from xprune.bench.run import Target
    from xprune.data.coco import CocoDetectionSet
    from xprune.study.measure import max_rel_error

    path = work / f"{det.family}-ultralytics.onnx"
    log(f"[{det.family}] peer: Ultralytics' own ONNX export")
    try:
        names: list[str] | None = CocoDetectionSet.from_folder(data, "val", 32, limit=1).class_names
        if names is not None and len(names) != det.num_classes:
            names = None
        info = export_ultralytics_onnx(det, path, names)
    except XpruneError as e:
        log(f"[{det.family}] peer export failed: {e}")
        return {"available": False, "reason": str(e)}, None
    x = np.random.default_rng(1).random((1, 3, det.input_size, det.input_size), dtype=np.float32)
    with torch.no_grad():
        reference = [o.numpy() for o in det.raw(torch.from_numpy(x))]
    onnx, options = onnx_backend(), TargetOptions(threads=settings.threads)
    with onnx.runner(path, options) as check:
        got = [o.numpy() for o in decode_outputs(check.infer(x))]
    target_info = {"source": str(path), "model": det.family, "variant": PEER, "method": None, "rate": None,
                   "variant_id": PEER, "input_shape": info["input_shape"], "exporter": "ultralytics"}
    runner = onnx.runner(path, options, nms_iou=det.nms_iou)
    record = {"available": True, "model": det.family, "export": info,
              "decoded_max_rel_error_vs_torch": max_rel_error(reference, got)}
    return record, Target(path, runner, target_info)


def peer_results(record: dict, path: Path, by_id: dict, variants: list[Variant], val, det: Detector,
                 settings: StudySettings, log: Log, intervals: Intervals | None = None) -> dict:
    """The peer record completed from the run it was timed in: its latency, xprune's baseline and every pruned
    variant against it, and (for accuracy models, `val` given) its mAP, with intervals when `intervals` is given:
    the peer's mAP, and the paired difference from xprune's unpruned export. The comparisons read mAP on the
    peer's runtime (the registry's ONNX backend) when the variants were measured there."""
    from xprune.study.measure import exported_map
    from xprune.bench.paired import paired_summary
    from xprune.study.stats import latency_fields, pct_change
    from xprune.study.variants import BASELINE, BASELINE_COPY

    out = dict(record)
    peer = by_id[PEER]
    runtime = peer.get("backend") if isinstance(peer.get("backend"), dict) else {}
    out.update({**latency_fields(peer), "samples_file_row": PEER, "threads": runtime.get("threads"),
                "runtime": runtime})
    base_row = by_id[BASELINE]
    out["xprune_baseline_vs_peer"] = paired_summary(base_row, peer)
    out["xprune_baseline_fps"] = base_row["fps"]
    if BASELINE_COPY in by_id:
        out["aa_control"] = paired_summary(by_id[BASELINE_COPY], base_row)
    base = variants[0]
    accuracy = val is not None
    onnx = onnx_backend()
    if accuracy:
        log(f"[{det.family}] peer: mAP through {onnx.label} + shared post-process")
        m = exported_map(path, det, val, settings.threads, settings.progress, per_image=True, decode=decode_outputs)
        out.update({"map": m["map"], "map50": m["map50"], "val_images": m["images"]})
        if "onnx_map" not in base.info and base.onnx is not None:  # compared with xprune's export on one runtime
            log(f"[{det.family}] mAP of xprune's baseline ONNX through {onnx.label}")
            mb = exported_map(base.onnx, det, val, settings.threads, settings.progress, per_image=True)
            base.info.update({"onnx_map": mb["map"], "onnx_map50": mb["map50"]})
            base.matches[onnx.name] = mb["matches"]
        if intervals is not None:
            low, high = intervals.map_interval(m["matches"])
            out.update({"map_low": low, "map_high": high})
            if onnx.name in base.matches:  # xprune's unpruned export minus the peer, the same images
                d, low, high = intervals.delta_interval(m["matches"], base.matches[onnx.name])
                out["xprune_baseline_minus_peer_map"] = {"delta": d, "low": low, "high": high}
    on_onnx = accuracy and "onnx_map" in base.info and all("onnx_map" in v.info for v in variants[1:])
    prefix = "onnx_" if on_onnx else ""
    comparisons = []
    for v in variants[1:]:
        row = by_id[v.id]
        ratio = paired_summary(row, peer)
        for method, rate in v.uses:
            comparisons.append({
                "method": method, "rate": rate, "variant_id": v.id, "layers_zeroed": len(v.layers),
                "xprune_fps": row["fps"], "xprune_median_ms": row["median_ms"],
                "latency_ratio_vs_peer": ratio["median"], "latency_ratio_p10": ratio["p10"],
                "latency_ratio_p90": ratio["p90"], "faster": ratio["median"] < 1.0,
                "clearly_faster": ratio["p90"] < 1.0,
                "removed_mac_fraction": v.info.get("removed_mac_fraction"),
                "map": v.info.get(prefix + "map") if accuracy else None,
                "map_source": (onnx.name if on_onnx else FRAMEWORK) if accuracy else None,
                "map_lost": (base.info[prefix + "map"] - v.info[prefix + "map"]) if accuracy else None,
                # the ΔmAP interval turned round: what was lost, low to high
                "map_lost_low": 0.0 - v.info[prefix + "dmap_high"] if accuracy and prefix + "dmap_high" in v.info
                else None,
                "map_lost_high": 0.0 - v.info[prefix + "dmap_low"] if accuracy and prefix + "dmap_low" in v.info
                else None,
                "dmap_pct": pct_change(v.info.get(prefix + "map"), base.info.get(prefix + "map"))
                if accuracy else None})
    comparisons.sort(key=lambda c: (c["method"], c["rate"]))
    out["comparisons"] = comparisons
    out["baseline_map"] = base.info.get("map") if accuracy else None
    out["baseline_onnx_map"] = base.info.get("onnx_map") if accuracy else None
    return out
