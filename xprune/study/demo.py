"""What `xprune demo` cannot run on this machine, said in one line instead of silently running fewer models."""

from __future__ import annotations


def demo_models_left_out(models: list[str] | None = None) -> str | None:
    """A line naming the `DEMO_MODELS` the demo leaves out because their family cannot run here (the JAX family
    without the `jax` extra: `reference_models` skips it), or None when it runs them all or the models were named
    (`--models`)."""
    from xprune.errors import XpruneError
    from xprune.models.zoo import FAMILIES
    from xprune.study.settings import DEMO_MODELS

    if models:
        return None
    reasons: dict[str, str] = {}
    for m in DEMO_MODELS:
        try:
            FAMILIES[m].check_available()
        except XpruneError as e:
            reasons[m] = str(e)
    if not reasons:
        return None
    return f"demo: {', '.join(reasons)} left out: {'; '.join(dict.fromkeys(reasons.values()))}"
