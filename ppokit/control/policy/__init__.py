"""The actor-critic: :mod:`~ppokit.control.policy.networks` (``PolicySpec``, ``ActorCritic``),
:mod:`~ppokit.control.policy.heads` (action distributions, masks, mixed actions) and
:mod:`~ppokit.control.policy.actions` (the policy's actions in the env's format)."""
