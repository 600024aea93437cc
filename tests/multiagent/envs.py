"""Small PettingZoo envs for the multi-agent tests: each makes one convention visible."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from pettingzoo.utils.env import ParallelEnv

#: The reward a finished agent is (wrongly) still given by LeakyDeathEnv: it must never be learned from.
LEAK = 1000.0


class LeakyDeathEnv(ParallelEnv):  # type: ignore[misc]
    """Three agents on a counter. ``early`` terminates at step 2; ``late`` joins at step 3; ``steady``
    plays the whole episode (``length`` steps, then truncation). The env keeps reporting a huge reward
    for ``early`` after it finished, as a careless env might: a run must not learn from it."""

    metadata = {"name": "leaky_death_v0"}

    def __init__(self, length: int = 6, state_size: int | None = 5) -> None:
        self.possible_agents = ["early", "late", "steady"]
        self.length = length
        self.state_size = state_size
        self._obs_space = spaces.Box(-10.0, 10.0, (3,), np.float32)
        self._act_space = spaces.Discrete(2)
        self.agents: list[str] = []
        self.t = 0
        self.rng = np.random.default_rng(0)

    def observation_space(self, agent: str) -> spaces.Space:
        return self._obs_space

    def action_space(self, agent: str) -> spaces.Space:
        return self._act_space

    def _obs(self, agent: str) -> np.ndarray:
        index = self.possible_agents.index(agent)
        return np.array([self.t / 10.0, index, self.rng.normal()], dtype=np.float32)

    def state(self) -> np.ndarray:
        if self.state_size is None:
            raise NotImplementedError
        return np.full(self.state_size, 7.0 + self.t, dtype=np.float32)

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.t = 0
        self.agents = ["early", "steady"]
        return {a: self._obs(a) for a in self.agents}, {a: {} for a in self.agents}

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        assert set(actions) == set(self.agents), (actions, self.agents)
        self.t += 1
        rewards = {a: float(actions[a]) for a in self.agents}
        rewards["early"] = rewards.get("early", LEAK)  # the leak: a finished agent still "rewarded"
        terms = {a: False for a in self.agents}
        truncs = {a: self.t >= self.length for a in self.agents}
        if "early" in self.agents and self.t == 2:
            terms["early"] = True
        obs = {a: self._obs(a) for a in self.agents}
        self.agents = [a for a in self.agents if not (terms[a] or truncs[a])]
        if self.t == 3 and self.t < self.length:
            self.agents.append("late")
            obs["late"] = self._obs("late")
        return obs, rewards, terms, truncs, {a: {} for a in obs}


def leaky(**kwargs: Any) -> LeakyDeathEnv:
    return LeakyDeathEnv(**kwargs)


class MixedSpacesEnv(LeakyDeathEnv):
    """Like LeakyDeathEnv, but ``late`` acts in a space of its own."""

    def action_space(self, agent: str) -> spaces.Space:
        return spaces.Discrete(3) if agent == "late" else self._act_space


def mixed(**kwargs: Any) -> MixedSpacesEnv:
    return MixedSpacesEnv(**kwargs)


class SilentAgentEnv(LeakyDeathEnv):
    """An agent stays live but returns no observation after a step."""

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        obs, rewards, terms, truncs, infos = super().step(actions)
        obs.pop("steady", None)
        return obs, rewards, terms, truncs, infos


def silent(**kwargs: Any) -> SilentAgentEnv:
    return SilentAgentEnv(**kwargs)


class ImageEnv(LeakyDeathEnv):
    """LeakyDeathEnv's agents seeing small images."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._obs_space = spaces.Box(0, 255, (36, 36, 3), np.uint8)

    def _obs(self, agent: str) -> np.ndarray:
        return np.full((36, 36, 3), 10 * self.t + self.possible_agents.index(agent), dtype=np.uint8)


def images(**kwargs: Any) -> ImageEnv:
    return ImageEnv(**kwargs)
