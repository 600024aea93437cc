"""Advantage and return estimation, and masked statistics.

Tensors are time-major: ``[T, ...]`` where ``T`` is the step (control) or token (RLHF) index and the
trailing dims are independent sequences. The RLHF front end transposes its ``[batch, tokens]``
tensors before calling in.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_HOST_DTYPES = (torch.float32, torch.float64)


def gae(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    episode_ends: Tensor,
    gamma: float,
    lam: float,
    recursion: str | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Generalised Advantage Estimation (Schulman et al., 2016), time-major.

    .. math::
        \delta_t = r_t + \gamma V'_t - V(s_t), \qquad
        \hat A_t = \delta_t + \gamma\lambda\,(1 - e_t)\,\hat A_{t+1}, \qquad
        \hat R_t = \hat A_t + V(s_t)

    ``next_values`` holds :math:`V'_t`, the value of the state *after* step ``t``: ``V(s_{t+1})`` while
    the episode goes on, ``V(final observation)`` when the episode was **truncated** (a time limit
    says nothing about the future, so we bootstrap), and ``0`` when it **terminated**. ``episode_ends``
    (:math:`e_t`) is true when an episode ended at step ``t`` either way, so no advantage flows back
    across an episode boundary. Keeping the two apart is what lets one formula treat termination and
    truncation differently.

    The backward recursion runs on NumPy views for CPU tensors (each of its ``T`` small steps costs a
    fraction of torch's dispatch there) and in torch elsewhere (GPU tensors never leave the device);
    ``recursion='numpy'`` or ``'torch'`` picks one explicitly (the tests run both on a CPU).

    Returns ``(advantages, returns)``, both shaped like ``rewards``.
    """
    if not (rewards.shape == values.shape == next_values.shape == episode_ends.shape):
        raise ValueError(
            "gae: rewards, values, next_values and episode_ends must share one shape, got "
            f"{tuple(rewards.shape)}, {tuple(values.shape)}, {tuple(next_values.shape)}, "
            f"{tuple(episode_ends.shape)}"
        )
    if recursion is None:
        recursion = "numpy" if all(x.device.type == "cpu" and not x.requires_grad and x.dtype in _HOST_DTYPES
                                   for x in (rewards, values, next_values)) else "torch"
    if recursion == "numpy":
        adv, ret = gae_arrays(rewards.detach().numpy(), values.detach().numpy(), next_values.detach().numpy(),
                              episode_ends.numpy(), gamma, lam)
        return torch.from_numpy(adv), torch.from_numpy(ret)
    deltas = rewards + gamma * next_values - values
    carry_on = (1.0 - episode_ends.to(rewards.dtype)) * (gamma * lam)
    advantages = torch.empty_like(deltas)
    running = torch.zeros_like(deltas[0])
    for t in range(deltas.shape[0] - 1, -1, -1):
        running = deltas[t] + carry_on[t] * running
        advantages[t] = running
    return advantages, advantages + values


def gae_arrays(rewards: np.ndarray, values: np.ndarray, next_values: np.ndarray, episode_ends: np.ndarray,
               gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`gae` on NumPy arrays, with the same operations in the same order (so the same bits):
    for CPU tensors, where each of the recursion's ``T`` small steps costs a fraction of torch's
    dispatch."""
    deltas = rewards + gamma * next_values - values
    carry_on = (1.0 - episode_ends.astype(rewards.dtype)) * (gamma * lam)
    advantages = np.empty_like(deltas, dtype=np.result_type(deltas, carry_on))  # in its layout, as torch keeps it
    advantages[-1] = deltas[-1] + carry_on[-1] * np.zeros_like(deltas[-1])
    for t in range(deltas.shape[0] - 2, -1, -1):
        np.multiply(carry_on[t], advantages[t + 1], out=advantages[t])
        advantages[t] += deltas[t]
    return advantages, advantages + values


def gae_over_own_steps(rewards: np.ndarray, values: np.ndarray, acted: np.ndarray, ended: np.ndarray,
                       end_values: np.ndarray, last_values: np.ndarray, gamma: float,
                       lam: float) -> tuple[np.ndarray, np.ndarray]:
    r""":func:`gae` for sequences that do not act at every step (time-major ``[T, N]``): each column's
    steps where ``acted`` is true form its own sequence, and :math:`V'_t` is the value at *its* next
    step. A multi-agent env is the case: an agent waiting for its turn, finished early or not yet
    joined has no step there, and a step that is not its own must neither cut its advantage nor feed it.

    For a column's own steps :math:`t_1 < t_2 < \dots`, :math:`V'_{t_k}` is ``end_values[t_k]`` where its
    sequence ``ended`` at :math:`t_k` (0 on termination, :math:`V(\text{final obs})` on truncation),
    else :math:`V(s_{t_{k+1}})`, and ``last_values`` after its last own step in the window. Each column's
    own steps are moved to the front and :func:`gae_arrays` runs on them unchanged, so a column that acts
    at every step gets exactly :func:`gae`. Rows that did not act get advantage and return 0.
    """
    T, N = rewards.shape
    order = np.argsort(~acted, axis=0, kind="stable")  # each column's own steps first, in time order
    counts = acted.sum(axis=0)
    packed = np.arange(T)[:, None] < counts[None, :]

    def front(x: np.ndarray) -> np.ndarray:
        return np.take_along_axis(x, order, axis=0)

    r, v, e, ev = front(rewards), front(values), front(ended) | ~packed, front(end_values)
    following = np.concatenate([v[1:], np.zeros((1, N), dtype=v.dtype)])
    is_last = np.arange(T)[:, None] == (counts - 1)[None, :]
    following = np.where(is_last, last_values[None, :].astype(v.dtype), following)
    next_values = np.where(e, ev, following)
    r, v, next_values = (np.where(packed, x, np.zeros((), x.dtype)) for x in (r, v, next_values))
    adv_front, _ = gae_arrays(r, v, next_values, e, gamma, lam)
    advantages = np.zeros_like(adv_front)
    np.put_along_axis(advantages, order, adv_front, axis=0)
    advantages = np.where(acted, advantages, np.zeros((), advantages.dtype))
    return advantages, np.where(acted, advantages + values, np.zeros((), advantages.dtype))




def discounted_returns(
    rewards: Tensor, next_values: Tensor, episode_ends: Tensor, gamma: float
) -> Tensor:
    r"""Bootstrapped discounted returns, time-major.

    .. math::
        G_t = r_t + \gamma\,\big[e_t V'_t + (1 - e_t)\,G_{t+1}\big], \qquad G_T := V'_{T-1}

    with ``next_values`` and ``episode_ends`` as in :func:`gae`. This equals GAE with λ = 1 plus
    the values, written out on its own because it needs no value baseline.
    """
    ends = episode_ends.to(rewards.dtype)
    returns = torch.empty_like(rewards)
    following = next_values[-1]
    for t in range(rewards.shape[0] - 1, -1, -1):
        following = rewards[t] + gamma * (ends[t] * next_values[t] + (1.0 - ends[t]) * following)
        returns[t] = following
    return returns


def _groups(x: Tensor, group_size: int, name: str) -> Tensor:
    """``x`` ``[N]`` as ``[N / G, G]``: consecutive entries are one group."""
    if x.ndim != 1 or group_size < 1 or x.shape[0] % group_size:
        raise ValueError(f"{name}: a 1-D tensor whose length is a multiple of group_size = {group_size} expected, "
                         f"got shape {tuple(x.shape)}")
    return x.view(-1, group_size)


def group_normalized(returns: Tensor, group_size: int, eps: float = 1e-4) -> Tensor:
    r"""Group-relative advantages (GRPO; Shao et al., 2024, DeepSeekMath, section 4.1.2).

    For a group of :math:`G` samples of the same situation (completions of one prompt) with returns
    :math:`R_1 \dots R_G`:

    .. math::
        \hat A_i = \frac{R_i - \operatorname{mean}(R_{1..G})}{\operatorname{std}(R_{1..G}) + \epsilon}

    with the sample standard deviation (Bessel's correction, :math:`G - 1`). The group's mean is the
    baseline a critic would otherwise provide; a group whose returns are all equal carries no signal
    and gets zeros. ``returns`` is ``[N]`` with each group's ``group_size`` entries adjacent.
    """
    grouped = _groups(returns, group_size, "group_normalized")
    if group_size < 2:
        raise ValueError("group_normalized: a group needs at least 2 samples to have a spread")
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True)
    return ((grouped - mean) / (std + eps)).reshape(-1)


def leave_one_out(returns: Tensor, group_size: int) -> Tensor:
    r"""Leave-one-out advantages (RLOO; Kool et al., 2019; Ahmadian et al., 2024).

    Each sample's baseline is the mean return of the *other* :math:`G - 1` samples of its group,
    which keeps the estimate unbiased (the baseline does not depend on the sample itself):

    .. math::
        \hat A_i = R_i - \frac{1}{G - 1}\sum_{j \ne i} R_j = \frac{G}{G - 1}\big(R_i - \bar R\big)

    ``returns`` is ``[N]`` with each group's ``group_size`` entries adjacent.
    """
    grouped = _groups(returns, group_size, "leave_one_out")
    if group_size < 2:
        raise ValueError("leave_one_out: a group needs at least 2 samples to leave one out")
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others).reshape(-1)


def masked_mean(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean of ``x`` over the entries where ``mask`` is true (all entries when ``mask`` is None)."""
    if mask is None:
        return x.mean()
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def masked_var(x: Tensor, mask: Tensor | None = None, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over the valid entries, with Bessel's correction when ``unbiased``."""
    if mask is None:
        return x.var(unbiased=unbiased) if x.numel() > 1 else torch.zeros((), dtype=x.dtype)
    mask_f = mask.to(x.dtype)
    count = mask_f.sum()
    mean = (x * mask_f).sum() / count.clamp_min(1.0)
    sq = (((x - mean) ** 2) * mask_f).sum()
    denom = (count - 1.0) if unbiased else count
    return sq / denom.clamp_min(1.0)


def masked_whiten(
    x: Tensor, mask: Tensor | None = None, shift_mean: bool = True, eps: float = 1e-8,
    moments: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    r"""Normalise ``x`` to zero mean and unit variance using only the valid entries.

    .. math:: \tilde x = (x - \mu_m) / \sqrt{\sigma_m^2 + \epsilon}

    where :math:`\mu_m, \sigma_m^2` are the masked mean and variance. Padding must not leak into the
    statistics, and invalid entries come back as zeros so they can never contribute downstream.
    With ``shift_mean=False`` the mean is added back (only the scale changes), which some RLHF
    recipes use for rewards. ``moments``: the ``(mean, variance)`` to use instead, when they are
    taken over more than ``x`` (all processes' entries, :meth:`~ppokit.core.collective.Collective.moments`).
    """
    mean, var = moments if moments is not None else (masked_mean(x, mask), masked_var(x, mask))
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    if mask is not None:
        out = out * mask.to(out.dtype)
    return out
