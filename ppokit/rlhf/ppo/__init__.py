"""RLHF PPO: :mod:`~ppokit.rlhf.ppo.trainer` (``RLHFTrainer``), :mod:`~ppokit.rlhf.ppo.rollout`
(generate, score, forward passes), :mod:`~ppokit.rlhf.ppo.advantages` (per-token rewards, GAE and the
critic-free estimators), :mod:`~ppokit.rlhf.ppo.roles` (policy, reference, critic, rewards) and
:mod:`~ppokit.rlhf.ppo.checkpointing`."""
