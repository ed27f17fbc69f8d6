"""The peer rows: the same YOLO weights exported by Ultralytics' own exporter, for each backend Ultralytics writes a
file for (the registry's `ultralytics_format`: ONNX for ONNX Runtime, an OpenVINO IR for OpenVINO), its outputs
decoded once so its accuracy goes through xprune's shared post-process.

Ultralytics exports a detection model as one output `[1, 4 + C, N]`: boxes as (cx, cy, w, h) in input pixels, then
per-class sigmoid scores. `decode_ultralytics` turns that into xprune's raw-head convention (boxes xyxy `[1, N, 4]`,
scores `[1, N, C]`), which goes to `xprune.models.detector.postprocess`, the NMS every other backend uses, so an mAP
difference between the peer and xprune's export is the graph's, not the plumbing's. The file runs on its backend
with the runner xprune's own files get there (OpenVINO: fp32, the precision hint set as for every file): timing
(`infer`) is the bare runtime call, exactly as for them; the decode is outside the timed region for the peer, while
xprune's graph carries its transpose and cxcywh->xyxy inside.

The export goes through Ultralytics' public API on a checkpoint in Ultralytics' own format:
`YOLO(ckpt).export(format=F, imgsz=S, device="cpu")` with every other argument at Ultralytics' defaults (ONNX:
opset `best_onnx_opset`, `simplify=True`, i.e. onnxslim when it is installed, static batch 1; OpenVINO: converted
from PyTorch, weights kept in fp32 unless `quantize=16`). xprune's reference
checkpoints are in xprune's format (a state dict); `ultralytics_checkpoint` rebuilds the DetectionModel from the
detector and wraps it the way Ultralytics' trainer saves one.

In a study (`export_peer`, `peer_results`) each peer is timed in the same interleaved run of its backend as xprune's
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
from xprune.runtime.registry import Backend, TargetOptions
from xprune.study.settings import FRAMEWORK, map_prefix
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


def export_ultralytics(detector: Detector, out: str | Path, fmt: str = "onnx",
                       class_names: list[str] | None = None) -> dict:
    """Export with Ultralytics' own exporter in `fmt` ("onnx": one .onnx file; "openvino": an IR, `out` the .xml
    and its .bin beside it) at the detector's input size and Ultralytics' defaults otherwise. Returns what the study
    records about the file (settings used, nodes, MACs where counted, hash)."""
    require_ultralytics()  # the `yolo` extra; without it, one line naming it
    from ultralytics import YOLO

    if fmt not in ("onnx", "openvino"):
        raise XpruneError(f"no Ultralytics peer export for format '{fmt}'")
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
                exported = YOLO(str(ckpt), task="detect").export(format=fmt, imgsz=detector.input_size,
                                                                 device="cpu")
        except Exception as e:  # Ultralytics raises assorted types; the message is what the user needs
            tail = sink.getvalue().strip().splitlines()[-1:]
            raise XpruneError(f"Ultralytics' {fmt} export failed: {type(e).__name__}: {str(e)[:300]} {tail}") \
                from None
        finally:
            ul_logger.setLevel(level)
        files = [Path(exported)] if fmt == "onnx" else sorted(Path(exported).glob("*.xml"))[:1] if exported else []
        if not files or not files[0].is_file():
            raise XpruneError(f"Ultralytics' {fmt} export produced no file")
        pairs = [(files[0], out)]
        if fmt == "openvino":  # the IR's weights, renamed with it: OpenVINO finds the .bin by the .xml's name
            pairs.append((files[0].with_suffix(".bin"), out.with_suffix(".bin")))
        for src, dst in reversed(pairs):  # the .xml last: a file that is there is whole
            with atomic_path(dst) as tmp_dst:
                shutil.copyfile(src, tmp_dst)
    call = f"YOLO(ckpt).export(format='{fmt}', imgsz={detector.input_size}, device='cpu')"
    info = {"exporter": "ultralytics", "format": fmt, "ultralytics": ultralytics_version(), "call": call,
            "sha256": file_sha256(out), "file": out.name}
    info.update(_onnx_facts(out) if fmt == "onnx" else _openvino_facts(out))
    return info


def _onnx_facts(path: Path) -> dict:
    from ultralytics.cfg import get_cfg
    from xprune.export.fold import count_macs

    defaults = get_cfg()
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    try:
        import onnxslim
        slim_version = onnxslim.__version__
    except ImportError:
        slim_version = None
    return {"opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
            "opset_setting": defaults.opset, "simplify": bool(defaults.simplify), "onnxslim": slim_version,
            "dynamic": bool(defaults.dynamic), "quantize": getattr(defaults, "quantize", None),
            "input_shape": _dims(model.graph.input[0]), "output_shape": _dims(model.graph.output[0]),
            "nodes": len(model.graph.node), "macs": count_macs(model),
            "params": int(sum(int(np.prod(t.dims)) for t in model.graph.initializer)),
            "ultralytics_metadata_args": meta.get("args")}


def _dims(value_info) -> list[int]:
    return [d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _openvino_facts(path: Path) -> dict:
    """An IR converted by Ultralytics straight from PyTorch (no ONNX in between): its shapes, op count and the
    precision its weights are stored in (Ultralytics compresses them to fp16 only when asked to, `quantize=16`)."""
    from ultralytics.cfg import get_cfg
    import openvino as ov

    model = ov.Core().read_model(str(path))
    consts = [op for op in model.get_ops() if op.get_type_name() == "Constant"]
    weight_types = sorted({op.get_output_element_type(0).get_type_name() for op in consts
                           if op.get_output_element_type(0).is_real()})
    return {"openvino": ov.get_version().split("-")[0], "dynamic": bool(get_cfg().dynamic),
            "quantize": getattr(get_cfg(), "quantize", None),
            "input_shape": [int(d) for d in model.inputs[0].get_shape()],
            "output_shape": [int(d) for d in model.outputs[0].get_shape()],
            "nodes": sum(op.get_type_name() not in ("Constant", "Parameter", "Result") for op in model.get_ops()),
            "macs": None, "weight_types": weight_types,
            "params": int(sum(int(np.prod(list(op.get_output_shape(0)))) for op in consts
                              if op.get_output_element_type(0).is_real()))}


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

def export_peer(det: Detector, backend: Backend, work: Path, data: Path, settings: StudySettings, log: Log
                ) -> tuple[dict, Target | None]:
    """Export the peer for `backend` and check its decoded outputs against PyTorch. Returns study.json's record
    of it so far and the target to time (None when the export failed: the record says why)."""
    from xprune.bench.run import Target
    from xprune.data.coco import CocoDetectionSet
    from xprune.study.measure import max_rel_error

    fmt = backend.ultralytics_format
    assert fmt is not None
    path = work / f"{det.family}-ultralytics{'.onnx' if fmt == 'onnx' else '.xml'}"
    log(f"[{det.family}] peer: Ultralytics' own {fmt} export, for {backend.label}")
    base = {"model": det.family, "backend": backend.name}
    try:
        names: list[str] | None = CocoDetectionSet.from_folder(data, "val", 32, limit=1).class_names
        if names is not None and len(names) != det.num_classes:
            names = None
        info = export_ultralytics(det, path, fmt, names)
    except XpruneError as e:
        log(f"[{det.family}] peer export failed: {e}")
        return {"available": False, **base, "reason": str(e)}, None
    x = np.random.default_rng(1).random((1, 3, det.input_size, det.input_size), dtype=np.float32)
    with torch.no_grad():
        reference = [o.numpy() for o in det.raw(torch.from_numpy(x))]
    options = TargetOptions(threads=settings.threads)
    with backend.runner(path, options) as check:
        got = [o.numpy() for o in decode_outputs(check.infer(x))]
    target_info = {"source": str(path), "model": det.family, "variant": PEER, "method": None, "rate": None,
                   "variant_id": PEER, "input_shape": info["input_shape"], "exporter": "ultralytics"}
    runner = backend.runner(path, options, nms_iou=det.nms_iou)
    record = {"available": True, **base, "export": info,
              "decoded_max_rel_error_vs_torch": max_rel_error(reference, got)}
    return record, Target(path, runner, target_info)


def peer_results(record: dict, backend: Backend, path: Path, by_id: dict, variants: list[Variant], val,
                 det: Detector, settings: StudySettings, log: Log, intervals: Intervals | None = None) -> dict:
    """The peer record completed from the run it was timed in: its latency, xprune's baseline and every pruned
    variant against it, and (for accuracy models, `val` given) its mAP, with intervals when `intervals` is given:
    the peer's mAP, and the paired difference from xprune's unpruned export. The comparisons read mAP on the
    peer's runtime (`backend`) when the variants were measured there."""
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
    own = map_prefix(backend.name)
    if accuracy:
        log(f"[{det.family}] peer: mAP through {backend.label} + shared post-process")
        m = exported_map(path, det, val, settings.threads, settings.progress, per_image=True, decode=decode_outputs,
                         backend=backend)
        out.update({"map": m["map"], "map50": m["map50"], "val_images": m["images"]})
        if own + "map" not in base.info and base.onnx is not None:  # compared with xprune's export on one runtime
            log(f"[{det.family}] mAP of xprune's baseline ONNX through {backend.label}")
            mb = exported_map(base.onnx, det, val, settings.threads, settings.progress, per_image=True,
                              backend=backend)
            base.info.update({own + "map": mb["map"], own + "map50": mb["map50"]})
            base.matches[backend.name] = mb["matches"]
        if intervals is not None:
            low, high = intervals.map_interval(m["matches"])
            out.update({"map_low": low, "map_high": high})
            if backend.name in base.matches:  # xprune's unpruned export minus the peer, the same images
                d, low, high = intervals.delta_interval(m["matches"], base.matches[backend.name])
                out["xprune_baseline_minus_peer_map"] = {"delta": d, "low": low, "high": high}
    on_runtime = accuracy and own + "map" in base.info and all(own + "map" in v.info for v in variants[1:])
    prefix = own if on_runtime else ""
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
                "map_source": (backend.name if on_runtime else FRAMEWORK) if accuracy else None,
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
    out["baseline_runtime_map"] = base.info.get(own + "map") if accuracy else None
    return out
