r"""The rollout's forward pass in NumPy, for MLP policies on a CPU.

The rollout calls the policy once per env step on a handful of observations. For a 64-wide MLP the
arithmetic is a few microseconds; with torch the cost is ~20 dispatched ops, plus building tensors
from the env's arrays and back. NumPy does the same maths at a fraction of the per-op cost
(BENCHMARKS.md has the measurement).

The weights are read through zero-copy views of the torch parameters in the fused form of
:mod:`ppokit.control.fast.layout` (actor and critic in one product per layer), so acting always
uses the current policy. The formulas are those of :mod:`ppokit.control.policy.heads` (the tests check the two
against each other): categorical sampling by the inverse CDF, Gaussian sampling as
:math:`a = \mu + \sigma\,\varepsilon`, and the same log-probability expressions.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ppokit.control.fast.layout import FusedArrays, features, heads, trunk_output
from ppokit.control.policy.networks import ActorCritic

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _tanh(x: np.ndarray) -> np.ndarray:
    return np.tanh(x, out=x)


def _elu(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0, out=x)


#: Each activation, applied to a layer's pre-activation, which it may overwrite (it is not kept).
NUMPY_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"tanh": _tanh, "relu": _relu, "elu": _elu}


class NumpyPolicy:
    """``act`` and ``value`` of an :class:`ActorCritic`, computed with NumPy on its live weights.

    Only for the policies :func:`ppokit.control.fast.support.refusal` accepts. The weights are read
    in the fused form of :mod:`ppokit.control.fast.layout`: views when the parameters lie in that
    order (the fast path's FlatAdam keeps them so), else copies, taken again whenever a parameter
    has changed since.
    """

    def __init__(self, policy: ActorCritic) -> None:
        self.policy = policy
        self.activation = NUMPY_ACTIVATIONS[policy.spec.activation]
        self.gaussian = policy.spec.head == "gaussian"
        self.arrays = FusedArrays(policy)
        self._params = list(policy.parameters())
        self._where = tuple(p.data_ptr() for p in self._params)

    def refresh(self) -> None:
        """Re-take the weight views if the parameters were replaced rather than updated in place
        (checked by address: cheap enough for every rollout)."""
        params = list(self.policy.parameters())
        where = tuple(p.data_ptr() for p in params)
        if where == self._where and self.arrays.views:
            return
        self.arrays = FusedArrays(self.policy)
        self._params, self._where = params, where

    def _current(self) -> FusedArrays:
        arrays = self.arrays
        if not arrays.views and arrays.version != tuple(p._version for p in self._params):
            self.refresh()
        return self.arrays

    def _outputs(self, obs: np.ndarray) -> tuple[FusedArrays, np.ndarray, np.ndarray]:
        arrays = self._current()
        x = obs.reshape(obs.shape[0], -1)
        out, value = heads(arrays, trunk_output(arrays, features(arrays, x, self.activation)))
        return arrays, out, value

    def act(self, obs: np.ndarray, rng: np.random.Generator, deterministic: bool = False
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample (or, ``deterministic``, take the mode of) actions for a batch of already normalised
        observations: ``(action, logp, value)``."""
        arrays, out, value = self._outputs(obs)
        return (*sample(out, arrays.log_std, rng, deterministic), value)

    def action(self, obs: np.ndarray, rng: np.random.Generator, deterministic: bool = False) -> np.ndarray:
        """The action of :meth:`act`: what evaluation and ``predict`` need."""
        arrays, out, _ = self._outputs(obs)
        return sample(out, arrays.log_std, rng, deterministic)[0]

    def value(self, obs: np.ndarray) -> np.ndarray:
        return self._outputs(obs)[2]


def sample(out: np.ndarray, log_std: np.ndarray | None, rng: np.random.Generator | None,
           deterministic: bool, draws: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    r"""Actions and their log-probabilities from the policy head's output ``[..., A, n]`` (transposed:
    one column per observation; leading axes for several policies at once).

    Gaussian: :math:`a = \mu + \sigma\varepsilon`. Categorical: the inverse CDF, the first action
    whose cumulative weight :math:`\sum_{j \le a} e^{z_j - \max z}` exceeds ``u`` times the total.
    ``draws``: the random numbers to use instead of drawing from ``rng`` (``[..., n]`` uniforms, or
    ``[..., n, A]`` normals), as :class:`~ppokit.control.fast.stacked.StackedPolicy` draws them.
    Every step is elementwise or along the action axis, so a policy's slice of a stacked call gives
    what it gives alone.
    """
    if log_std is not None:  # Gaussian
        mean = out.swapaxes(-1, -2)
        if deterministic:
            action = mean.copy()
        else:
            noise = rng.standard_normal(mean.shape, dtype=np.float32) if draws is None else draws  # type: ignore[union-attr]
            action = mean + np.exp(log_std) * noise
        z = (action - mean) * np.exp(-log_std)
        logp = -(0.5 * z * z + log_std + HALF_LOG_2PI).sum(-1)
        return action, logp
    shifted = out - np.maximum.reduce(out, axis=-2, keepdims=True)
    if deterministic:
        action = shifted.argmax(-2)
        total = np.add.reduce(np.exp(shifted), axis=-2)
    else:
        cdf = np.add.accumulate(np.exp(shifted), axis=-2)
        total = cdf[..., -1, :]
        u = rng.random(out.shape[-1], dtype=np.float32) if draws is None else draws  # type: ignore[union-attr]
        action = np.add.reduce((u * total)[..., None, :] >= cdf[..., :-1, :], axis=-2, dtype=np.int64)
    if out.ndim == 2:
        chosen = shifted[action, np.arange(out.shape[1])]
    else:
        chosen = np.take_along_axis(shifted, action[..., None, :], axis=-2)[..., 0, :]
    return action, chosen - np.log(total)
