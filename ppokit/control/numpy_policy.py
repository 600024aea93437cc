r"""The rollout's forward pass in NumPy, for MLP policies on a CPU.

The rollout calls the policy once per env step on a handful of observations. For a 64-wide MLP the
arithmetic is a few microseconds; with torch the cost is ~20 dispatched ops at a few microseconds
each, plus building tensors from the env's arrays and back. NumPy does the same maths at a fraction
of the per-op cost (measured on one core with PyTorch 2.13: ~27 µs against ~70 µs for CartPole's
actor-critic, and torch's ``tanh`` alone is ~10× slower than NumPy's at these sizes).

The weights are read through zero-copy views of the torch parameters, so acting always uses the
current policy. The formulas are those of :mod:`ppokit.control.heads` (the tests check the two
against each other): categorical sampling by the inverse CDF, Gaussian sampling as
:math:`a = \mu + \sigma\,\varepsilon`, and the same log-probability expressions.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ppokit.control.heads import CategoricalHead, GaussianHead
from ppokit.control.networks import MLP, ActorCritic

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _elu(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


NUMPY_ACTIVATIONS = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0), "elu": _elu}


def _layers(trunk: MLP) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(lin.weight.detach().numpy().T, lin.bias.detach().numpy()) for lin in trunk._linears]


class NumpyPolicy:
    """``act`` and ``value`` of an :class:`ActorCritic`, computed with NumPy on its live weights."""

    @staticmethod
    def supports(policy: ActorCritic, device: torch.device) -> bool:
        return (
            device.type == "cpu"
            and not policy.use_cnn
            and policy.actor_trunk.activation_name in NUMPY_ACTIVATIONS
            and isinstance(policy.head, (CategoricalHead, GaussianHead))
            and all(p.dtype == torch.float32 for p in policy.parameters())
        )

    def __init__(self, policy: ActorCritic) -> None:
        self.policy = policy
        self.activation = NUMPY_ACTIVATIONS[policy.actor_trunk.activation_name]
        self.gaussian = isinstance(policy.head, GaussianHead)
        self.refresh()

    def refresh(self) -> None:
        """Re-take the weight views (after the parameters were replaced rather than updated in place)."""
        p = self.policy
        self.actor = _layers(p.actor_trunk)
        self.critic = None if p.critic_trunk is None else _layers(p.critic_trunk)
        self.head_w, self.head_b = p.head.linear.weight.detach().numpy().T, p.head.linear.bias.detach().numpy()
        self.value_w, self.value_b = p.value_head.weight.detach().numpy().T, p.value_head.bias.detach().numpy()
        self.log_std = p.head.log_std.detach().numpy() if self.gaussian else None

    def _trunk(self, x: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        for w, b in layers:
            x = self.activation(x @ w + b)
        return x

    def _features(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = obs.reshape(obs.shape[0], -1)
        actor = self._trunk(x, self.actor)
        return actor, actor if self.critic is None else self._trunk(x, self.critic)

    def act(self, obs: np.ndarray, rng: np.random.Generator, deterministic: bool = False
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample (or, ``deterministic``, take the mode of) actions for a batch of already normalised
        observations: ``(action, logp, value)``."""
        actor, critic = self._features(obs)
        value = (critic @ self.value_w + self.value_b)[:, 0]
        return (*self._sample(actor @ self.head_w + self.head_b, rng, deterministic), value)

    def action(self, obs: np.ndarray, rng: np.random.Generator, deterministic: bool = False) -> np.ndarray:
        """The action of :meth:`act` alone (the critic is not run): what evaluation and ``predict`` need."""
        actor = self._trunk(obs.reshape(obs.shape[0], -1), self.actor)
        return self._sample(actor @ self.head_w + self.head_b, rng, deterministic)[0]

    def _sample(self, out: np.ndarray, rng: np.random.Generator, deterministic: bool
                ) -> tuple[np.ndarray, np.ndarray]:
        if self.gaussian:
            std = np.exp(self.log_std)
            action = out if deterministic else out + std * rng.standard_normal(out.shape, dtype=np.float32)
            z = (action - out) * np.exp(-self.log_std)
            logp = -(0.5 * z * z + self.log_std + HALF_LOG_2PI).sum(-1)
            return action, logp
        # log-softmax, then the inverse CDF: the first action whose cumulative probability exceeds u.
        shifted = out - out.max(-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        if deterministic:
            action = log_probs.argmax(-1)
        else:
            cdf = np.cumsum(np.exp(log_probs), axis=-1)
            u = rng.random((out.shape[0], 1), dtype=np.float32)
            action = (u >= cdf[:, :-1]).sum(-1)
        return action, np.take_along_axis(log_probs, action[:, None], -1)[:, 0]

    def value(self, obs: np.ndarray) -> np.ndarray:
        _, critic = self._features(obs)
        return (critic @ self.value_w + self.value_b)[:, 0]
