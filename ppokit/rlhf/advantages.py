"""From a rollout's scores and log-probabilities to per-token rewards, advantages and returns.

Pure tensor functions, with no model in sight, so they are tested on hand-made tensors:

    r_t  = −β·KL_t  (+ s at the last valid token)          per_token_rewards
    Â, R̂ = GAE(γ, λ) over the completion tokens           ppokit.core.advantages.gae
    Â    ← whitened over the batch's valid tokens          ppokit.core.advantages.masked_whiten
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ppokit.core.advantages import gae, masked_whiten
from ppokit.core.collective import Collective
from ppokit.core.kl import KL_ESTIMATORS


def per_token_rewards(
    scores: Tensor,
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    kl_coef: float,
    estimator: str = "k1",
) -> tuple[Tensor, Tensor]:
    r"""The RLHF reward of every completion token (Ziegler et al., 2019; Ouyang et al., 2022).

    .. math::
        r_t = -\beta\,\widehat{\mathrm{KL}}_t + [t = T_{last}]\,s, \qquad
        \widehat{\mathrm{KL}}_t = k\big(\log\pi_{ref}(y_t) - \log\pi(y_t)\big)

    with :math:`k` the chosen estimator of :math:`\mathrm{KL}(\pi\,\|\,\pi_{ref})` (``k1``: the
    log-ratio :math:`\log\pi - \log\pi_{ref}`; ``k3``: :math:`(\rho - 1) - \log\rho`, never negative),
    :math:`s` the sequence's score, and :math:`T_{last}` its last valid token (the EOS, or the last
    token when it ran out of length). Padding gets nothing.

    Returns ``(rewards, kl)``, both ``[B, T]`` and zero on padding.
    """
    if not (scores.ndim == 1 and logp.shape == ref_logp.shape == mask.shape and scores.shape[0] == logp.shape[0]):
        raise ValueError(
            f"per_token_rewards: scores [B] and logp/ref_logp/mask [B, T] expected, got {tuple(scores.shape)}, "
            f"{tuple(logp.shape)}, {tuple(ref_logp.shape)}, {tuple(mask.shape)}"
        )
    valid = mask.to(logp.dtype)
    kl = KL_ESTIMATORS[estimator](ref_logp - logp) * valid
    rewards = -kl_coef * kl
    last = (mask.long().sum(-1) - 1).clamp_min(0)
    has_any = mask.any(-1)
    rewards = rewards.scatter_add(1, last.unsqueeze(1), (scores * has_any.to(scores.dtype)).unsqueeze(1).to(rewards.dtype))
    return rewards, kl


@dataclass
class TokenAdvantages:
    """Per-token quantities of a batch of completions, all ``[B, T]`` and zero on padding."""

    #: The per-token reward: the KL penalty, plus the score at the last valid token.
    rewards: Tensor
    #: The per-token estimate of KL(policy || reference).
    kl: Tensor
    #: The critic's values of the rollout.
    values: Tensor
    #: GAE advantages (whitened over the valid tokens when asked).
    advantages: Tensor
    #: The value targets, advantages (before whitening) plus values.
    returns: Tensor


def token_advantages(
    scores: Tensor,
    logp: Tensor,
    ref_logp: Tensor,
    values: Tensor,
    mask: Tensor,
    *,
    kl_coef: float,
    kl_estimator: str,
    gamma: float,
    gae_lambda: float,
    whiten: bool,
    collective: Collective | None = None,
) -> TokenAdvantages:
    r"""Per-token rewards (:func:`per_token_rewards`), then GAE over the completion tokens.

    Each completion is one episode that ends at its last valid token, so nothing is bootstrapped
    past it: :math:`V'_t = V_{t+1}` inside the completion and 0 after its end. With ``whiten`` the
    advantages are whitened over the valid tokens of the whole batch (once, not per minibatch); with
    ``collective`` (data parallel), over the valid tokens of every process's batch.
    """
    rewards, kl = per_token_rewards(scores.float(), logp, ref_logp, mask, kl_coef, kl_estimator)
    values = values * mask.to(values.dtype)
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    last = (mask.long().sum(-1) - 1).clamp_min(0)
    ends = torch.zeros_like(mask).scatter_(1, last.unsqueeze(1), True)
    advantages, returns = gae(rewards.T, values.T, next_values.T, ends.T, gamma, gae_lambda)
    advantages, returns = advantages.T, returns.T
    if whiten and collective is not None and collective.active:
        _, _, mean, var = collective.moments(advantages, mask)
        advantages = masked_whiten(advantages, mask, moments=(mean, var))
    elif whiten:
        advantages = masked_whiten(advantages, mask)
    return TokenAdvantages(rewards, kl, values, advantages, returns)
