"""One frontier point: prune the model's start at a removed-MAC target (`plan_for_target`), fine-tune it once with
the recovery recipe (distilled from the start, pruned layers held at zero) and evaluate it on val after each epoch
of `evaluate_at`. The control point is the start itself through the same recipe.

Its file (points/<model>/<point>.json) is rewritten after every evaluation, so an interrupted run continues from
the fine-tuning state of its last finished epoch (`xprune.train.loop`) and the evaluations already in the file.
A file made with another recipe or another start is refused, not mixed in.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from xprune.errors import XpruneError
from xprune.files import read_json, write_json
from xprune.frontier.settings import BUDGET, CONTROL, FORMAT, FrontierSettings, point_id
from xprune.frontier.start import ModelStart
from xprune.resume import first_difference, plain

Log = Callable[[str], None]


def point_path(out: Path, model: str, point: str) -> Path:
    return out / "points" / model / f"{point}.json"


def state_path(work: Path, model: str, point: str) -> Path:
    return work / model / f"{point}.state.pt"


def read_point(path: Path) -> dict | None:
    if not path.exists():
        return None
    doc = read_json(path, "frontier point")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise XpruneError(f"{path} is not a frontier point file ({FORMAT}); delete it to start that point over")
    return doc


def model_points(out: Path, model: str) -> list[dict]:
    """Every point file of `model` under `out`, in name order."""
    folder = out / "points" / model
    return [d for d in (read_point(p) for p in sorted(folder.glob("*.json"))) if d] if folder.is_dir() else []


def identity(start: ModelStart, s: FrontierSettings, criterion: str | None, target: float | None) -> dict:
    doc = {"start": start.record["start_sha256"], "criterion": criterion, "target": target, "recipe": s.recipe()}
    if is_peer(criterion):
        from xprune.frontier.peer import torch_pruning, torch_pruning_version
        torch_pruning()  # one line naming the extra when it is missing
        doc["torch_pruning"] = torch_pruning_version()
    return plain(doc)


def is_peer(criterion: str | None) -> bool:
    from xprune.frontier.peer import PEER_CRITERIA

    return criterion in PEER_CRITERIA


def held_layers(start: ModelStart, record: dict | None) -> list[str]:
    """The start's zero layers under their names in the model: a channel-pruned C2f's split conv is its halves."""
    split = (record or {}).get("split_convs", {})
    return [half for name in start.held for half in split.get(name, [name])]


def early_stop(doc: dict, evaluation: dict, control: dict | None, s: FrontierSettings) -> dict | None:
    """The record of an early stop when this evaluation says the point cannot come back within the budget."""
    if not s.stop_after or evaluation["epoch"] != s.stop_after or doc["point"] == CONTROL:
        return None
    same = [e for e in (control or {}).get("evaluations", []) if e["epoch"] == s.stop_after]
    if not same:
        return None
    floor = same[0]["map"] - BUDGET - s.hopeless
    if evaluation["map"] >= floor:
        return None
    return {"after_epoch": s.stop_after, "map": evaluation["map"], "control_map": same[0]["map"],
            "rule": f"mAP more than {s.hopeless:g} below the control's minus the {BUDGET:g} budget "
                    f"(< {floor:.4f})", "epochs_not_run": s.epochs - s.stop_after}


def run_point(start: ModelStart, criterion: str | None, target: float | None, s: FrontierSettings, out: Path,
              work: Path, resume: bool, log: Log, stop_early: bool = True,
              saved: Callable[[dict, Path | None], None] | None = None) -> dict:
    """Measure one point (or finish it, with `resume`); returns its document. Without `stop_early` the point never
    stops itself: a Ray Tune scheduler applies the same rule (`xprune.frontier.tune`). `saved` is told the
    document and the state file each time the two on disk agree (after the zeroed evaluation, after every epoch,
    at the end): a copy of both is a checkpoint."""
    from xprune.evaluate.coco_map import evaluate_map
    from xprune.prune.finetune import FinetuneSettings, finetune_layers
    from xprune.prune.mac_target import plan_for_target

    pid = point_id(criterion, target)
    path = point_path(out, start.name, pid)
    me = identity(start, s, criterion, target)
    doc = read_point(path)
    if doc is not None:
        where = first_difference(doc["identity"], me)
        if where is not None:
            raise XpruneError(f"{path} was made with other inputs ({where or 'all'} differs); delete it or use "
                              f"another --out")
        if not resume:
            raise XpruneError(f"{path} exists: pass --resume to continue this frontier, or delete it")
        if doc["status"] != "running":
            return doc
    tag = f"[{start.name}] {pid}"
    det = copy.deepcopy(start.detector)
    if doc is None:
        doc = {"format": FORMAT, "model": start.name, "point": pid, "criterion": criterion, "target": target,
               "identity": me, "start": start.record, "status": "running", "evaluations": [],
               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if is_peer(criterion):
            from xprune.frontier.peer import channel_pruned
            log(f"{tag}: Torch-Pruning channels for {target:.0%} of the start's MACs")
            det, doc["peer"] = channel_pruned(start.detector, target, criterion, start.calib, s.seed)
            doc["layers"] = held_layers(start, doc["peer"])
        elif criterion is not None:
            log(f"{tag}: choosing layers for {target:.0%} of the start's MACs")
            plan = plan_for_target(det, start.scores(criterion, s.seed), start.full_target(target), "safe",
                                   start.fold)
            doc["plan"] = plan.to_json()
            doc["layers"] = start.held + plan.layers
        else:
            doc["layers"] = list(start.held)
        macs = exported_macs(det, doc["layers"])  # the peer's too: its record measured the same export
        doc["macs"] = {**macs, "start": start.record["macs"],
                       "removed_fraction": 1 - macs["after"] / start.record["macs"]}
    elif is_peer(criterion):
        det = peer_rebuilt(start, doc, s.seed)
    layers = doc["layers"]
    det.zero_layers(layers)
    control = read_point(point_path(out, start.name, CONTROL)) if criterion is not None and stop_early else None
    state = state_path(work, start.name, pid)

    def evaluate(epoch: int) -> dict:
        t0 = time.perf_counter()
        ev = evaluate_map(det, start.val, per_image=True)
        record = {"epoch": epoch, "map": ev["map"], "map50": ev["map50"], "seconds": time.perf_counter() - t0,
                  "matches": ev["matches"].to_json()}
        doc["evaluations"] = [e for e in doc["evaluations"] if e["epoch"] != epoch] + [record]
        log(f"{tag}: epoch {epoch} val mAP {ev['map']:.4f}")
        return record

    def after_epoch(record: dict) -> bool:
        doc["finetune"]["history"] = doc["finetune"]["history"][:record["epoch"] - 1] + [record]
        stop = None
        if record["epoch"] in s.evaluate_at:
            stop = early_stop(doc, evaluate(record["epoch"]), control, s)
            if stop:
                doc["stopped"] = stop
                log(f"{tag}: stopping early: {stop['rule']}")
        write_json(path, doc)
        return stop is not None

    def checkpoint(_epoch: int | None = None) -> None:  # also `epoch_saved`, told the epoch it saved
        if saved is not None:
            saved(doc, state if state.exists() else None)

    if 0 in s.evaluate_at and not any(e["epoch"] == 0 for e in doc["evaluations"]):
        evaluate(0)
    write_json(path, doc)
    checkpoint()
    if s.epochs and s.trainer == "ultralytics":
        from xprune.frontier.yolo_trainer import recover_with_ultralytics, run_folder

        doc.setdefault("finetune", {"settings": {"trainer": "ultralytics"}, "images": len(start.train),
                                    "history": []})
        log(f"{tag}: recovery with Ultralytics' trainer, {s.epochs} epochs on {len(start.train)} train images "
            f"({len(layers)} layers held at zero)")
        doc["finetune"]["settings"] = recover_with_ultralytics(
            det, layers, s, start.data, run_folder(work, start.name, pid), len(doc["finetune"]["history"]),
            after_epoch, lambda line: log(f"{tag}: {line}"))
    elif s.epochs:
        ft = FinetuneSettings(epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, seed=s.seed,
                              distill=s.distill).for_detector(det)
        doc.setdefault("finetune", {"settings": asdict(ft), "images": len(start.train), "history": []})
        state.parent.mkdir(parents=True, exist_ok=True)
        log(f"{tag}: recovery, {s.epochs} epochs on {len(start.train)} train images "
            f"({len(layers)} layers held at zero)")
        history = finetune_layers(det, start.train, layers, ft, state, log=lambda line: log(f"{tag}: {line}"),
                                  inputs={"point": me}, teacher=start.detector, after_epoch=after_epoch,
                                  epoch_saved=checkpoint)
        doc["finetune"]["history"] = history
    finish(doc)
    write_json(path, doc)
    checkpoint()
    return doc


def finish(doc: dict, stopped: dict | None = None) -> dict:
    """Close a point's document: its fine-tuning totals, its status and when it finished. `stopped`: the record of
    an early stop decided outside the point (a Ray Tune scheduler), written as the point itself would have."""
    if stopped is not None:
        doc["stopped"] = stopped
        history = doc.get("finetune", {}).get("history") or []
        if history:
            history[-1]["stopped"] = True
    if doc.get("finetune"):
        history = doc["finetune"]["history"]
        doc["finetune"]["cpu_seconds"] = sum(h.get("cpu_seconds", 0.0) for h in history)
        doc["finetune"]["seconds"] = sum(h["seconds"] for h in history)
    doc["status"] = "stopped" if doc.get("stopped") else "done"
    doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return doc


def exported_macs(det, layers: list[str]) -> dict:
    """MACs of the export before and after the fold with `layers` zeroed, measured on the folded graph."""
    import tempfile

    from xprune.export.onnx_export import export_onnx

    zeroed = copy.deepcopy(det)
    zeroed.zero_layers(layers)
    with tempfile.TemporaryDirectory(prefix="xprune-frontier-") as tmp:
        rep = export_onnx(zeroed, Path(tmp) / "m.onnx", fold=True)
    return {"before": rep["macs_before"], "after": rep["macs_after"]}


def peer_rebuilt(start: ModelStart, doc: dict, seed: int):
    """A peer point's channel-pruned model again, from the ratio its search found (Torch-Pruning is deterministic
    for the same model, ratio, criterion, calibration images and seed)."""
    from xprune.frontier.peer import pruned_at_ratio

    return pruned_at_ratio(start.detector, doc["peer"]["pruning_ratio"], doc["criterion"], start.calib, seed)


def pruned_detector(start: ModelStart, doc: dict, work: Path, seed: int = 0):
    """The point's detector as its fine-tuning left it (its last state), or zeroed where it was not fine-tuned."""
    import torch

    det = peer_rebuilt(start, doc, seed) if doc.get("peer") else copy.deepcopy(start.detector)
    state = state_path(work, start.name, doc["point"])
    if doc.get("finetune") and state.exists():
        det.model.load_state_dict(torch.load(state, map_location="cpu", weights_only=False)["model"])
    det.zero_layers(doc["layers"])
    return det
