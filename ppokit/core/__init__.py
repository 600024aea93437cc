"""The PPO algorithm as pure tensor functions.

Nothing in here knows about environments, tokens, files or any accelerated implementation: both
front ends (control and RLHF) call these functions, so each piece of maths exists exactly once.

- :mod:`~ppokit.core.advantages`: GAE, discounted returns, masked mean / variance / whitening
- :mod:`~ppokit.core.losses`: the clipped and penalised surrogates, the value loss, the entropy bonus
- :mod:`~ppokit.core.kl`: KL estimators and the adaptive β / ε controllers
- :mod:`~ppokit.core.update`: the K-epoch minibatch loop over a ``MinibatchStep``
- :mod:`~ppokit.core.optim`: the optimiser protocol the loop drives, and torch's optimisers behind it
- :mod:`~ppokit.core.running_stats`, :mod:`~ppokit.core.schedules`, :mod:`~ppokit.core.diagnostics`,
  :mod:`~ppokit.core.health`: normalisation, schedules, explained variance, live warnings

The submodules are imported on demand (``from ppokit.core.update import ppo_update``), so that
reading a config (whose choices live here) does not import torch.
"""
