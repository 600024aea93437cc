"""From a rollout's scores and log-probabilities to per-token rewards, advantages and returns.

Pure tensor functions, with no model in sight, so they are tested on hand-made tensors:

    r_t  = −β·KL_t  (+ s at the last valid token)          per_token_rewards
    Â, R̂ = GAE(γ, λ) over the completion tokens           ppokit.core.advantages.gae
    Â    ← whitened over the batch's valid tokens          ppokit.core.advantages.masked_whiten

or, with no critic (:func:`critic_free_advantages`; :func:`estimate_advantages` picks by the config),
from the same per-token rewards:

    grpo          Â_i = (R_i − mean_group) / (std_group + ε),  R_i = Σ_t r_t   ppokit.core.advantages.group_normalized
    rloo          Â_i = R_i − mean of the group's other R_j                   ppokit.core.advantages.leave_one_out
    reinforce_pp  Â_t = Σ_{s≥t} γ^{s−t} r_s, whitened over the batch         ppokit.core.advantages.discounted_returns

Where the KL to the reference goes (:class:`KLPlacement`): into r_t (β·KL_t with ``kl_estimator``), or,
with ``kl_in: loss``, into the loss (:func:`ppokit.core.losses.reference_kl_loss`, k3) and r_t is the
score alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ppokit.core.advantages import discounted_returns, gae, group_normalized, leave_one_out, masked_whiten
from ppokit.core.collective import Collective
from ppokit.core.kl import KL_ESTIMATORS

if TYPE_CHECKING:
    from ppokit.rlhf.config import RLHFConfig

#: The advantage estimators that need no critic (no value model is built, trained or saved).
CRITIC_FREE = ("grpo", "rloo", "reinforce_pp")
#: The ε of GRPO's group normalisation (as in TRL's GRPOTrainer).
GROUP_EPS = 1e-4


def uses_critic(advantage: str) -> bool:
    """Whether the advantage estimator ``advantage`` learns a value function (only 'gae' does)."""
    return advantage not in CRITIC_FREE


@dataclass(frozen=True)
class KLPlacement:
    """Where a run puts the KL to the reference, decided once (:meth:`of`): a per-token penalty in the
    reward, or a k3 term in the loss. β itself lives in the trainer's controller; this says where it goes."""

    #: Whether the KL is a loss term (else a penalty in the reward).
    in_loss: bool
    #: The per-token estimator of the KL the rollout reports (and, in the reward, penalises): the
    #: config's ``kl_estimator`` in the reward, k3 (the loss term's) in the loss.
    estimator: str

    @classmethod
    def of(cls, advantage: str, kl_in: str, kl_estimator: str = "k1") -> KLPlacement:
        """``kl_in`` itself, or for 'auto' where the method's paper puts it (GRPO: a loss term;
        PPO-RLHF, RLOO and REINFORCE++: a per-token penalty in the reward)."""
        in_loss = advantage == "grpo" if kl_in == "auto" else kl_in == "loss"
        return cls(in_loss, "k3" if in_loss else kl_estimator)

    def reward_beta(self, beta: float) -> float:
        """The weight of the KL penalty in the reward: β, or 0 when the KL is in the loss."""
        return 0.0 if self.in_loss else beta

    def loss_beta(self, beta: float) -> float:
        """The weight of the KL loss term: β, or 0 when the KL is in the reward."""
        return beta if self.in_loss else 0.0


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
    #: β of the KL penalty in ``rewards`` (0 when the KL is a loss term instead).
    kl_coef: float = 0.0


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
    ends = _last_tokens(mask)
    advantages, returns = gae(rewards.T, values.T, next_values.T, ends.T, gamma, gae_lambda)
    advantages, returns = advantages.T, returns.T
    if whiten:
        advantages = _whiten(advantages, mask, collective)
    return TokenAdvantages(rewards, kl, values, advantages, returns, kl_coef)


def critic_free_advantages(
    method: str,
    scores: Tensor,
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    *,
    kl_coef: float,
    kl_estimator: str,
    group_size: int,
    gamma: float = 1.0,
    collective: Collective | None = None,
) -> TokenAdvantages:
    r"""Advantages without a critic, for the clipped surrogate of :func:`ppokit.core.update.ppo_update`.

    Every method starts from the per-token rewards of :func:`per_token_rewards`,
    :math:`r_t = -\beta\,\widehat{\mathrm{KL}}_t + [t = T_{last}]\,s` (``kl_coef`` = 0 when the KL
    goes into the loss instead), so a completion's sequence reward is
    :math:`R_i = \sum_t r_{i,t} = s_i - \beta\sum_t \widehat{\mathrm{KL}}_{i,t}`. The rows are
    ``group_size`` completions of one prompt after another (:func:`ppokit.rlhf.ppo.rollout.collect`).

    - ``grpo`` (Shao et al., 2024): :math:`\hat A_{i,t} = (R_i - \operatorname{mean}_g R) /
      (\operatorname{std}_g R + \epsilon)` for every token of completion :math:`i`
      (:func:`~ppokit.core.advantages.group_normalized`, :math:`\epsilon` = :data:`GROUP_EPS`);
    - ``rloo`` (Ahmadian et al., 2024): :math:`\hat A_{i,t} = R_i - \frac{1}{G-1}\sum_{j\ne i} R_j`
      for every token of completion :math:`i` (:func:`~ppokit.core.advantages.leave_one_out`);
    - ``reinforce_pp`` (Hu, 2025, REINFORCE++): the discounted return of every token,
      :math:`G_t = \sum_{s \ge t} \gamma^{s-t} r_s` within the completion, whitened over the valid
      tokens of the whole batch (with ``collective``, of every process's batch):
      :math:`\hat A_t = (G_t - \mu) / \sqrt{\sigma^2 + 10^{-8}}`.

    grpo and rloo are not whitened again (their groups already set the scale and the baseline;
    whitening over the batch would change the method), and they need no ``collective``: a group
    never spans processes. ``values`` come back as zeros (there is no critic) and ``returns`` as
    :math:`R_i` (grpo, rloo) or :math:`G_t` (reinforce_pp), for the record only.
    """
    if method not in CRITIC_FREE:
        raise ValueError(f"critic_free_advantages: method must be one of {', '.join(CRITIC_FREE)}, got {method!r}")
    rewards, kl = per_token_rewards(scores.float(), logp, ref_logp, mask, kl_coef, kl_estimator)
    valid = mask.to(rewards.dtype)
    if method == "reinforce_pp":
        zeros = torch.zeros_like(rewards)
        returns = discounted_returns(rewards.T, zeros.T, _last_tokens(mask).T, gamma).T * valid
        advantages = _whiten(returns, mask, collective)
    else:
        sequence = rewards.sum(-1)
        per_completion = (group_normalized(sequence, group_size, GROUP_EPS) if method == "grpo"
                          else leave_one_out(sequence, group_size))
        advantages = per_completion.unsqueeze(1) * valid
        returns = sequence.unsqueeze(1) * valid
    return TokenAdvantages(rewards, kl, torch.zeros_like(rewards), advantages, returns, kl_coef)


def estimate_advantages(config: RLHFConfig, scores: Tensor, logp: Tensor, ref_logp: Tensor, values: Tensor,
                        mask: Tensor, placement: KLPlacement, kl_coef: float,
                        collective: Collective | None = None) -> TokenAdvantages:
    """The advantages ``config.advantage`` names: :func:`token_advantages` (gae, with the critic's
    ``values``) or :func:`critic_free_advantages`. Where ``placement`` puts the KL into the reward, it
    goes there with β = ``kl_coef``; where it puts it into the loss, the reward gets none (β = 0) and
    the KL is measured with the loss's k3 for the record."""
    c = config
    beta, estimator = placement.reward_beta(kl_coef), placement.estimator
    if uses_critic(c.advantage):
        return token_advantages(scores, logp, ref_logp, values, mask, kl_coef=beta, kl_estimator=estimator,
                                gamma=c.gamma, gae_lambda=c.gae_lambda, whiten=c.whiten_advantages,
                                collective=collective)
    return critic_free_advantages(c.advantage, scores, logp, ref_logp, mask, kl_coef=beta, kl_estimator=estimator,
                                  group_size=c.num_generations, gamma=c.gamma, collective=collective)


def _last_tokens(mask: Tensor) -> Tensor:
    """``[B, T]`` bool, true at each completion's last valid token, where its episode ends."""
    last = (mask.long().sum(-1) - 1).clamp_min(0)
    return torch.zeros_like(mask).scatter_(1, last.unsqueeze(1), True)


def _whiten(advantages: Tensor, mask: Tensor, collective: Collective | None) -> Tensor:
    """Whiten over the valid tokens of the batch, or of every process's batch (data parallel)."""
    if collective is not None and collective.active:
        _, _, mean, var = collective.moments(advantages, mask)
        return masked_whiten(advantages, mask, moments=(mean, var))
    return masked_whiten(advantages, mask)
