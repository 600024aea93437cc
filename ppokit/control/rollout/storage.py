"""A rollout's storage (preallocated NumPy buffers while it is collected, tensors after) and the
episodes that end in it: the env's own reports of them, and the collector's log."""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from torch import Tensor


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
    def allocate(cls, num_steps: int, num_envs: int, obs_shape: tuple[int, ...], obs_dtype: type[np.generic],
                 action_shape: tuple[int, ...], action_dtype: type[np.generic], mask_size: int | None) -> RolloutStorage:
        """Empty buffers of ``num_steps`` × ``num_envs``; ``mask_size``: actions per mask, or None when
        the policy takes no masks."""
        T, N = num_steps, num_envs
        return cls(
            obs=np.empty((T, N, *obs_shape), dtype=obs_dtype), actions=np.empty((T, N, *action_shape), dtype=action_dtype),
            logp=np.empty((T, N), dtype=np.float32), values=np.empty((T, N), dtype=np.float32),
            rewards=np.empty((T, N), dtype=np.float32), terminated=np.empty((T, N), dtype=bool),
            truncated=np.empty((T, N), dtype=bool), valid=np.empty((T, N), dtype=bool),
            starts=np.empty((T, N), dtype=bool),
            masks=None if mask_size is None else np.ones((T, N, mask_size), dtype=bool),
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


def records_episodes(env: Any) -> bool:
    """Whether a vector env's envs record their own episode statistics: its metadata declares
    ``episode_statistics``, or (in-process envs) one's wrappers include ``RecordEpisodeStatistics``.
    Known before the first game ends, so the lives lost before it are not counted as episodes."""
    if getattr(env, "metadata", {}).get("episode_statistics"):
        return True
    for sub in getattr(env, "envs", ())[:1]:
        sub = getattr(sub, "checked_env", sub)  # under its first-answer check (ppokit.control.envs.contract)
        while isinstance(sub, gym.Wrapper):
            if isinstance(sub, gym.wrappers.RecordEpisodeStatistics):
                return True
            sub = sub.env
    return False


def env_episodes(info: Any, ended: np.ndarray, reports: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(returns, lengths, reported)`` of the episodes the env itself reports as over (Gymnasium's
    ``RecordEpisodeStatistics`` under the vector env: ``info['episode']``), or None when the env
    keeps no statistics of its own (``reports`` False and none in ``info``).

    An env that records its own statistics knows better than the rewards ppokit sees: Atari's
    preprocessing clips rewards and ends a training episode at each lost life, while the score of a
    game is the unclipped sum over all its lives. Such an env reports a game only when it ends, so a
    ``done`` it does not report is a lost life and counts as no episode.
    """
    stats = info.get("episode") if isinstance(info, dict) else None
    if not isinstance(stats, dict):
        if not reports:
            return None
        return np.zeros(len(ended)), np.zeros(len(ended), dtype=np.int64), np.zeros(len(ended), dtype=bool)
    reported = np.asarray(info.get("_episode", np.ones_like(ended)), dtype=bool)
    return np.asarray(stats["r"], dtype=np.float64), np.asarray(stats["l"]), reported & ended


class EpisodeLog:
    """The episodes a collector has seen end: the last 100 returns and lengths (the metrics row's
    means), how many in all, and those of the latest rollout."""

    #: How many recent episodes the means are taken over.
    RECENT = 100

    def __init__(self) -> None:
        self.returns: deque[float] = deque(maxlen=self.RECENT)
        self.lengths: deque[int] = deque(maxlen=self.RECENT)
        self.total = 0
        #: ``(returns, lengths)`` of the episodes that ended during the latest rollout.
        self.last: tuple[list[float], list[int]] = ([], [])

    def record(self, returns: list[float], lengths: list[int]) -> None:
        """Add a rollout's finished episodes."""
        self.returns.extend(returns)
        self.lengths.extend(lengths)
        self.total += len(returns)
        self.last = (returns, lengths)

    def carry_over(self, state: dict[str, Any]) -> None:
        """Add the finished episodes of a saved log (a resume whose envs start fresh episodes)."""
        self.returns.extend(float(r) for r in state["episode_returns"])
        self.lengths.extend(int(n) for n in state["episode_lengths"])
        self.total = int(state["episodes_total"])

    def state_dict(self) -> dict[str, Any]:
        """The log as plain data, under the keys a collector's checkpoint has always used."""
        return {
            "episode_returns": list(self.returns),
            "episode_lengths": list(self.lengths),
            "episodes_total": self.total,
            "last_finished": [list(self.last[0]), list(self.last[1])],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.returns = deque((float(r) for r in state["episode_returns"]), maxlen=self.RECENT)
        self.lengths = deque((int(n) for n in state["episode_lengths"]), maxlen=self.RECENT)
        self.total = int(state["episodes_total"])
        self.last = ([float(r) for r in state["last_finished"][0]], [int(n) for n in state["last_finished"][1]])


def check_saved_obs(obs: Any, num_envs: int, obs_shape: tuple[int, ...]) -> None:
    """Refuse a saved observation batch of another shape (a checkpoint of another ``num_envs``)."""
    if obs is not None and tuple(obs.shape) != (num_envs, *obs_shape):
        raise ValueError(f"saved observation batch has shape {tuple(obs.shape)}, expected "
                         f"{(num_envs, *obs_shape)} (was num_envs changed?)")
