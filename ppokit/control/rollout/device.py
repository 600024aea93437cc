r"""Collecting a rollout from a torch env without leaving its device.

With a :class:`~ppokit.control.envs.torch_env.TorchVecEnv` (a GPU simulator), observations, actions,
rewards, the rollout buffers, the normalisers and the episode counters all stay on the env's device:
nothing in the per-step loop reads a tensor back to the host. Once per rollout the finished
episodes' returns and lengths and the normalisers' statistics come back in one transfer.

The env resets an ended episode in the step it ends (same-step autoreset), so every step is valid
and the episode boundary is that step's ``terminated | truncated``. The :class:`Rollout` it hands to
:class:`~ppokit.control.algorithm.PPOAlgorithm` marks every boundary as ``terminated`` and carries a
truncated episode's bootstrap in the reward: the GAE target of a truncated step is
:math:`r_t + \gamma V(s_{\text{final}})`, and with :math:`\\hat r_t = r_t + \gamma V(s_{\text{final}})`
and a zero next value the recursion computes exactly that (rsl_rl folds time-outs the same way).
:math:`V(s_{\text{final}})` is the critic on ``info['final_obs']`` where the env gives it (run once
for the whole rollout, after it), else :math:`V(s_t)` (see :mod:`ppokit.control.envs.torch_env`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from ppokit.control.envs.torch_env import check_reset, check_step, check_torch_env, final_observation
from ppokit.control.policy.networks import ActorCritic
from ppokit.control.rollout.storage import EpisodeLog, Rollout, check_saved_obs
from ppokit.core.running_stats import DeviceMeanStd, RunningMeanStd
from ppokit.errors import EnvError


class TorchActions:
    """The policy's actions as a torch env takes them, on the device: a start offset added
    (Discrete, MultiDiscrete), Box actions clipped to the bounds and shaped like the space."""

    def __init__(self, space: spaces.Space, device: torch.device) -> None:
        self.space = space
        if isinstance(space, spaces.Discrete):
            self.shape: tuple[int, ...] = ()
            self.dtype = torch.int64
            self.start: Tensor | None = torch.tensor(int(space.start), device=device) if int(space.start) else None
        elif isinstance(space, spaces.MultiDiscrete):
            start = np.asarray(space.start).ravel()
            self.shape, self.dtype = (start.size,), torch.int64
            self.start = torch.as_tensor(start, device=device) if np.any(start != 0) else None
        elif isinstance(space, spaces.Box):
            self.shape, self.dtype = (int(np.prod(space.shape)),), torch.float32
            self.low = torch.as_tensor(space.low.reshape(-1), dtype=torch.float32, device=device)
            self.high = torch.as_tensor(space.high.reshape(-1), dtype=torch.float32, device=device)
            self.env_dtype = torch.float64 if space.dtype == np.float64 else torch.float32
        else:
            raise EnvError(f"torch env: action space {space} is not supported (Discrete, MultiDiscrete or Box)")

    def __call__(self, action: Tensor) -> Tensor:
        if isinstance(self.space, spaces.Box):
            # Clip only what the env sees; the unclipped sample keeps its log-probability.
            clipped = torch.clamp(action, self.low, self.high)
            return clipped.reshape(action.shape[0], *self.space.shape).to(self.env_dtype)
        return action + self.start if self.start is not None else action


class DeviceRolloutCollector:
    """The rollout of a torch env: buffers preallocated on its device, reused by every rollout (a
    :class:`Rollout` is valid until the next :meth:`collect`)."""

    def __init__(self, env: Any, policy: ActorCritic, device: torch.device, num_steps: int, *,
                 obs_rms: RunningMeanStd | None = None, ret_rms: RunningMeanStd | None = None, gamma: float = 0.99,
                 clip_obs: float = 10.0, clip_reward: float = 10.0) -> None:
        check_torch_env(env, device)
        self.env, self.policy, self.device, self.num_steps = env, policy, device, num_steps
        self.num_envs = N = int(env.num_envs)
        self.gamma, self.clip_obs, self.clip_reward = gamma, clip_obs, clip_reward
        self.obs_rms, self.ret_rms = obs_rms, ret_rms
        self.obs_stats = DeviceMeanStd(obs_rms, device) if obs_rms is not None else None
        self.ret_stats = DeviceMeanStd(ret_rms, device) if ret_rms is not None else None
        self.to_env = TorchActions(env.single_action_space, device)
        self.obs_shape = tuple(env.single_observation_space.shape)
        T = num_steps

        def buffer(*shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
            return torch.zeros((T, N, *shape), dtype=dtype, device=device)

        self.obs_buf = buffer(*self.obs_shape)
        self.final_buf = buffer(*self.obs_shape)  # the ended episodes' last observations, normalised
        self.act_buf = buffer(*self.to_env.shape, dtype=self.to_env.dtype)
        self.logp_buf, self.val_buf, self.rew_buf = buffer(), buffer(), buffer()
        self.done_buf, self.trunc_buf, self.boot_buf = (buffer(dtype=torch.bool) for _ in range(3))
        self.valid = torch.ones((T, N), dtype=torch.bool, device=device)
        self.ended_return, self.ended_length = buffer(dtype=torch.float64), buffer(dtype=torch.float64)
        self._obs: Tensor | None = None  # the policy's input for the next step (normalised)
        self._disc_return = torch.zeros(N, dtype=torch.float64, device=device)
        self._ep_return = torch.zeros(N, dtype=torch.float64, device=device)
        self._ep_length = torch.zeros(N, dtype=torch.float64, device=device)
        self._checked = False
        #: The episodes seen to end.
        self.episodes = EpisodeLog()

    def _process(self, obs: Tensor, update: bool) -> Tensor:
        if self.obs_stats is None:
            return obs.to(torch.float32)
        if update:
            self.obs_stats.update(obs)
        return self.obs_stats.normalize(obs, self.clip_obs)

    def _read_back(self, figures: Tensor | None = None) -> np.ndarray:
        """The one read-back: the normalisers' statistics (written into the host normalisers) and
        ``figures`` (returned), in a single transfer."""
        stats = [s for s in (self.obs_stats, self.ret_stats) if s is not None]
        parts = [s.packed() for s in stats] + ([figures.reshape(-1).to(torch.float64)] if figures is not None else [])
        host = torch.cat(parts).cpu().numpy() if parts else np.empty(0)
        for s in stats:
            s.store(host[:2 * s.size + 1])
            host = host[2 * s.size + 1:]
        return host

    @torch.inference_mode()
    def restart(self) -> None:
        """Drop the current episodes: the next rollout begins with a reset (someone else stepped the envs)."""
        self._obs = None

    def reset(self, seed: int | None = None) -> None:
        """Start every env afresh (and the episode counters)."""
        obs, _ = check_reset(self.env, self.env.reset(seed=seed))
        for stats in (self.obs_stats, self.ret_stats):
            if stats is not None:
                stats.load()
        self._obs = self._process(obs, update=True)
        self._disc_return.zero_()
        self._ep_return.zero_()
        self._ep_length.zero_()
        self._read_back()

    @torch.inference_mode()
    def collect(self) -> Rollout:
        """Run the policy for ``num_steps`` steps of every env, on the device."""
        if self._obs is None:
            self.reset()
        for stats in (self.obs_stats, self.ret_stats):
            if stats is not None:
                stats.load()  # a no-op unless the host statistics changed (a restored checkpoint)
        obs, policy, env = self._obs, self.policy, self.env
        assert obs is not None
        finals: list[int] = []  # the steps whose info gave final observations
        for t in range(self.num_steps):
            self.obs_buf[t] = obs
            action, logp, value = policy.act(obs)
            self.act_buf[t], self.logp_buf[t], self.val_buf[t] = action, logp, value
            result = env.step(self.to_env(action))
            if not self._checked:
                check_step(env, result)
                self._checked = True
            next_obs, reward, terminated, truncated, info = result
            terminated, truncated = terminated.to(torch.bool), truncated.to(torch.bool)
            done = terminated | truncated
            reward = reward.to(torch.float64)
            self._ep_return += reward
            self._ep_length += 1.0
            self.ended_return[t], self.ended_length[t] = self._ep_return, self._ep_length
            self._ep_return.masked_fill_(done, 0.0)
            self._ep_length.masked_fill_(done, 0.0)
            if self.ret_stats is not None:
                # Divided by the running std of the discounted return (as baselines' VecNormalize).
                self._disc_return = self._disc_return * self.gamma + reward
                self.ret_stats.update(self._disc_return)
                self._disc_return.masked_fill_(done, 0.0)
                self.rew_buf[t] = self.ret_stats.scale(reward, self.clip_reward)
            else:
                self.rew_buf[t] = reward
            self.done_buf[t], self.trunc_buf[t] = done, truncated
            self.boot_buf[t] = truncated & ~terminated
            final = final_observation(env, info)
            if final is not None:  # else V(s_t), the value just computed, stands in for it
                self.final_buf[t] = self._process(final, update=False)
                finals.append(t)
            obs = self._process(next_obs, update=True)
        self._obs = obs
        self._bootstrap(finals)
        self._finish()
        return Rollout(
            obs=self.obs_buf, actions=self.act_buf, logp=self.logp_buf, values=self.val_buf, rewards=self.rew_buf,
            terminated=self.done_buf, truncated=self.trunc_buf, valid=self.valid, last_value=policy.value(obs),
        )

    def _bootstrap(self, finals: list[int]) -> None:
        r"""Fold :math:`\gamma V(s_{\text{final}})` into the rewards of the truncated steps, the values
        of all final observations in one batched pass."""
        following = self.val_buf.clone()
        if len(finals) == self.num_steps:
            following = self.policy.value(self.final_buf.reshape(-1, *self.obs_shape)).reshape(following.shape)
        elif finals:
            steps = torch.tensor(finals, device=self.device)
            chosen = self.final_buf.index_select(0, steps).reshape(-1, *self.obs_shape)
            following.index_copy_(0, steps, self.policy.value(chosen).reshape(len(finals), self.num_envs))
        self.rew_buf += self.gamma * torch.where(self.boot_buf, following, torch.zeros_like(following))

    def _finish(self) -> None:
        """The one read-back of a rollout: the normalisers' statistics and the episodes that ended."""
        figures = torch.stack([self.done_buf.to(torch.float64), self.ended_return, self.ended_length])
        host = self._read_back(figures)
        ended, returns, lengths = host.reshape(3, self.num_steps, self.num_envs)
        where = np.nonzero(ended)  # step-major, then env: the order the host collector reports
        finished_r = [float(r) for r in returns[where]]
        finished_l = [int(n) for n in lengths[where]]
        self.episodes.record(finished_r, finished_l)

    def state_dict(self) -> dict[str, Any]:
        """The running state between rollouts, as plain data (read back from the device)."""
        def host(t: Tensor) -> np.ndarray:
            return t.detach().cpu().numpy().copy()

        return {
            "obs": None if self._obs is None else host(self._obs),
            "disc_return": host(self._disc_return), "ep_return": host(self._ep_return),
            "ep_length": host(self._ep_length),
            **self.episodes.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        obs = state["obs"]
        check_saved_obs(obs, self.num_envs, self.obs_shape)
        self._obs = None if obs is None else torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)
        for name in ("disc_return", "ep_return", "ep_length"):
            value = np.asarray(state[name], dtype=np.float64)
            if value.shape != (self.num_envs,):
                raise ValueError(f"saved {name} has shape {value.shape}, expected {(self.num_envs,)}")
            setattr(self, f"_{name}", torch.as_tensor(value, device=self.device).clone())
        self.episodes.load_state_dict(state)
