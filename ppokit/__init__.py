"""ppokit: Proximal Policy Optimization for Gymnasium control and for language-model RLHF."""

__version__ = "0.1.0"

from ppokit.errors import PPOKitError  # noqa: E402

__all__ = ["PPO", "ControlConfig", "PPOKitError", "SeedGroup", "__version__"]


def __getattr__(name: str) -> object:  # lazy: importing ppokit should not import torch and gymnasium
    if name == "PPO":
        from ppokit.control.agent import PPO

        return PPO
    if name == "ControlConfig":
        from ppokit.control.config import ControlConfig

        return ControlConfig
    if name == "SeedGroup":
        from ppokit.control.seeds import SeedGroup

        return SeedGroup
    raise AttributeError(f"module 'ppokit' has no attribute {name!r}")
