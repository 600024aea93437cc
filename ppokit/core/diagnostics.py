"""Update diagnostics and the PPO debugging checklist turned into live warnings."""

from __future__ import annotations

import math
from typing import Mapping

from torch import Tensor

from ppokit.core.advantages import masked_var


def explained_variance(predicted: Tensor, target: Tensor, mask: Tensor | None = None) -> float:
    r"""Explained variance :math:`1 - \mathrm{Var}[y - \hat y] / \mathrm{Var}[y]`.

    1 is a perfect value function, 0 is no better than predicting the mean, negative is worse.
    NaN when the targets have no variance.
    """
    var_y = masked_var(target, mask)
    if float(var_y) == 0.0:
        return float("nan")
    return float(1.0 - masked_var(target - predicted, mask) / var_y)


def health_warnings(
    stats: Mapping[str, float],
    *,
    progress: float,
    initial_entropy: float | None,
    target_kl: float | None,
    normalize_reward: bool,
    shared_trunk: bool = True,
) -> list[tuple[str, str]]:
    """Check one update's statistics against the usual PPO debugging checklist.

    Returns ``(key, message)`` pairs; ``key`` lets the caller report each kind of trouble once.
    ``progress`` is the fraction of training done. The value-scale check only applies to a shared
    trunk, where the value gradient competes with the policy gradient for the same weights.
    """
    found: list[tuple[str, str]] = []
    clip_fraction = stats.get("clip_fraction", 0.0)
    if clip_fraction > 0.6:
        found.append((
            "clip_fraction",
            f"clip fraction {clip_fraction:.2f} > 0.6: most samples hit the clip, so the step is too "
            "big for the trust region; lower the learning rate or the number of epochs, or raise "
            "clip_range",
        ))
    entropy = stats.get("entropy")
    if (
        entropy is not None
        and initial_entropy is not None
        and progress < 0.25
        and initial_entropy > 0
        and entropy < 0.1 * initial_entropy
    ):
        found.append((
            "entropy_collapse",
            f"entropy fell to {entropy:.3g} from {initial_entropy:.3g} in the first quarter of "
            "training: the policy stopped exploring early; raise ent_coef or lower the learning rate",
        ))
    value_loss = stats.get("value_loss", 0.0)
    policy_loss = abs(stats.get("policy_loss", 0.0))
    if shared_trunk and value_loss > 100.0 * max(policy_loss, 1e-3) and value_loss > 10.0 and not normalize_reward:
        found.append((
            "value_scale",
            f"value loss {value_loss:.3g} dwarfs the policy loss {policy_loss:.3g}: the value "
            "gradient dominates a shared optimiser; set normalize_reward=true (or lower vf_coef)",
        ))
    approx_kl = stats.get("approx_kl_k3", 0.0)
    kl_limit = 4.0 * target_kl if target_kl else 0.2
    if math.isfinite(approx_kl) and approx_kl > kl_limit:
        found.append((
            "kl",
            f"approx KL {approx_kl:.3g} is far above {'the target' if target_kl else 'the usual range'}"
            f" ({kl_limit:.3g}): updates move the policy too far; lower the learning rate or epochs",
        ))
    ev = stats.get("explained_variance", float("nan"))
    if math.isfinite(ev) and ev < -0.5 and progress > 0.2:
        found.append((
            "value_fit",
            f"explained variance {ev:.2f} < 0 after {progress:.0%} of training: the value function "
            "predicts worse than a constant; check reward scale, gamma, or the value learning rate",
        ))
    return found

