"""The PPO losses. Each returns a scalar to *minimise*, plus the statistics worth logging.

All take an optional boolean ``mask`` (RLHF padding); the mean runs over valid entries only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ppokit.core.advantages import masked_mean
from ppokit.core.kl import kl_k3


def clipped_surrogate_loss(
    logp_new: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    clip_range: float,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""The clipped surrogate objective of PPO (Schulman et al., 2017, eq. 7), negated.

    .. math::
        r_t = \frac{\pi_\theta(a_t|s_t)}{\pi_{\theta_{old}}(a_t|s_t)}, \qquad
        L^{CLIP} = -\,\mathbb{E}_t\Big[\min\big(r_t \hat A_t,\;
                    \mathrm{clip}(r_t, 1-\epsilon, 1+\epsilon)\,\hat A_t\big)\Big]

    The minimum makes the objective a pessimistic bound: a ratio that has moved past the clip in
    the direction the advantage favours earns nothing more (A>0, r=1.3 counts as 1.2), while a move
    in the harmful direction is always counted in full (A<0, r=1.3 counts as 1.3).

    Returns ``(loss, clip_fraction)`` where ``clip_fraction`` is the share of samples whose ratio
    lay outside ``[1-ε, 1+ε]``.
    """
    ratio = torch.exp(logp_new - logp_old)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range) * advantages
    loss = -masked_mean(torch.minimum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean(((ratio - 1.0).abs() > clip_range).to(ratio.dtype), mask)
    return loss, clip_fraction


def kl_penalty_surrogate_loss(
    logp_new: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    beta: float,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""PPO-Penalty: the surrogate with a KL penalty instead of a clip (Schulman et al., 2017, eq. 8).

    .. math::
        L^{KLPEN} = -\,\mathbb{E}_t\big[r_t \hat A_t - \beta\,\mathrm{KL}[\pi_{old}(\cdot|s_t),
                    \pi_\theta(\cdot|s_t)]\big]

    The per-state KL is estimated on the sampled action with the non-negative, unbiased
    :math:`k_3 = (r - 1) - \log r` estimator of :math:`\mathrm{KL}(\pi_{old}\|\pi_\theta)`; β is
    adapted between updates by :class:`~ppokit.core.kl.AdaptiveKLController`.

    Returns ``(loss, mean_kl)``.
    """
    log_ratio = logp_new - logp_old
    ratio = torch.exp(log_ratio)
    kl = kl_k3(log_ratio)
    loss = -masked_mean(ratio * advantages - beta * kl, mask)
    return loss, masked_mean(kl.detach(), mask)


def value_loss(
    values_new: Tensor,
    values_old: Tensor,
    returns: Tensor,
    clip_range_vf: float | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    r"""Squared-error value loss, optionally clipped around the rollout's values.

    .. math::
        L^{VF} = \tfrac12\,\mathbb{E}_t\big[(V_\theta(s_t) - \hat R_t)^2\big]

    With a clip range :math:`\epsilon_v` (as in OpenAI's baselines PPO2):

    .. math::
        V^{clip} = V_{old} + \mathrm{clip}(V_\theta - V_{old}, -\epsilon_v, \epsilon_v), \quad
        L^{VF} = \tfrac12\,\mathbb{E}_t\big[\max\big((V_\theta - \hat R_t)^2,
                 (V^{clip} - \hat R_t)^2\big)\big]
    """
    error = (values_new - returns).square()
    if clip_range_vf is not None:
        clipped = values_old + torch.clamp(values_new - values_old, -clip_range_vf, clip_range_vf)
        error = torch.maximum(error, (clipped - returns).square())
    return 0.5 * masked_mean(error, mask)


def reference_kl_loss(logp_new: Tensor, logp_ref: Tensor, mask: Tensor | None = None) -> Tensor:
    r"""The KL of the policy to a frozen reference as a loss term (Shao et al., 2024, GRPO, eq. 3–4).

    The sampled tokens :math:`y_t \sim \pi_{\theta_{old}} \approx \pi_\theta`, so with
    :math:`\rho_t = \pi_{ref}(y_t) / \pi_\theta(y_t)` the :math:`k_3` estimator of
    :math:`\mathrm{KL}(\pi_\theta \,\|\, \pi_{ref})` per token, averaged over the valid tokens, is

    .. math::
        L^{KL} = \mathbb{E}_t\big[\rho_t - \log\rho_t - 1\big], \qquad
        \frac{\partial L^{KL}}{\partial \log\pi_\theta(y_t)} = \frac{1 - \rho_t}{n}

    (:math:`n` the number of valid tokens): never negative, zero exactly where the policy agrees with
    the reference, and its gradient pulls :math:`\log\pi_\theta(y_t)` towards :math:`\log\pi_{ref}(y_t)`.
    It enters the total loss as :math:`L = L^{CLIP} + \beta\,L^{KL} + \dots` in place of a KL penalty
    in the reward; the mean runs over tokens like :func:`clipped_surrogate_loss`'s.
    """
    return masked_mean(kl_k3(logp_ref - logp_new), mask)


def entropy_bonus(entropy: Tensor, mask: Tensor | None = None) -> Tensor:
    r"""Mean policy entropy :math:`H = \mathbb{E}_t[\mathcal H(\pi_\theta(\cdot|s_t))]`.

    It enters the total loss with a minus sign, :math:`L = L^{CLIP} + c_1 L^{VF} - c_2 H`, so
    maximising entropy keeps exploration alive.
    """
    return masked_mean(entropy, mask)


def bradley_terry_loss(
    r_chosen: Tensor, r_rejected: Tensor, margin: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    r"""Pairwise reward-model loss under the Bradley-Terry preference model.

    The probability that a rater prefers :math:`y_c` over :math:`y_r` for prompt :math:`x` is
    modelled as :math:`P(y_c \succ y_r) = \sigma(r(x, y_c) - r(x, y_r))`, so the negative
    log-likelihood of the observed preferences is

    .. math:: L = -\mathbb{E}\big[\log \sigma\big(r_c - r_r - m\big)\big]

    with an optional per-pair margin :math:`m \ge 0` (0 by default). ``logsigmoid`` keeps it finite
    for large reward gaps. Returns ``(loss, accuracy)`` where accuracy is the fraction of pairs with
    :math:`r_c > r_r`.
    """
    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - margin
    loss = -torch.nn.functional.logsigmoid(diff).mean()
    accuracy = (r_chosen > r_rejected).to(r_chosen.dtype).mean().detach()
    return loss, accuracy
