"""Where a frontier model starts: its reference checkpoint (random initialisation in the quick preset), with a silent
output level removed first where the model asks for it, and what every point of it shares (the data splits, the
fold analysis, each criterion's scores, the teacher)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from xprune.errors import XpruneError
from xprune.frontier.settings import MODELS, FrontierSettings
from xprune.models.detector import Detector

Log = Callable[[str], None]


@dataclass
class ModelStart:
    """One frontier model ready for its points."""

    name: str
    detector: Detector  # the start: reference weights, its removed level zeroed
    held: list[str]  # layers zero in the start (the removed level), held at zero by every point's fine-tuning
    record: dict  # what the point files say of the start
    val: object
    calib: object
    train: object
    data: Path  # the dataset the splits come from
    _scores: dict = field(default_factory=dict)
    _fold: object = None

    @property
    def fold(self):
        from xprune.export.fold.analysis import FoldAnalysis

        if self._fold is None:
            self._fold = FoldAnalysis.of(self.detector)
        return self._fold

    def scores(self, criterion: str, seed: int) -> dict:
        """The criterion's scores of the start's layers on the calib split (computed once per run)."""
        from xprune.importance.criteria import get_criterion
        from xprune.importance.scores import score_layers

        if criterion not in self._scores:
            needs = get_criterion(criterion).needs_data
            self._scores[criterion] = score_layers(self.detector, criterion, self.calib if needs else None,
                                                   batch_size=4, seed=seed)
        return self._scores[criterion]

    def full_target(self, target: float) -> float:
        """A target given as a fraction of the start's folded MACs, as the fraction of the unfolded export that
        `plan_for_target` counts in (the start's zero layers count towards it there)."""
        return 1.0 - (1.0 - target) * self.fold.macs_after() / self.fold.macs_before


def load_reference(family: str, s: FrontierSettings, num_classes: int) -> tuple[Detector, dict]:
    from xprune.files import file_sha256
    from xprune.models import build_detector, load_checkpoint
    from xprune.reference import reference_models

    if s.weights == "none":
        det = build_detector(family, "none", num_classes=num_classes, input_size=s.size)
        return det, {"weights": "random initialisation (seed 0)"}
    refs = reference_models()
    if family not in refs:
        raise XpruneError(f"no reference checkpoint of {family} in this cache: build it with "
                          f"`python benchmarks/train_reference.py {family}` (or `xprune study --train-missing`)")
    path = Path(refs[family]["path"])
    return load_checkpoint(path, family, s.size), {"weights": path.name, "weights_sha256": file_sha256(path)}


def prepare(name: str, s: FrontierSettings, data: Path, log: Log) -> ModelStart:
    """Load the model's start and its data; with a level to remove, check on val that it never fires (no output
    above the head-levels threshold) and record what its removal costs and saves."""
    import torch

    from xprune.data.coco import CocoDetectionSet, calibration_set
    from xprune.evaluate.coco_map import evaluate_map
    from xprune.evaluate.head_levels import level_usage
    from xprune.prune.finetune import train_split

    torch.manual_seed(s.seed)
    start = MODELS[name]
    val = CocoDetectionSet.from_folder(data, "val", s.size, limit=s.val_images)
    if len(val) == 0:
        raise XpruneError(f"the val split of {data} has no images")
    calib = calibration_set(data, s.size, s.calib_images)
    train = train_split(data, s.size, s.train_images)
    det, weights = load_reference(start.family, s, val.num_classes)
    if det.category_ids is None and det.num_classes != val.num_classes:
        raise XpruneError(f"{start.family} has {det.num_classes} classes, the dataset {val.num_classes}")
    record: dict = {"model": name, "family": start.family, "describe": start.describe(), **weights}
    held: list[str] = []
    if start.remove_level:
        log(f"[{name}] checking that the {start.remove_level} level never fires on val")
        usage = level_usage(det, val)
        level = next(lv for lv in usage["levels"] if lv["level"] == start.remove_level)
        if level["above_threshold"] and s.weights != "none":
            raise XpruneError(f"{start.family}'s {start.remove_level} level is not silent on this data: "
                              f"{level['above_threshold']} outputs above {usage['threshold']}")
        reference_map = evaluate_map(det, val)["map"]
        fold_before = _exported_macs(det)
        held = det.level_head_layers(start.remove_level)
        det.zero_layers(held)
        after = _exported_macs(det)
        record["removed_level"] = {"level": start.remove_level, "usage": usage, "layers": held,
                                   "reference_map": reference_map, "map": evaluate_map(det, val)["map"],
                                   "macs_before": fold_before, "macs_after": after,
                                   "removed_mac_fraction": 1 - after / fold_before}
        log(f"[{name}] removing {start.remove_level} takes {100 * (1 - after / fold_before):.1f} % of the MACs; "
            f"val mAP {reference_map:.4f} -> {record['removed_level']['map']:.4f}")
    record["start_sha256"] = det.state_sha256()
    # the start's folded export: what the targets are fractions of (measured already when a level was removed)
    record["macs"] = record["removed_level"]["macs_after"] if held else _exported_macs(det)
    return ModelStart(name, det, held, record, val, calib, train, Path(data))


def _exported_macs(det: Detector) -> int:
    """MACs of the detector's folded ONNX export (no file kept)."""
    import tempfile

    from xprune.export.onnx_export import export_onnx

    with tempfile.TemporaryDirectory(prefix="xprune-frontier-") as tmp:
        return export_onnx(det, Path(tmp) / "m.onnx", fold=True)["macs_after"]
