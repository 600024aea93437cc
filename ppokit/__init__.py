"""ppokit: Proximal Policy Optimization for Gymnasium control and for language-model RLHF."""

__version__ = "0.1.0"

from ppokit.errors import PPOKitError  # noqa: E402

__all__ = ["PPO", "PPOConfig", "PPOKitError", "__version__"]


def __getattr__(name: str):  # lazy: importing ppokit should not import torch and gymnasium
    if name == "PPO":
        from ppokit.control.trainer import PPO

        return PPO
    if name == "PPOConfig":
        from ppokit.control.config import PPOConfig

        return PPOConfig
    raise AttributeError(f"module 'ppokit' has no attribute {name!r}")
