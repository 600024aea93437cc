"""The fast path: an accelerated implementation of part of the torch reference, fenced in.

For MLP policies on a CPU, torch's per-op dispatch costs more than the arithmetic of a 64-wide
network. This package does the same maths in NumPy (BENCHMARKS.md has the measured gains):

- :mod:`.policy`: the rollout's and evaluation's forward pass (acting) on zero-copy weight views;
- :mod:`.update`: the minibatch loss and its hand-derived gradient, a
  :class:`~ppokit.core.update.MinibatchStep` like the reference :class:`~ppokit.core.update.AutogradStep`;
- :mod:`.flat_adam`: Adam over one flat buffer, an :class:`~ppokit.core.optim.Optimizer`;
- :mod:`.stacked`, :mod:`.stacked_update`, :mod:`.stacked_epochs`: several seeds of one config at
  once (``--seeds``): acting, and with ``--stack-updates`` the K epochs, as batched products over a
  leading seed axis. They run what :mod:`.support` accepts, and nothing else.

The reference is the torch path. :mod:`.support` declares exactly which policy features
(:class:`~ppokit.control.policy.networks.PolicySpec` fields) and update settings
(:class:`~ppokit.core.update.PPOUpdateSettings` fields) the fast path implements; anything else,
including a field it has never heard of, is refused, and the torch path runs. The parity tests in
``tests/control/fast/`` (``test_parity``; ``test_stacked_update`` for several seeds) are generated
from those two dataclasses, so a new field fails them until the fast path implements it (with a
parity test) or declares it refused.
"""

from ppokit.control.fast.support import refusal, select

__all__ = ["refusal", "select"]
