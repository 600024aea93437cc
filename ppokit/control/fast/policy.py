r"""The rollout's forward pass in NumPy, for MLP policies on a CPU.

The rollout calls the policy once per env step on a handful of observations. For a 64-wide MLP the
arithmetic is a few microseconds; with torch the cost is ~20 dispatched ops, plus building tensors
from the env's arrays and back. NumPy does the same maths at a fraction of the per-op cost
(BENCHMARKS.md has the measurement).

The weights are read through zero-copy views of the torch parameters, so acting always uses the
current policy. The formulas are those of :mod:`ppokit.control.heads` (the tests check the two
against each other): categorical sampling by the inverse CDF, Gaussian sampling as
:math:`a = \mu + \sigma\,\varepsilon`, and the same log-probability expressions.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from torch import nn

from ppokit.control.networks import ActorCritic

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _elu(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


NUMPY_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"tanh": np.tanh, "relu": _relu, "elu": _elu}


def _weights(layers: tuple[nn.Linear, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(lin.weight.detach().numpy().T, lin.bias.detach().numpy()) for lin in layers]


class NumpyPolicy:
    """``act`` and ``value`` of an :class:`ActorCritic`, computed with NumPy on its live weights.

    Only for the policies :func:`ppokit.control.fast.support.refusal` accepts.
    """

    def __init__(self, policy: ActorCritic) -> None:
        self.policy = policy
        self.activation = NUMPY_ACTIVATIONS[policy.spec.activation]
        self.gaussian = policy.spec.head == "gaussian"
        self.refresh()

    def refresh(self) -> None:
        """Re-take the weight views (after the parameters were replaced rather than updated in place)."""
        layers = self.policy.layers()
        self.actor = _weights(layers.actor)
        self.critic = None if layers.critic is None else _weights(layers.critic)
        (self.head_w, self.head_b), (self.value_w, self.value_b) = _weights((layers.head, layers.value))
        self.log_std = None if layers.log_std is None else layers.log_std.detach().numpy()

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
        if self.log_std is not None:  # Gaussian
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
