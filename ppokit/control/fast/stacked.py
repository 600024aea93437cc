"""The rollout's forward pass of several fast-path policies at once (``ppokit train --seeds``).

Seeds of one config have policies of one shape. Acting for all of them is one batched product per
layer, ``[S, N, in] @ [S, in, out]``, instead of ``S`` calls of a few microseconds of dispatch each,
on a handful of observations. Each slice is the same product, on weights of the same memory layout
(torch's ``[out, in]``, read transposed), as :class:`~ppokit.control.fast.policy.NumpyPolicy`
computes for one policy; every other step is elementwise or along the last axis, and each seed
samples from its own generator. A seed's actions are therefore those it would take alone, bit for
bit (``tests/control/test_seeds.py`` checks whole runs).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ppokit.control.fast.policy import HALF_LOG_2PI, NumpyPolicy


def _stack(layers: Sequence[list[tuple[np.ndarray, np.ndarray]]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer: weights ``[S, in, out]`` (views of ``[S, out, in]`` copies, torch's layout) and
    biases ``[S, 1, out]``."""
    out = []
    for per_seed in zip(*layers):
        w = np.stack([w_t.T for w_t, _ in per_seed]).swapaxes(1, 2)
        b = np.stack([b for _, b in per_seed])[:, None, :]
        out.append((w, b))
    return out


class StackedPolicy:
    """``act`` of ``S`` :class:`NumpyPolicy` of one shape, on observations ``[S, N, ...]``.

    The weights are copied at :meth:`refresh` (once per rollout: the policies change only in the
    update), so acting reads one contiguous stack per layer.
    """

    def __init__(self, policies: Sequence[NumpyPolicy]) -> None:
        first = policies[0]
        if any(p.activation is not first.activation or p.gaussian != first.gaussian
               or (p.critic is None) != (first.critic is None) for p in policies):
            raise ValueError("StackedPolicy: the policies differ in shape")
        self.policies = list(policies)
        self.activation = first.activation
        self.refresh()

    def refresh(self) -> None:
        """Copy the policies' current weights into the stacks."""
        ps = self.policies
        for p in ps:
            p.refresh()
        self.actor = _stack([p.actor for p in ps])
        self.critic = None if ps[0].critic is None else _stack([p.critic for p in ps if p.critic is not None])
        ((self.head_w, self.head_b),) = _stack([[(p.head_w, p.head_b)] for p in ps])
        ((self.value_w, self.value_b),) = _stack([[(p.value_w, p.value_b)] for p in ps])
        log_stds = [p.log_std for p in ps if p.log_std is not None]
        self.log_std = np.stack(log_stds)[:, None, :] if log_stds else None

    def _trunk(self, x: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        for w, b in layers:
            x = self.activation(x @ w + b)
        return x

    def act(self, obs: np.ndarray, rngs: Sequence[np.random.Generator]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sampled actions, their log-probabilities and the values, each ``[S, N, ...]``, for
        observations ``[S, N, ...]`` already normalised by each seed's statistics; seed ``s`` draws
        from ``rngs[s]``."""
        x = obs.reshape(obs.shape[0], obs.shape[1], -1)
        actor = self._trunk(x, self.actor)
        critic = actor if self.critic is None else self._trunk(x, self.critic)
        value = (critic @ self.value_w + self.value_b)[..., 0]
        out = actor @ self.head_w + self.head_b
        if self.log_std is not None:  # Gaussian, as NumpyPolicy._sample
            noise = np.stack([rng.standard_normal(out.shape[1:], dtype=np.float32) for rng in rngs])
            action = out + np.exp(self.log_std) * noise
            z = (action - out) * np.exp(-self.log_std)
            logp = -(0.5 * z * z + self.log_std + HALF_LOG_2PI).sum(-1)
            return action, logp, value
        shifted = out - out.max(-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        cdf = np.cumsum(np.exp(log_probs), axis=-1)
        u = np.stack([rng.random((out.shape[1], 1), dtype=np.float32) for rng in rngs])
        action = (u >= cdf[..., :-1]).sum(-1)
        return action, np.take_along_axis(log_probs, action[..., None], -1)[..., 0], value
