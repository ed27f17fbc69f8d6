"""The channel-pruning peer of the frontier's layer pruning: Torch-Pruning 1.6 (DepGraph) removes channels of the
start until its folded export's MACs drop by the point's target, with magnitude or Taylor importance, so that the
frontier compares removing layers with removing channels at equal MACs and equal recovery.

`channel_pruned` is deterministic: the same (detector, target, criterion, calib, seed) gives the same architecture
and the same weights, so a point's fine-tuning state (a state dict) is resumed by pruning again and loading it.
`pruned_at_ratio` rebuilds the same model from the record's global ratio without the search.
"""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path
from typing import Callable

import torch

from xprune.errors import XpruneError
from xprune.frontier.peer_graph import (ignored_layers, loss_gradients, predictor_outputs, raw_shapes,
                                        split_free)
from xprune.models.detector import Detector

PEER_CRITERIA = ("tp-magnitude", "tp-taylor")
INSTALL = 'pip install "torch-pruning>=1.6,<1.7"'
TOLERANCE = 0.02  # the search stops once the reached fraction is within this of the target
MAX_RATIO = 0.95  # the largest global channel ratio tried
MAX_TRIALS = 12
TAYLOR_BATCH = 4
IMPORTANCE = {"tp-magnitude": "GroupMagnitudeImportance(p=2): L2 norm of each channel's weights over its group",
              "tp-taylor": "GroupTaylorImportance: |weight x gradient of train_step_loss| over each channel's group"}


def torch_pruning():
    """The torch_pruning module, or one line saying how to install the version this peer is written for."""
    try:
        import torch_pruning as tp
    except ImportError:
        raise XpruneError(f"channel pruning needs Torch-Pruning 1.6: {INSTALL}") from None
    if not torch_pruning_version().startswith("1.6."):
        raise XpruneError(f"channel pruning is written for Torch-Pruning 1.6, found {torch_pruning_version()}: "
                          f"{INSTALL}")
    return tp


def torch_pruning_version() -> str:
    """The installed distribution's version (the module's own `__version__` says 1.6.0 in release 1.6.1)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch-pruning")
    except PackageNotFoundError:
        import torch_pruning as tp
        return str(tp.__version__)


class ChannelPruning:
    """One detector prepared for Torch-Pruning: C2f blocks without their split, the layers to keep and, for Taylor,
    the loss gradients, computed once; `at(ratio)` prunes a fresh copy at a global channel ratio."""

    def __init__(self, det: Detector, criterion: str, calib, seed: int):
        if criterion not in PEER_CRITERIA:
            raise XpruneError(f"unknown channel-pruning criterion '{criterion}'; choose from: "
                              f"{', '.join(PEER_CRITERIA)}")
        if det.framework != "torch":
            raise XpruneError(f"{det.family}: Torch-Pruning prunes PyTorch models only")
        self.tp = torch_pruning()
        self.criterion, self.seed = criterion, seed
        self.base = copy.deepcopy(det)
        self.base.model.eval()
        self.shapes = raw_shapes(self.base)
        self.split = split_free(self.base.model)
        self.ignored = ignored_layers(self.base)
        self.gradients: dict[str, torch.Tensor] = {}
        self.calibration = None
        if criterion == "tp-taylor":
            if calib is None or len(calib) == 0:
                raise XpruneError("tp-taylor needs calibration images (the gradients of the family's loss)")
            self.gradients = loss_gradients(self.base, calib, seed, TAYLOR_BATCH)
            self.calibration = {"images": len(calib), "batch_size": TAYLOR_BATCH,
                                "loss": "train_step_loss, summed over batches in order, no augmentation"}

    def importance(self):
        if self.criterion == "tp-taylor":
            return self.tp.importance.GroupTaylorImportance()
        return self.tp.importance.GroupMagnitudeImportance(p=2)

    def at(self, ratio: float) -> Detector:
        """A copy of the prepared detector whose channels Torch-Pruning removed at the global `ratio`, in one step
        (the gradients Taylor reads are the prepared ones: every copy is ranked on the same scores)."""
        det = copy.deepcopy(self.base)
        model = det.model
        model.eval()  # tracing runs a forward: eval mode leaves BatchNorm statistics as they are
        names = {n for n, p in model.named_parameters()}
        for name, p in model.named_parameters():
            p.grad = self.gradients[name].clone() if name in self.gradients else None
        convs = det.conv_layers()
        example = torch.zeros(1, 3, det.input_size, det.input_size)
        with torch.enable_grad():
            try:  # building the dependency graph is where an architecture it cannot index through fails
                pruner = self.tp.pruner.BasePruner(
                    model, example, self.importance(), global_pruning=True, pruning_ratio=ratio,
                    ignored_layers=[convs[e["layer"]] for e in self.ignored],
                    forward_fn=lambda module, x: predictor_outputs(det, x))
            except Exception as e:  # ZeroDivisionError, IndexError...: Torch-Pruning's, not the user's
                raise XpruneError(f"Torch-Pruning {torch_pruning_version()} cannot trace {det.family}'s channel "
                                  f"dependencies ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                                  ) from None
            pruner.step()
        model.zero_grad(set_to_none=True)
        if {n for n, p in model.named_parameters()} != names:
            raise XpruneError(f"{det.family}: Torch-Pruning removed whole parameters, not channels")
        shapes = raw_shapes(det)
        if shapes != self.shapes:
            raise XpruneError(f"{det.family}: channel pruning changed the raw output shapes {self.shapes} -> "
                              f"{shapes}; a head layer that fixes them is not among the ignored layers")
        return det

    def describe(self, ratio: float) -> dict:
        return {"criterion": self.criterion, "importance": IMPORTANCE[self.criterion],
                "torch_pruning": torch_pruning_version(), "pruner": "BasePruner, global ranking, one step",
                "pruning_ratio": ratio, "seed": self.seed, "calibration": self.calibration,
                "ignored": self.ignored, "split_convs": self.split}


def exported_macs(det: Detector) -> int:
    """MACs of the detector's folded ONNX export (`export_onnx`'s macs_after; no file kept)."""
    from xprune.export.onnx_export import export_onnx

    with tempfile.TemporaryDirectory(prefix="xprune-peer-") as tmp:
        return export_onnx(det, Path(tmp) / "m.onnx", fold=True)["macs_after"]


def search_ratio(removed_at: Callable[[float], float], target: float, tolerance: float = TOLERANCE,
                 max_trials: int = MAX_TRIALS) -> tuple[float, list[dict]]:
    """The smallest global channel ratio found whose removed MAC fraction is >= `target`, and every trial.

    The first guess assumes MACs fall as the square of the kept channels (ratio 1 - sqrt(1 - target)). Below the
    target, the next guess scales the ratio by target / reached (at most x3, at least +0.02, up to MAX_RATIO);
    once the target is bracketed, the next ratio interpolates the reached fractions linearly inside the bracket
    (kept a tenth of the bracket away from its ends, so that it shrinks). It stops when the reached fraction is
    within `tolerance` of the target, when the bracket is under 0.001 wide, or after `max_trials`; the pruning is
    a step function of the ratio (whole channels), so the last bracket may be wider than `tolerance`. A pure
    function of `removed_at`: deterministic when it is."""
    lo, lo_f = 0.0, 0.0
    hi: float | None = None
    hi_f = 0.0
    trials: list[dict] = []
    ratio = 1.0 - math.sqrt(1.0 - target)
    for _ in range(max_trials):
        reached = removed_at(ratio)
        trials.append({"pruning_ratio": ratio, "removed_fraction": reached})
        if reached >= target:
            hi, hi_f = ratio, reached
            if reached - target <= tolerance:
                break
        else:
            lo, lo_f = ratio, reached
        if hi is None:
            if lo >= MAX_RATIO:
                break
            grown = lo * target / lo_f if lo_f > 0 else 3 * lo
            ratio = min(MAX_RATIO, max(min(grown, 3 * lo), lo + 0.02))
            continue
        if hi - lo < 1e-3:
            break
        guess = lo + (hi - lo) * (target - lo_f) / (hi_f - lo_f)
        ratio = min(max(guess, lo + 0.1 * (hi - lo)), hi - 0.1 * (hi - lo))
    if hi is None:
        raise XpruneError(f"channel pruning at ratio {MAX_RATIO} removes {trials[-1]['removed_fraction']:.1%} of "
                          f"the exported MACs, short of the target {target:.1%}")
    return hi, trials


def channel_pruned(det: Detector, target: float, criterion: str, calib, seed: int = 0) -> tuple[Detector, dict]:
    """A deep copy of `det` whose channels Torch-Pruning 1.6 removed until its folded ONNX export's MACs
    (`export_onnx`'s macs_after) dropped by at least `target`, a fraction of `det`'s own folded export MACs.

    `criterion`: 'tp-magnitude' (the group L2 norm of each channel's weights) or 'tp-taylor' (|weight x gradient|
    over each channel's group, the gradients of `det.train_step_loss` summed over the `calib` images in batches of
    4, computed on a copy with torch.manual_seed(seed)). Channels are ranked globally and removed in one step at a
    global ratio that `search_ratio` finds, pruning a fresh copy at each tried ratio and measuring its export;
    the result is the smallest tried ratio that reaches the target, usually within 2 points above it.

    Before pruning, Ultralytics' C2f blocks are rewritten without their channel split (`peer_graph.SplitFreeC2f`,
    same outputs; record['split_convs'] maps each old `cv1` conv to its two halves) and the final predictors, the
    DFL conv and all-zero convs are left out of the pruning (record['ignored'], with why), so the raw outputs keep
    their shapes. The result is deterministic: the same inputs give the same architecture and state dict.

    Returns the pruned detector (eval mode, no gradients, meta['channel_pruning'] = the record) and the record: the
    criterion, the torch-pruning version, the global ratio, the MACs before and after (measured on the export),
    the removed fraction, the search's trials, the layers ignored and why."""
    if not 0.0 < target < 1.0:
        raise XpruneError(f"the removed-MAC target must be in (0, 1), got {target}")
    pruning = ChannelPruning(det, criterion, calib, seed)
    before = exported_macs(det)
    found: dict[float, tuple[Detector, int]] = {}

    def removed_at(ratio: float) -> float:
        pruned = pruning.at(ratio)
        found[ratio] = pruned, exported_macs(pruned)
        return 1.0 - found[ratio][1] / before

    ratio, trials = search_ratio(removed_at, target)
    pruned, after = found[ratio]
    record = {**pruning.describe(ratio), "target": target, "macs_before": before, "macs_after": after,
              "removed_fraction": 1.0 - after / before, "search": trials}
    pruned.meta = {**det.meta, "channel_pruning": record}
    return pruned.eval(), record


def pruned_at_ratio(det: Detector, ratio: float, criterion: str, calib, seed: int = 0) -> Detector:
    """The detector `channel_pruned` returns for a record whose 'pruning_ratio' is `ratio` (same `det`, criterion,
    calib and seed), pruned once without the search: how a fine-tuning state is resumed cheaply."""
    if not 0.0 < ratio < 1.0:
        raise XpruneError(f"the channel pruning ratio must be in (0, 1), got {ratio}")
    pruned = ChannelPruning(det, criterion, calib, seed).at(ratio)
    return pruned.eval()
