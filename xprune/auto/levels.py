"""Where a pruned model's speed comes from: output levels that never fire on the search's images (removing them is
free: no object reaches them) or layers that detect. A level is silent when none of its outputs reaches the
head-levels threshold on those images (`xprune.evaluate.head_levels`); the silent region is what the fold removes
when the silent levels' head branches are zeroed (`Detector.level_head_layers`). The plan's layers whose every node
lies in that region are its silent part; `silent.onnx` (the unpruned model with only those zeroed) is timed beside
the pruned model, so the latency ratio splits into the silent levels' and the live layers' shares."""

from __future__ import annotations

from xprune.errors import XpruneError
from xprune.models.detector import Detector


def silent_split(det: Detector, layers: list[str], dataset) -> dict:
    """The silent levels of `det` on `dataset`, the plan's `layers` in their region and the MACs the fold removes
    there and elsewhere; `available` False (and why) for a family whose levels cannot be removed one by one."""
    from xprune.evaluate.head_levels import level_usage, silent_levels
    from xprune.export.fold.analysis import FoldAnalysis

    try:
        usage = level_usage(det, dataset)
    except XpruneError as e:
        return {"available": False, "why": str(e)}
    silent = silent_levels(usage)
    record = {"available": True, "images": usage["images"], "threshold": usage["threshold"],
              "levels": [{k: lv[k] for k in ("level", "above_threshold", "max_score")} for lv in usage["levels"]],
              "silent_levels": silent}
    try:
        head = [n for level in silent for n in det.level_head_layers(level)]
    except XpruneError as e:
        return {**record, "available": False, "why": str(e)}
    fold = FoldAnalysis.of(det)
    region = fold.outcome(head).removed_nodes if head else frozenset()
    removed = fold.outcome(layers).removed_nodes
    in_region = [n for n in layers if fold.nodes_of_layer.get(n) and
                 all(x.name in region for x in fold.nodes_of_layer[n])]
    total = fold.macs_before - fold.macs_after(layers)  # a fold also shrinks convs it keeps: not only removed nodes
    silent_macs = fold.node_macs(removed & region)
    return {**record, "silent_layers": in_region, "macs_before": fold.macs_before, "removed_macs": total,
            "silent_macs": silent_macs, "live_macs": total - silent_macs}
