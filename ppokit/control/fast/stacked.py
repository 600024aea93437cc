"""The rollout's forward pass of several fast-path policies at once (``ppokit train --seeds``).

Seeds of one config have policies of one shape. Acting for all of them is one batched product per
layer, ``[S, ..., N, in] @ [S, ..., in, out]``, instead of ``S`` calls of a few microseconds of
dispatch each, on a handful of observations. Each slice is the same product, on weights of the same
memory layout (the fused form of :mod:`ppokit.control.fast.layout`), as
:class:`~ppokit.control.fast.policy.NumpyPolicy` computes for one policy: the same functions run on
arrays with a leading seed axis. Every other step is elementwise or along the action axis, and each
seed draws from its own generator. A seed's actions are therefore those it would take alone, bit
for bit (``tests/control/test_seeds.py`` checks whole runs).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ppokit.control.fast.layout import FusedArrays, features, heads, trunk_output
from ppokit.control.fast.policy import NumpyPolicy, sample


class StackedPolicy:
    """``act`` of ``S`` :class:`NumpyPolicy` of one shape, on observations ``[S, N, ...]``.

    The weights are copied at :meth:`refresh` (once per rollout: the policies change only in the
    update), so acting reads one contiguous stack per layer.
    """

    def __init__(self, policies: Sequence[NumpyPolicy]) -> None:
        first = policies[0]
        if any(p.activation is not first.activation or p.gaussian != first.gaussian
               or p.arrays.twin != first.arrays.twin for p in policies):
            raise ValueError("StackedPolicy: the policies differ in shape")
        self.policies = list(policies)
        self.activation = first.activation
        self.refresh()

    def refresh(self) -> None:
        """Copy the policies' current weights into the stacks."""
        for p in self.policies:
            p.refresh()
        self.arrays = FusedArrays.stacked([p.arrays for p in self.policies])

    def act(self, obs: np.ndarray, rngs: Sequence[np.random.Generator]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sampled actions, their log-probabilities and the values, each ``[S, N, ...]``, for
        observations ``[S, N, ...]`` already normalised by each seed's statistics; seed ``s`` draws
        from ``rngs[s]``."""
        a = self.arrays
        x = obs.reshape(obs.shape[0], obs.shape[1], -1)
        out, value = heads(a, trunk_output(a, features(a, x, self.activation)))
        n = x.shape[1]
        # Each seed's draws straight into its row: the same numbers as rng.random(n) alone.
        if a.log_std is not None:
            draws = np.empty((len(rngs), n, a.num_out), dtype=np.float32)
            for rng, row in zip(rngs, draws):
                rng.standard_normal(dtype=np.float32, out=row)
        else:
            draws = np.empty((len(rngs), n), dtype=np.float32)
            for rng, row in zip(rngs, draws):
                rng.random(dtype=np.float32, out=row)
        action, logp = sample(out, a.log_std, None, False, draws)
        return action, logp, value
