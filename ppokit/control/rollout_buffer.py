"""A rollout's storage: preallocated NumPy buffers while it is collected, tensors after."""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from ppokit.control.rollout import RolloutCollector


@dataclass
class Rollout:
    """One rollout, time-major ``[T, N, ...]``."""

    obs: Tensor
    actions: Tensor
    logp: Tensor
    values: Tensor
    rewards: Tensor
    terminated: Tensor
    truncated: Tensor
    valid: Tensor
    last_value: Tensor
    #: ``[T, N, actions]``: which actions were allowed at each step; None when the env gives no masks.
    masks: Tensor | None = None
    #: ``[T, N, ...]``: the critic's own observations; None when it sees the actor's.
    critic_obs: Tensor | None = None
    #: Recurrent policies: ``[T, N]`` whether the observation at t is an episode's first, and the
    #: core's state ``[N, S]`` before the rollout's first step.
    starts: Tensor | None = None
    initial_state: Tensor | None = None


@dataclass
class RolloutStorage:
    """One rollout's storage, time-major ``[T, N, ...]``, and the episodes that ended during it."""

    obs: np.ndarray
    actions: np.ndarray
    logp: np.ndarray
    values: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    valid: np.ndarray
    starts: np.ndarray
    masks: np.ndarray | None
    critic: np.ndarray | None = None
    finished_r: list[float] = dataclasses.field(default_factory=list)
    finished_l: list[int] = dataclasses.field(default_factory=list)

    @classmethod
    def allocate(cls, c: RolloutCollector) -> RolloutStorage:
        T, N = c.num_steps, c.num_envs
        obs_dtype = np.uint8 if c.obs_dtype == torch.uint8 and c.obs_rms is None else np.float32
        return cls(
            obs=np.empty((T, N, *c.obs_shape), dtype=obs_dtype),
            actions=np.empty((T, N, *c.action_shape), dtype=np.float32 if c.action_dtype == torch.float32 else np.int64),
            logp=np.empty((T, N), dtype=np.float32), values=np.empty((T, N), dtype=np.float32),
            rewards=np.empty((T, N), dtype=np.float32), terminated=np.empty((T, N), dtype=bool),
            truncated=np.empty((T, N), dtype=bool), valid=np.empty((T, N), dtype=bool),
            starts=np.empty((T, N), dtype=bool),
            masks=None if not c.policy.spec.action_mask else np.ones((T, N, c.mask_size), dtype=bool),
        )


def record_episodes(collector: Any, returns: list[float], lengths: list[int]) -> None:
    """Add a rollout's finished episodes to a collector's log (``episode_returns`` and
    ``episode_lengths``, the last 100 of each; ``episodes_total``; ``last_finished``)."""
    collector.episode_returns.extend(returns)
    collector.episode_lengths.extend(lengths)
    collector.episodes_total += len(returns)
    collector.last_finished = (returns, lengths)


def episode_log_state(collector: Any) -> dict[str, Any]:
    """A collector's episode log as plain data, for its checkpoint."""
    return {
        "episode_returns": list(collector.episode_returns),
        "episode_lengths": list(collector.episode_lengths),
        "episodes_total": collector.episodes_total,
        "last_finished": [list(collector.last_finished[0]), list(collector.last_finished[1])],
    }


def load_episode_log(collector: Any, state: dict[str, Any]) -> None:
    """Restore what :func:`episode_log_state` saved."""
    collector.episode_returns = deque((float(r) for r in state["episode_returns"]), maxlen=100)
    collector.episode_lengths = deque((int(n) for n in state["episode_lengths"]), maxlen=100)
    collector.episodes_total = int(state["episodes_total"])
    collector.last_finished = ([float(r) for r in state["last_finished"][0]],
                               [int(n) for n in state["last_finished"][1]])


def check_saved_obs(obs: Any, num_envs: int, obs_shape: tuple[int, ...]) -> None:
    """Refuse a saved observation batch of another shape (a checkpoint of another ``num_envs``)."""
    if obs is not None and tuple(obs.shape) != (num_envs, *obs_shape):
        raise ValueError(f"saved observation batch has shape {tuple(obs.shape)}, expected "
                         f"{(num_envs, *obs_shape)} (was num_envs changed?)")
