r"""Action distributions as small network heads, written in closed form.

Each head maps trunk features to distribution parameters and knows how to sample, take the mode,
and compute log-probabilities and entropies from those parameters. The formulas are the ones
``torch.distributions`` uses (the tests check them against it); writing them inline lets the rollout
and the update skip building a distribution object and validating its arguments on every step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

_LOG_2PI = math.log(2.0 * math.pi)


def masked_log_softmax(logits: Tensor, mask: Tensor | None) -> Tensor:
    r"""Log-probabilities with the actions where ``mask`` is false removed: their logits are
    :math:`-\infty`, so they get probability 0 and the valid ones share all of it. A row with no valid
    action at all keeps every action (an env bug must not produce NaNs)."""
    if mask is None:
        return torch.log_softmax(logits, dim=-1)
    mask = mask.to(torch.bool) | ~mask.to(torch.bool).any(-1, keepdim=True)
    return torch.log_softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)


def categorical_entropy(log_probs: Tensor) -> Tensor:
    r""":math:`-\sum_a p_a \log p_a`, with masked actions (:math:`p_a = 0`, :math:`\log p_a = -\infty`)
    contributing 0 rather than NaN."""
    # Zero the masked log-probs before the product, not after: where() after 0 * -inf would still
    # send NaN into the gradient.
    finite = torch.where(torch.isfinite(log_probs), log_probs, torch.zeros_like(log_probs))
    return -(log_probs.exp() * finite).sum(dim=-1)


class CategoricalHead(nn.Module):
    r"""Discrete actions: :math:`\pi(a|s) = \mathrm{softmax}(\text{logits})_a`, over the valid actions
    when an action mask is given."""

    def __init__(self, in_features: int, n: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, n)

    def forward(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        return masked_log_softmax(self.linear(features), mask)

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
        return logp, categorical_entropy(log_probs)


class MultiCategoricalHead(nn.Module):
    """MultiDiscrete actions: independent categoricals, one per dimension; log-probs add up."""

    def __init__(self, in_features: int, nvec: list[int]) -> None:
        super().__init__()
        self.nvec = [int(n) for n in nvec]
        self.linear = nn.Linear(in_features, sum(self.nvec))

    def forward(self, features: Tensor, mask: Tensor | None = None) -> list[Tensor]:
        """``mask``: the dimensions' masks concatenated (``sum(nvec)`` booleans), as Gymnasium writes
        a MultiDiscrete mask flat."""
        logits = self.linear(features).split(self.nvec, dim=-1)
        masks = [None] * len(self.nvec) if mask is None else mask.split(self.nvec, dim=-1)
        return [masked_log_softmax(x, m) for x, m in zip(logits, masks)]

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

    def forward(self, features: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
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


class MixedHead(nn.Module):
    """Tuple or Dict actions: one head per part (categorical, multi-categorical or Gaussian).

    The action is the parts' actions side by side in one float vector (a categorical part takes one
    entry, a multi-categorical one per dimension, a Gaussian its dimension); log-probabilities and
    entropies add up over the parts, the parts being independent given the state.
    """

    def __init__(self, in_features: int, parts: list[tuple[str, tuple[int, ...]]], log_std_init: float = 0.0) -> None:
        super().__init__()
        heads: list[nn.Module] = []
        self.widths: list[int] = []
        for kind, dims in parts:
            if kind == "categorical":
                heads.append(CategoricalHead(in_features, dims[0]))
                self.widths.append(1)
            elif kind == "multi_categorical":
                heads.append(MultiCategoricalHead(in_features, list(dims)))
                self.widths.append(len(dims))
            else:
                heads.append(GaussianHead(in_features, dims[0], log_std_init))
                self.widths.append(dims[0])
        self.parts = nn.ModuleList(heads)
        #: The same heads, typed (ModuleList's items are only Modules to a type checker).
        self.heads: list[Any] = heads
        self.kinds = [kind for kind, _ in parts]

    def forward(self, features: Tensor, mask: Tensor | None = None) -> list[Any]:
        return [head(features) for head in self.heads]

    def _split(self, actions: Tensor) -> list[Tensor]:
        pieces = actions.split(self.widths, dim=-1)
        return [p.squeeze(-1).long() if kind == "categorical" else p.long() if kind == "multi_categorical" else p
                for kind, p in zip(self.kinds, pieces)]

    def sample(self, params: list[Any], deterministic: bool = False) -> tuple[Tensor, Tensor]:
        actions, logps = [], []
        for head, kind, p in zip(self.heads, self.kinds, params):
            action, logp = head.sample(p, deterministic)
            actions.append(action.unsqueeze(-1).float() if kind == "categorical" else action.float())
            logps.append(logp)
        return torch.cat(actions, dim=-1), torch.stack(logps, dim=-1).sum(-1)

    def log_prob_entropy(self, params: list[Any], actions: Tensor) -> tuple[Tensor, Tensor]:
        parts = [head.log_prob_entropy(p, a) for head, p, a in zip(self.heads, params, self._split(actions))]
        return torch.stack([lp for lp, _ in parts], dim=-1).sum(-1), torch.stack([e for _, e in parts], dim=-1).sum(-1)
