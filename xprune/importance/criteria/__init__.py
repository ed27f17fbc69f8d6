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

A new criterion is one `Criterion` subclass and one line in `CRITERIA`. A family in another framework scores
with that framework's classes of the same criteria (`criterion_for` picks them by the detector's `framework`):
the JAX ones are in `jax_criteria`.
"""

from __future__ import annotations

from typing import Callable

from xprune.errors import XpruneError
from xprune.importance.criteria.activation import HRank
from xprune.importance.criteria.base import Batch, Criterion
from xprune.importance.criteria.gradient import Attribution, Taylor
from xprune.importance.criteria.gradshap import GradientShap
from xprune.importance.criteria.weights import L1, RandomScores
from xprune.models.detector import Detector

CRITERIA: dict[str, Criterion] = {c.name: c for c in (L1(), Attribution(), Taylor(), HRank(), RandomScores(),
                                                      GradientShap())}

__all__ = ["CRITERIA", "Attribution", "Batch", "Criterion", "GradientShap", "HRank", "L1", "RandomScores", "Taylor",
           "criterion_for", "get_criterion"]


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise XpruneError(f"unknown scoring method '{name}'; choose one of: {', '.join(CRITERIA)}")
    return CRITERIA[name]


def _jax_criteria() -> dict[str, Criterion]:
    from xprune.importance.criteria.jax_criteria import JAX_CRITERIA  # JAX is imported only for a JAX detector
    return JAX_CRITERIA


# framework (a detector's `framework`) -> (its name in an error line, the criteria computed in it)
FRAMEWORK_CRITERIA: dict[str, tuple[str, Callable[[], dict[str, Criterion]]]] = {
    "torch": ("PyTorch", lambda: CRITERIA),
    "jax": ("JAX", _jax_criteria),
}


def criterion_for(detector: Detector, name: str) -> Criterion:
    """Criterion `name` as computed in the detector's framework; one line when that framework does not compute it."""
    get_criterion(name)
    title, criteria = FRAMEWORK_CRITERIA[detector.framework]
    available = criteria()
    if name not in available:
        raise XpruneError(f"method '{name}' is not available for {detector.family} ({title}); "
                          f"choose one of: {', '.join(available)}")
    return available[name]
