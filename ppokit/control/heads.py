r"""Action distributions as small network heads, written in closed form.

Each head maps trunk features to distribution parameters and knows how to sample, take the mode,
and compute log-probabilities and entropies from those parameters. The formulas are the ones
``torch.distributions`` uses (the tests check them against it); writing them inline lets the rollout
and the update skip building a distribution object and validating its arguments on every step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

_LOG_2PI = math.log(2.0 * math.pi)


class CategoricalHead(nn.Module):
    r"""Discrete actions: :math:`\pi(a|s) = \mathrm{softmax}(\text{logits})_a`."""

    def __init__(self, in_features: int, n: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, n)

    def forward(self, features: Tensor) -> Tensor:
        return torch.log_softmax(self.linear(features), dim=-1)

    @staticmethod
    def sample(log_probs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor]:
        if deterministic:
            action = log_probs.argmax(dim=-1)
        else:
            action = torch.multinomial(log_probs.exp(), 1).squeeze(-1)
        return action, log_probs.gather(-1, action.unsqueeze(-1)).squeeze(-1)

    @staticmethod
    def log_prob_entropy(log_probs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        logp = log_probs.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
        entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
        return logp, entropy


class MultiCategoricalHead(nn.Module):
    """MultiDiscrete actions: independent categoricals, one per dimension; log-probs add up."""

    def __init__(self, in_features: int, nvec: list[int]) -> None:
        super().__init__()
        self.nvec = [int(n) for n in nvec]
        self.linear = nn.Linear(in_features, sum(self.nvec))

    def forward(self, features: Tensor) -> list[Tensor]:
        return [torch.log_softmax(x, dim=-1) for x in self.linear(features).split(self.nvec, dim=-1)]

    @staticmethod
    def sample(params: list[Tensor], deterministic: bool = False) -> tuple[Tensor, Tensor]:
        parts = [CategoricalHead.sample(lp, deterministic) for lp in params]
        actions = torch.stack([a for a, _ in parts], dim=-1)
        return actions, torch.stack([lp for _, lp in parts], dim=-1).sum(-1)

    @staticmethod
    def log_prob_entropy(params: list[Tensor], actions: Tensor) -> tuple[Tensor, Tensor]:
        parts = [CategoricalHead.log_prob_entropy(lp, actions[..., i]) for i, lp in enumerate(params)]
        return (
            torch.stack([p for p, _ in parts], dim=-1).sum(-1),
            torch.stack([e for _, e in parts], dim=-1).sum(-1),
        )


class GaussianHead(nn.Module):
    r"""Box actions: a diagonal Gaussian with a state-independent, learned log standard deviation.

    .. math::
        \log\pi(a|s) = -\sum_i \Big[\frac{(a_i - \mu_i(s))^2}{2\sigma_i^2} + \log\sigma_i
                        + \tfrac12\log 2\pi\Big], \qquad
        \mathcal H = \sum_i \big[\tfrac12 + \tfrac12\log 2\pi + \log\sigma_i\big]

    The sample is returned unclipped; the trainer clips what it sends to the env, so the stored
    action and its log-probability stay consistent.
    """

    def __init__(self, in_features: int, action_dim: int, log_std_init: float = 0.0) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, action_dim)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(log_std_init)))

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        # log_std stays a [action_dim] vector (broadcast, not expanded to the batch): its terms of
        # the log-probability and the entropy are then sums over a vector, not over [B, D] tensors
        # whose backward needs extra reductions.
        return self.linear(features), self.log_std

    @staticmethod
    def _log_prob(mean: Tensor, log_std: Tensor, actions: Tensor) -> Tensor:
        z = (actions - mean) * torch.exp(-log_std)
        dim = mean.shape[-1]
        return -0.5 * z.square().sum(-1) - (log_std.sum(-1) + dim * 0.5 * _LOG_2PI)

    @staticmethod
    def sample(params: tuple[Tensor, Tensor], deterministic: bool = False) -> tuple[Tensor, Tensor]:
        mean, log_std = params
        if deterministic:
            action = mean
        else:
            action = mean + torch.exp(log_std) * torch.randn_like(mean)
        return action, GaussianHead._log_prob(mean, log_std, action)

    @staticmethod
    def log_prob_entropy(params: tuple[Tensor, Tensor], actions: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = params
        entropy = (0.5 + 0.5 * _LOG_2PI + log_std).sum(-1).expand(mean.shape[:-1])
        return GaussianHead._log_prob(mean, log_std, actions), entropy
