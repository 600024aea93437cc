"""The language-model front end: SFT, reward-model training and PPO for causal LMs.

Importing this package is cheap; ``transformers``, ``datasets`` and ``peft`` are imported by the
modules that need them. Install with ``pip install ppokit[rlhf]``.
"""
