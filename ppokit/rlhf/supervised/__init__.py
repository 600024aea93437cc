"""The supervised stages before PPO: :mod:`~ppokit.rlhf.supervised.sft` (``SFTTrainer``),
:mod:`~ppokit.rlhf.supervised.reward_model` (``RewardTrainer``), the loop they share
(:mod:`~ppokit.rlhf.supervised.loop`) and their checkpoints (:mod:`~ppokit.rlhf.supervised.checkpoint`)."""
