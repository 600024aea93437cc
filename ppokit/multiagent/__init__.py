"""The multi-agent front end: PPO on PettingZoo environments (IPPO, MAPPO), over control's policies and
update and the one loop shell. ``MultiAgentPPO`` and ``MultiAgentConfig`` are imported on first use, so
that reading the config alone loads no torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ppokit.multiagent.agent import MultiAgentPPO
    from ppokit.multiagent.config import MultiAgentConfig

_PUBLIC = {"MultiAgentPPO": "ppokit.multiagent.agent", "MultiAgentConfig": "ppokit.multiagent.config"}
__all__ = ["MultiAgentConfig", "MultiAgentPPO"]


def __getattr__(name: str) -> object:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ppokit.multiagent' has no attribute {name!r}")
