"""Collecting experience from several copies of a PettingZoo env, one batch of rows per policy group.

A group's rows are its agents in every env copy (row ``e * n + j`` is agent ``j`` of the group in copy
``e``), time-major ``[T, rows]`` like control's. A row has a step only where its agent acted
(``acted``): an agent that finished early, has not joined yet or waits for its turn has none there,
its reward is not its own to learn from, and GAE runs over each row's own steps
(:func:`~ppokit.core.advantages.gae_over_own_steps`), so such gaps neither cut nor feed an advantage.
A reward that arrives after an agent's action (on other agents' turns) is added to that action's
row. An agent's life that ends by truncation bootstraps from the value of its final observation,
computed at once; an env copy whose agents are all done is reset in the same step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ppokit.control.algorithm import ControlBatch, SequenceBatch
from ppokit.control.rollout.storage import EpisodeLog
from ppokit.core.advantages import gae_over_own_steps
from ppokit.errors import EnvError
from ppokit.multiagent.envs import AgentEnv
from ppokit.multiagent.groups import PolicyGroup


@dataclass
class GroupBuffers:
    """One rollout of one group, ``[T, rows, ...]``."""

    obs: np.ndarray
    actions: np.ndarray
    logp: np.ndarray
    values: np.ndarray
    raw_rewards: np.ndarray
    acted: np.ndarray
    terminated: np.ndarray
    ended: np.ndarray
    end_values: np.ndarray
    starts: np.ndarray
    masks: np.ndarray | None
    critic: np.ndarray | None


class MultiAgentCollector:
    """Owns the env copies' running state between rollouts: who acts, recurrent states, episode sums."""

    def __init__(self, envs: list[AgentEnv], groups: list[PolicyGroup], num_steps: int, gamma: float,
                 clip_reward: float, global_state: bool, seed: int, bootstrap_truncation: bool = True) -> None:
        """``global_state``: the critics read the env's state (MAPPO) rather than each agent's observation;
        ``bootstrap_truncation``: a truncated life bootstraps from its final observation's value (else it
        ends there, as a termination does)."""
        self.bootstrap_truncation = bootstrap_truncation
        self.envs, self.groups, self.num_steps = envs, groups, num_steps
        self.gamma, self.clip_reward = gamma, clip_reward
        self.global_state = global_state
        self.seed = seed
        self.num_envs = len(envs)
        #: agent -> (group index, slot in the group)
        self.where = {a: (g, j) for g, group in enumerate(groups) for j, a in enumerate(group.agents)}
        self.possible = [a for group in groups for a in group.agents]
        self.episodes = EpisodeLog()
        self._started = False
        self._states = [group.policy.initial_state(self.num_envs * len(group.agents), group.device)
                        for group in groups]
        #: Whether a row's next own step starts a new life (an episode's first, or after its end).
        self._fresh = [np.ones(self.num_envs * len(group.agents), dtype=bool) for group in groups]
        #: Each row's discounted return so far (reward normalisation), carried across rollouts.
        self._disc = [np.zeros(self.num_envs * len(group.agents), dtype=np.float64) for group in groups]
        self._ep_return: list[dict[str, float]] = [{} for _ in envs]
        self._ep_length = np.zeros(self.num_envs, dtype=np.int64)
        #: The state of every env copy's global input to the critic, set after each step and reset.
        self._state_dims: int | None = None

    # ------------------------------------------------------------------ the critic's global input
    def global_input(self, env: AgentEnv) -> np.ndarray:
        """The env's ``state()``, or every possible agent's observation (as its policy reads it,
        zeros where absent) concatenated, for an env that has none."""
        state = env.state()
        if state is not None:
            return state
        parts = []
        live = env.live
        for group in self.groups:
            for a in group.agents:
                if a in live:
                    obs = group.observation_only(live[a])
                    parts.append(np.asarray(obs, dtype=np.float32).reshape(-1))
                else:
                    parts.append(np.zeros(group.obs_size, dtype=np.float32))
        return np.concatenate(parts)

    def state_size(self) -> int:
        """The size of the critic's global input, from a first reset of copy 0."""
        if not self._started:
            self.reset()
        return int(self.global_input(self.envs[0]).size)

    # ------------------------------------------------------------------ resets
    def reset(self) -> None:
        for e, env in enumerate(self.envs):
            env.reset(seed=self.seed + e)
        self._started = True

    def _reset_copy(self, e: int) -> None:
        self.envs[e].reset()
        for g, group in enumerate(self.groups):
            n = len(group.agents)
            self._fresh[g][e * n:(e + 1) * n] = True

    # ------------------------------------------------------------------ reading the copies
    def _inputs(self, g: int, which: str = "acting") -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray,
                                                                np.ndarray | None]:
        """For group ``g``: ``(raw observations, slots, masks, present, global states)`` over its rows,
        of the agents acting now (``which='acting'``) or of every live agent."""
        group = self.groups[g]
        n = len(group.agents)
        rows = self.num_envs * n
        obs = np.zeros((rows, *(group.reader.observation_space.shape or ())), dtype=np.float32 if not group.image else np.uint8)
        present = np.zeros(rows, dtype=bool)
        masks = None
        plain = group.reader.passes_through
        for e, env in enumerate(self.envs):
            seen = env.acting if which == "acting" else env.live
            for a, raw in seen.items():
                where = self.where.get(a)
                if where is None:
                    raise EnvError(f"{type(env.env).__name__}: agent {a!r} is not in possible_agents "
                                   f"{self.possible}; PettingZoo envs list every agent that may appear there")
                if where[0] != g:
                    continue
                row = e * n + where[1]
                info = env.infos.get(a) if which == "acting" else None
                if plain and not info:  # the observation as the env gives it, no mask to read
                    obs[row] = raw
                    present[row] = True
                    continue
                if which == "acting":
                    value, mask = group.reader.read_single(raw, info or {})
                else:
                    value, mask = group.observation_only(raw), None
                obs[row] = value[0]
                present[row] = True
                if mask is not None:
                    if masks is None:
                        masks = np.ones((rows, group.reader.size or 0), dtype=bool)
                    masks[row] = mask
        slots = np.tile(np.arange(n), self.num_envs)
        states = None
        if self.global_state:
            states = np.stack([self._global[e] for e in range(self.num_envs) for _ in range(n)])
        return obs, slots, masks, present, states

    # ------------------------------------------------------------------ one rollout
    @torch.inference_mode()
    def collect(self) -> list[ControlBatch | SequenceBatch]:
        """``num_steps`` steps of every copy; each group's batch, its advantages estimated."""
        if not self._started:
            self.reset()
        T = self.num_steps
        self._global = [self.global_input(env) for env in self.envs] if self.global_state else []
        buffers = [self._allocate(group, T) for group in self.groups]
        initial = [s.clone() for s in self._states]
        #: (group, row) -> the step of this rollout where that row's agent last acted.
        last: list[np.ndarray] = [np.full(self.num_envs * len(group.agents), -1) for group in self.groups]
        finished_r: list[float] = []
        finished_l: list[int] = []
        for t in range(T):
            outputs = []
            for g, group in enumerate(self.groups):
                b = buffers[g]
                raw, slots, masks, present, states = self._inputs(g)
                obs = group.policy_obs(raw, slots, present)
                critic = group.critic_obs(states, slots, present) if states is not None else None
                starts = self._fresh[g] & present
                action, logp, value, self._states[g] = group.act(obs, masks, critic, self._states[g],
                                                                 starts | self._fresh[g])
                b.obs[t], b.actions[t], b.logp[t], b.values[t] = obs, action, logp, value
                b.acted[t], b.starts[t] = present, self._fresh[g].copy()
                if b.masks is not None and masks is not None:
                    b.masks[t] = masks
                if b.critic is not None and critic is not None:
                    b.critic[t] = critic
                self._fresh[g] &= ~present
                last[g][present] = t
                outputs.append(action)
            bootstrap: list[tuple[int, int, int, Any, np.ndarray | None]] = []
            for e, env in enumerate(self.envs):
                actions = {}
                for a in env.acting:
                    g, j = self.where[a]
                    n = len(self.groups[g].agents)
                    actions[a] = self.groups[g].to_env(outputs[g][e * n + j])
                result = env.step(actions)
                self._ep_length[e] += 1
                for a, r in result.rewards.items():
                    g, j = self.where[a]
                    row = e * len(self.groups[g].agents) + j
                    self._ep_return[e][a] = self._ep_return[e].get(a, 0.0) + r
                    if last[g][row] >= 0:  # an action taken in an earlier rollout cannot be credited now
                        buffers[g].raw_rewards[last[g][row], row] += r
                state_now = self.global_input(env) if self.global_state and result.ended else None
                for a, (terminated, final) in result.ended.items():
                    g, j = self.where[a]
                    row = e * len(self.groups[g].agents) + j
                    self._fresh[g][row] = True
                    if last[g][row] < 0:
                        continue
                    buffers[g].ended[last[g][row], row] = True
                    ends_here = terminated or final is None or not self.bootstrap_truncation
                    buffers[g].terminated[last[g][row], row] = ends_here
                    if not ends_here:
                        bootstrap.append((g, row, int(last[g][row]), final, state_now))
                if result.over:
                    finished_r.append(float(np.mean(list(self._ep_return[e].values()))) if self._ep_return[e] else 0.0)
                    finished_l.append(int(self._ep_length[e]))
                    self._ep_return[e], self._ep_length[e] = {}, 0
                    self._reset_copy(e)
                if self.global_state:
                    self._global[e] = self.global_input(env)
            self._bootstrap(bootstrap, buffers)
        self.episodes.record(finished_r, finished_l)
        return [self._batch(g, buffers[g], initial[g]) for g in range(len(self.groups))]

    def _bootstrap(self, pending: list[tuple[int, int, int, Any, np.ndarray | None]],
                   buffers: list[GroupBuffers]) -> None:
        """The values of truncated lives' final observations (in return units), where GAE reads them."""
        for g, group in enumerate(self.groups):
            mine = [p for p in pending if p[0] == g]
            if not mine:
                continue
            rows = np.array([p[1] for p in mine])
            raw = np.stack([group.observation_only(p[3])[0] for p in mine])
            obs = group.policy_obs(raw, rows % len(group.agents), None)
            critic = None
            if self.global_state:
                critic = group.critic_obs(np.stack([p[4] for p in mine if p[4] is not None]), rows % len(group.agents), None)
            state = self._states[g][rows] if group.policy.core is not None else None
            values = group.values(obs, critic, state, np.zeros(len(mine), dtype=bool) if state is not None else None)
            for (_, row, t, _, _), v in zip(mine, values):
                buffers[g].end_values[t, row] = v

    def _allocate(self, group: PolicyGroup, T: int) -> GroupBuffers:
        rows = self.num_envs * len(group.agents)
        width = group.spec.action_dims[0] if group.spec.head in ("multi_categorical", "gaussian", "mixed") else 0
        action_shape = (len(group.spec.action_dims),) if group.spec.head == "multi_categorical" else (
            (width,) if group.spec.head in ("gaussian", "mixed") else ())
        action_dtype = np.int64 if group.spec.head in ("categorical", "multi_categorical") else np.float32
        critic = (np.zeros((T, rows, group.spec.critic_obs_shape[0]), dtype=np.float32)
                  if group.spec.critic_obs_shape else None)
        masks = np.ones((T, rows, group.reader.size), dtype=bool) if group.reader.size is not None else None
        return GroupBuffers(
            obs=np.zeros((T, rows, *group.obs_shape), dtype=group.obs_dtype),
            actions=np.zeros((T, rows, *action_shape), dtype=action_dtype),
            logp=np.zeros((T, rows), np.float32), values=np.zeros((T, rows), np.float32),
            raw_rewards=np.zeros((T, rows), np.float64), acted=np.zeros((T, rows), bool),
            terminated=np.zeros((T, rows), bool), ended=np.zeros((T, rows), bool),
            end_values=np.zeros((T, rows), np.float32), starts=np.zeros((T, rows), bool), masks=masks, critic=critic)

    def _scaled_rewards(self, g: int, b: GroupBuffers) -> np.ndarray:
        """Rewards divided by the running std of each row's discounted return (control's scaling), over
        the rows' own steps."""
        group = self.groups[g]
        if group.ret_rms is None:
            return b.raw_rewards.astype(np.float32)
        disc = self._disc[g]
        for t in range(b.raw_rewards.shape[0]):
            own = b.acted[t]
            disc[own] = disc[own] * self.gamma + b.raw_rewards[t, own]
            if own.any():
                group.ret_rms.update_array(disc[own])
            disc[b.ended[t]] = 0.0
        return group.ret_rms.scale_array(b.raw_rewards, self.clip_reward).astype(np.float32)

    def _last_values(self, g: int) -> np.ndarray:
        group = self.groups[g]
        raw, slots, _, present, states = self._inputs(g, which="live")
        values = np.zeros(len(raw), dtype=np.float32)
        if present.any():
            obs = group.policy_obs(raw, slots, None)
            critic = group.critic_obs(states, slots, None) if states is not None else None
            state = self._states[g] if group.policy.core is not None else None
            starts = self._fresh[g] if state is not None else None
            values = np.where(present, group.values(obs, critic, state, starts), 0.0).astype(np.float32)
        return values

    def _batch(self, g: int, b: GroupBuffers, initial_state: Tensor) -> ControlBatch | SequenceBatch:
        group, c = self.groups[g], self.groups[g].config
        rewards = self._scaled_rewards(g, b)
        advantages, returns = gae_over_own_steps(rewards, b.values, b.acted, b.ended, b.end_values,
                                                 self._last_values(g), c.gamma, c.gae_lambda)
        device = group.device

        def tensor(a: np.ndarray) -> Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(device)

        if group.policy.core is not None:
            return SequenceBatch(
                logp=tensor(b.logp.T), values=tensor(b.values.T), advantages=tensor(advantages.T),
                returns=tensor(returns.T), mask=tensor(b.acted.T), seq_obs=tensor(b.obs), seq_actions=tensor(b.actions),
                seq_starts=tensor(b.starts), initial_state=initial_state,
                seq_action_mask=None if b.masks is None else tensor(b.masks))
        keep = np.flatnonzero(b.acted.reshape(-1))

        def flat(a: np.ndarray) -> Tensor:
            return tensor(a.reshape(-1, *a.shape[2:]).take(keep, axis=0))

        return ControlBatch(
            obs=flat(b.obs), actions=flat(b.actions), logp=flat(b.logp), values=flat(b.values),
            advantages=flat(advantages), returns=flat(returns), action_mask=None if b.masks is None else flat(b.masks),
            critic_obs=None if b.critic is None else flat(b.critic))

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        return {
            "episodes": self.episodes.state_dict(),
            "started": self._started,
            "fresh": [f.copy() for f in self._fresh],
            "disc": [d.copy() for d in self._disc],
            "ep_return": [dict(r) for r in self._ep_return],
            "ep_length": self._ep_length.copy(),
            "recurrent_states": [s.cpu().numpy() for s in self._states],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.episodes.load_state_dict(state["episodes"])
        self._started = bool(state["started"])
        for own, saved in zip(self._fresh, state["fresh"]):
            own[:] = saved
        for own, saved in zip(self._disc, state["disc"]):
            own[:] = saved
        self._ep_return = [{str(k): float(v) for k, v in r.items()} for r in state["ep_return"]]
        self._ep_length[:] = state["ep_length"]
        self._states = [torch.as_tensor(s, device=group.device) for s, group in zip(state["recurrent_states"],
                                                                                    self.groups)]
