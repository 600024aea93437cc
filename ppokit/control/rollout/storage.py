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
    from ppokit.control.rollout.host import RolloutCollector


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
    #: The env's rewards as it gave them (float64), for the episodes' returns; ``rewards`` holds
    #: what is trained on (scaled, with reward normalisation).
    raw_rewards: np.ndarray
    critic: np.ndarray | None = None
    #: Steps at which the env reported episodes of its own (see ``rollout.env_episodes``).
    reports: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)
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
            raw_rewards=np.empty((T, N), dtype=np.float64),
        )

    def settle(self, pending: np.ndarray, starts: np.ndarray, ep_return: np.ndarray, ep_length: np.ndarray) -> None:
        """After the last step: what the per-step loop leaves out, worked out once for the rollout.

        ``pending``/``starts``: which envs' first step was a reset step / an episode's first
        observation, at the rollout's start. Fills ``valid`` (not a reset step) and ``starts``, and
        appends the episodes that ended to ``finished_r``/``finished_l`` in the order they ended
        (step, then env): the env's own report where it gave one at that step, else the rewards of
        the episode's valid steps, added one by one from ``ep_return``/``ep_length`` (each env's
        unfinished sums, updated in place to carry into the next rollout).
        """
        done = self.terminated | self.truncated
        self.valid[0] = ~pending
        np.logical_not(done[:-1], out=self.valid[1:])
        self.starts[0] = starts
        self.starts[1:] = ~self.valid[:-1]
        ended = done & self.valid
        rewards = self.raw_rewards * self.valid
        own: dict[tuple[int, int], tuple[float, int]] = {}
        for i in range(ended.shape[1]):
            total, length, start = float(ep_return[i]), int(ep_length[i]), 0
            column, counted = rewards[:, i].tolist(), self.valid[:, i]
            for t in np.flatnonzero(ended[:, i]).tolist():
                for r in column[start:t + 1]:
                    total += r
                own[t, i] = (total, length + int(np.count_nonzero(counted[start:t + 1])))
                total, length, start = 0.0, 0, t + 1
            for r in column[start:]:
                total += r
            ep_return[i], ep_length[i] = total, length + int(np.count_nonzero(counted[start:]))
        for t, i in np.argwhere(ended).tolist():
            report = self.reports.get(t)
            if report is None:
                self.finished_r.append(own[t, i][0])
                self.finished_l.append(own[t, i][1])
            elif report[2][i]:
                self.finished_r.append(float(report[0][i]))
                self.finished_l.append(int(report[1][i]))


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
