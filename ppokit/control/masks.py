"""Invalid-action masks: where an env says which actions are allowed, and reading them out.

An env gives a mask (a boolean per action; for MultiDiscrete, each dimension's booleans concatenated)
in one of two places, the conventions of Gymnasium and PettingZoo:

- ``info["action_mask"]``, returned with each observation by ``reset`` and ``step``;
- the ``"action_mask"`` key of a Dict observation whose only other key holds the observation itself
  (``{"observation": Box, "action_mask": MultiBinary}``).

The key is ``ControlConfig.action_mask_key``. Masked actions get probability 0 in sampling,
log-probabilities, entropy and the PPO ratio (:mod:`ppokit.control.heads`). An env that gives no
mask for some step (or some env of the vector) allows every action there.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from ppokit.errors import EnvError


class MaskSource:
    """Reads the observation and the action mask out of what a (vector) env returns."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, key: str) -> None:
        self.key = key
        if isinstance(action_space, spaces.Discrete):
            self.size: int | None = int(action_space.n)
        elif isinstance(action_space, spaces.MultiDiscrete):
            self.size = int(np.asarray(action_space.nvec).sum())
        else:
            self.size = None  # Box actions have nothing to mask
        #: With the mask inside a Dict observation: the key of the observation proper.
        self.obs_key: str | None = None
        self.observation_space = observation_space
        if isinstance(observation_space, spaces.Dict) and key in observation_space.spaces:
            others = [k for k in observation_space.spaces if k != key]
            if len(others) != 1 or self.size is None:
                raise EnvError(
                    f"a Dict observation with an {key!r} key needs exactly one other key (the observation) and "
                    f"Discrete or MultiDiscrete actions; got keys {list(observation_space.spaces)} and {action_space}"
                )
            self.obs_key = others[0]
            self.observation_space = observation_space.spaces[self.obs_key]

    @property
    def in_observation(self) -> bool:
        return self.obs_key is not None

    def read(self, obs: Any, info: dict[str, Any], num_envs: int) -> tuple[Any, np.ndarray | None]:
        """``(observation, mask or None)`` for a vector env's batch; the mask is ``[num_envs, size]``."""
        if self.size is None:
            return obs, None
        if self.obs_key is not None:
            return obs[self.obs_key], self._rows(obs[self.key], num_envs)
        if self.key not in info:
            return obs, None
        rows = self._rows(info[self.key], num_envs, present=info.get(f"_{self.key}"))
        return obs, rows

    def read_single(self, obs: Any, info: dict[str, Any]) -> tuple[Any, np.ndarray | None]:
        """The same for one (unbatched) env: ``(observation, mask [size] or None)``."""
        if self.size is None:
            return obs, None
        if self.obs_key is not None:
            return obs[self.obs_key], self._rows([obs[self.key]], 1)[0]
        if self.key not in info:
            return obs, None
        return obs, self._rows([info[self.key]], 1)[0]

    def _rows(self, masks: Any, num_envs: int, present: Any = None) -> np.ndarray:
        assert self.size is not None
        out = np.ones((num_envs, self.size), dtype=bool)
        for i in range(num_envs):
            if present is not None and not bool(present[i]):
                continue  # this env gave no mask this step: every action is allowed
            row = np.asarray(masks[i])
            if row.size != self.size:
                raise EnvError(f"action mask {self.key!r} has {row.size} entries; the action space has {self.size}")
            out[i] = row.reshape(-1).astype(bool)
        return out
