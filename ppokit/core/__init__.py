"""The PPO algorithm as pure tensor functions.

Nothing in here knows about environments, tokens or files: both front ends (control and RLHF) call
these functions, so each piece of maths exists exactly once.
"""

from ppokit.core.advantages import discounted_returns, gae, masked_mean, masked_var, masked_whiten
from ppokit.core.kl import AdaptiveClipController, AdaptiveKLController, kl_k1, kl_k2, kl_k3
from ppokit.core.losses import (
    clipped_surrogate_loss,
    entropy_bonus,
    kl_penalty_surrogate_loss,
    value_loss,
)
from ppokit.core.running_stats import RunningMeanStd
from ppokit.core.schedules import Schedule, make_schedule
from ppokit.core.update import PPOUpdateSettings, ppo_update
from ppokit.core.diagnostics import explained_variance, health_warnings

__all__ = [
    "AdaptiveClipController",
    "AdaptiveKLController",
    "PPOUpdateSettings",
    "RunningMeanStd",
    "Schedule",
    "clipped_surrogate_loss",
    "discounted_returns",
    "entropy_bonus",
    "explained_variance",
    "gae",
    "health_warnings",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_penalty_surrogate_loss",
    "make_schedule",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "ppo_update",
    "value_loss",
]
