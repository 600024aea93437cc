"""ppokit: Proximal Policy Optimization for Gymnasium control and for language-model RLHF.

The public API, imported on first use (``import ppokit`` loads neither torch nor gymnasium)::

    from ppokit import PPO, ControlConfig, SeedGroup                      # control
    from ppokit import MultiAgentPPO, MultiAgentConfig                    # many agents (PettingZoo)
    from ppokit import RLHFTrainer, RLHFConfig                            # RLHF PPO
    from ppokit import SFTTrainer, SFTConfig, RewardTrainer, RewardConfig  # the supervised stages
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ppokit._version import __version__
from ppokit.errors import PPOKitError

if TYPE_CHECKING:
    from ppokit.control.agent import PPO
    from ppokit.control.config import ControlConfig
    from ppokit.control.seeds import SeedGroup
    from ppokit.multiagent.agent import MultiAgentPPO
    from ppokit.multiagent.config import MultiAgentConfig
    from ppokit.rlhf.config import RewardConfig, RLHFConfig, SFTConfig
    from ppokit.rlhf.ppo.trainer import RLHFTrainer
    from ppokit.rlhf.supervised.reward_model import RewardTrainer
    from ppokit.rlhf.supervised.sft import SFTTrainer

#: Where each public name lives; ``ppokit.<name>`` imports its module on first use.
_PUBLIC = {
    "PPO": "ppokit.control.agent",
    "ControlConfig": "ppokit.control.config",
    "SeedGroup": "ppokit.control.seeds",
    "MultiAgentPPO": "ppokit.multiagent.agent",
    "MultiAgentConfig": "ppokit.multiagent.config",
    "RLHFTrainer": "ppokit.rlhf.ppo.trainer",
    "RLHFConfig": "ppokit.rlhf.config",
    "SFTTrainer": "ppokit.rlhf.supervised.sft",
    "SFTConfig": "ppokit.rlhf.config",
    "RewardTrainer": "ppokit.rlhf.supervised.reward_model",
    "RewardConfig": "ppokit.rlhf.config",
}

__all__ = [
    "PPO", "ControlConfig", "SeedGroup", "MultiAgentPPO", "MultiAgentConfig", "RLHFTrainer", "RLHFConfig", "SFTTrainer", "SFTConfig", "RewardTrainer",
    "RewardConfig", "PPOKitError", "__version__",
]


def __getattr__(name: str) -> object:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # once imported, a plain attribute
        return value
    raise AttributeError(f"module 'ppokit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
