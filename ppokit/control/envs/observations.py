"""What the policy sees of an env's observation, and the invalid-action mask beside it.

**Observations.** A Box goes to the policy as it is. Dict, Tuple, Discrete, MultiDiscrete and
MultiBinary observations are flattened by Gymnasium's own ``spaces.flatten`` (one-hot for the
discrete parts, vector parts as they are, concatenated in the space's key order), so the MLP, the
normalisation (element by element) and the fast path see one vector. Images inside a Dict are not
supported yet (they would need the CNN per part).

**Masks.** An env gives a mask (a boolean per action; for MultiDiscrete, each dimension's booleans concatenated)
in one of two places, the conventions of Gymnasium and PettingZoo:

- ``info["action_mask"]``, returned with each observation by ``reset`` and ``step``;
- the ``"action_mask"`` key of a Dict observation whose only other key holds the observation itself
  (``{"observation": Box, "action_mask": MultiBinary}``).

The key is ``ControlConfig.action_mask_key``. Masked actions get probability 0 in sampling,
log-probabilities, entropy and the PPO ratio (:mod:`ppokit.control.policy.heads`). An env that gives no
mask for some step (or some env of the vector) allows every action there.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ppokit.errors import EnvError


def _has_image(space: spaces.Space) -> bool:
    if isinstance(space, spaces.Dict):
        return any(_has_image(s) for s in space.spaces.values())
    if isinstance(space, spaces.Tuple):
        return any(_has_image(s) for s in space.spaces)
    return isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3


def flatten_one(space: spaces.Space, obs: Any) -> np.ndarray:
    """One observation of ``space`` as the flat float32 vector the policy sees (Gymnasium's layout)."""
    return np.asarray(spaces.flatten(space, obs), dtype=np.float32)


def as_policy_input(env_space: spaces.Space, policy_space: spaces.Space, obs: Any) -> Any:
    """What ``predict`` was given, flattened when it is one raw observation of a non-Box env space."""
    if env_space is not policy_space and env_space.contains(obs):
        return flatten_one(env_space, obs)
    return obs


class ObservationReader:
    """Reads the policy's observation and the action mask out of what a (vector) env returns."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, key: str,
                 critic_key: str = "critic_obs") -> None:
        self.key, self.critic_key = key, critic_key
        if isinstance(action_space, spaces.Discrete):
            self.size: int | None = int(action_space.n)
        elif isinstance(action_space, spaces.MultiDiscrete):
            self.size = int(np.asarray(action_space.nvec).sum())
        else:
            self.size = None  # Box actions have nothing to mask
        #: With a mask or a critic observation inside a Dict observation: the key of the observation
        #: proper (one other key), or ``""`` when several keys remain (a Dict of them is the observation).
        self.obs_key: str | None = None
        #: The observation space the env gives, less the mask and the critic's observation.
        self.env_space = observation_space
        #: The critic's own (privileged) observation as the env gives it; None when the critic shares the actor's.
        self.critic_env_space: spaces.Space | None = None
        self.mask_in_obs = False
        if isinstance(observation_space, spaces.Dict):
            parts = dict(observation_space.spaces)
            if key in parts:
                if self.size is None:
                    raise EnvError(f"a Dict observation with an {key!r} key needs Discrete or MultiDiscrete actions; "
                                   f"got {action_space}")
                self.mask_in_obs = True
                del parts[key]
            if critic_key in parts:
                self.critic_env_space = parts.pop(critic_key)
            if len(parts) < len(observation_space.spaces):
                if not parts:
                    raise EnvError(f"observation space {observation_space} holds no observation for the actor")
                self.obs_key = next(iter(parts)) if len(parts) == 1 else ""
                self.env_space = parts[self.obs_key] if self.obs_key else spaces.Dict(parts)
        #: Whether observations are flattened for the policy (anything but a Box).
        self.flatten = not isinstance(self.env_space, spaces.Box)
        if self.flatten and _has_image(self.env_space):
            raise EnvError(f"observation space {self.env_space}: images inside Dict or Tuple observations are not "
                           "supported yet")
        #: What the policy sees.
        self.observation_space: spaces.Space = self.env_space
        if self.flatten:
            flat = spaces.flatten_space(self.env_space)
            assert isinstance(flat, spaces.Box)
            self.observation_space = spaces.Box(flat.low.astype(np.float32), flat.high.astype(np.float32),
                                                dtype=np.float32)

    @property
    def passes_through(self) -> bool:
        """Whether the observation goes to the policy as the env gives it, with no critic part, so
        only a mask in ``info`` can make :meth:`read` return anything else."""
        return self.obs_key is None and not self.flatten and not self.mask_in_obs and self.critic_env_space is None

    @property
    def in_observation(self) -> bool:
        """Whether the mask is a key of the observation (so the policy is masked from the start)."""
        return self.mask_in_obs

    @property
    def critic_observation_space(self) -> spaces.Box | None:
        """What the critic sees when the env gives it an observation of its own (flattened), else None."""
        if self.critic_env_space is None:
            return None
        flat = spaces.flatten_space(self.critic_env_space)
        assert isinstance(flat, spaces.Box)
        return spaces.Box(flat.low.astype(np.float32), flat.high.astype(np.float32), dtype=np.float32)

    def read_critic(self, obs: Any, num_envs: int) -> np.ndarray | None:
        """The critic's observation out of a vector env's batch, flattened; None when it has none."""
        if self.critic_env_space is None:
            return None
        batched = gym.vector.utils.batch_space(self.critic_env_space, num_envs)
        return np.stack([flatten_one(self.critic_env_space, item)
                         for item in gym.vector.utils.iterate(batched, obs[self.critic_key])])

    def read(self, obs: Any, info: dict[str, Any], num_envs: int) -> tuple[Any, np.ndarray | None]:
        """``(observation, mask or None)`` for a vector env's batch; the mask is ``[num_envs, size]``."""
        mask = None
        if self.mask_in_obs:
            mask = self._rows(obs[self.key], num_envs)
        elif self.size is not None and self.key in info:
            mask = self._rows(info[self.key], num_envs, present=info.get(f"_{self.key}"))
        return self.policy_observation(self._actor_part(obs), num_envs), mask

    def _actor_part(self, obs: Any) -> Any:
        if self.obs_key is None:
            return obs
        if self.obs_key:
            return obs[self.obs_key]
        return {k: v for k, v in obs.items() if k not in (self.key, self.critic_key)}

    def read_single(self, obs: Any, info: dict[str, Any]) -> tuple[Any, np.ndarray | None]:
        """The same for one (unbatched) env: ``(observation [1, ...], mask [size] or None)``."""
        mask = None
        if self.mask_in_obs:
            mask = self._rows([obs[self.key]], 1)[0]
        elif self.size is not None and self.key in info:
            mask = self._rows([info[self.key]], 1)[0]
        return self.policy_observation(self._actor_part(obs), None), mask

    def policy_observation(self, obs: Any, num_envs: int | None) -> Any:
        """The env's observation (a batch of ``num_envs``, or one when None) as the policy sees it."""
        if not self.flatten:
            return obs if num_envs is not None else np.asarray(obs)[None]
        if num_envs is None:
            return flatten_one(self.env_space, obs)[None]
        batched = gym.vector.utils.batch_space(self.env_space, num_envs)
        return np.stack([flatten_one(self.env_space, item) for item in gym.vector.utils.iterate(batched, obs)])

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
