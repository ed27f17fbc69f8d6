"""Layer importance criteria, one class each. A criterion maps a detector (and, if data-driven, calibration
batches) to {conv name: score}; a lower score means less important, pruned first. Scores are finite and >= 0; a
conv that the forward pass never executes scores 0 under the activation-based criteria.

- l1:       S = sum |W|                                (weight magnitude; data-free)
- attr:     S = E_x[ sum_i |dL/dA_i * A_i| ]          (gradient x activation of the conv's output A under the
                                                        detector's own training loss L; "SHAP-inspired")
- taylor:   S = sum_b |sum_w dL_b/dw * w| / images    (first-order Taylor estimate of the loss change when the
                                                        layer's weights are zeroed; Molchanov et al. 2017/2019)
- hrank:    S = mean over images and channels of rank((W*x)_c)   (HRank, Lin et al. 2020; forward only)
- random:   S ~ U(0, 1), seeded                        (baseline)
- gradshap: S = E_x[ sum_i |GradientSHAP_i| ]          (Captum's LayerGradientShap on the conv output, zero-image
                                                        baseline, the detector's loss as the explained scalar)

A new criterion is one `Criterion` subclass and one line in `CRITERIA`.
"""

from __future__ import annotations

from xprune.errors import XpruneError
from xprune.importance.criteria.activation import HRank
from xprune.importance.criteria.base import Batch, Criterion
from xprune.importance.criteria.gradient import Attribution, Taylor
from xprune.importance.criteria.gradshap import GradientShap
from xprune.importance.criteria.weights import L1, RandomScores

CRITERIA: dict[str, Criterion] = {c.name: c for c in (L1(), Attribution(), Taylor(), HRank(), RandomScores(),
                                                      GradientShap())}

__all__ = ["CRITERIA", "Attribution", "Batch", "Criterion", "GradientShap", "HRank", "L1", "RandomScores", "Taylor",
           "get_criterion"]


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise XpruneError(f"unknown scoring method '{name}'; choose one of: {', '.join(CRITERIA)}")
    return CRITERIA[name]
