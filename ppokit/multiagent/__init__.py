"""The multi-agent front end: PPO on PettingZoo environments (IPPO, MAPPO), over control's policies and
update and the one loop shell."""

from ppokit.multiagent.agent import MultiAgentPPO
from ppokit.multiagent.config import MultiAgentConfig

__all__ = ["MultiAgentConfig", "MultiAgentPPO"]
