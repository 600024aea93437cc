"""Collecting experience from a vector env into preallocated rollout storage.

Gymnasium 1.x vector envs reset an env on the step *after* its episode ended ("next-step"
autoreset): that step ignores the action and returns the first observation of the new episode. The
collector marks such steps ``valid = False``; they are never trained on, and because the previous
step carries ``episode_end = True``, no advantage flows across the boundary. On truncation the
observation returned with the ending step is the true final observation, so its value (computed by
the next step's forward pass anyway) is exactly the bootstrap GAE needs.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from ppokit.control.envs.make import TrustsOwnActions
from ppokit.control.envs.observations import ObservationReader
from ppokit.control.policy.actions import ActionAdapter, action_width
from ppokit.control.policy.networks import ActorCritic
from ppokit.control.rollout.storage import (
    EpisodeLog,
    Rollout,
    RolloutStorage,
    check_saved_obs,
    env_episodes,
    records_episodes,
)
from ppokit.core.running_stats import RunningMeanStd
from ppokit.errors import ObservationError

if TYPE_CHECKING:
    from ppokit.control.fast.policy import NumpyPolicy


def observation_batch(obs: Any, space: spaces.Space) -> tuple[np.ndarray, bool]:
    """``(batch, single)``: one observation of ``space`` or a batch of them, as a batch. Refuses a
    wrong shape and NaN or inf values, which a policy would turn into an arbitrary action."""
    obs = np.asarray(obs)
    shape = tuple(space.shape or ())
    single = obs.shape == shape
    batch = obs[None] if single else obs
    if tuple(batch.shape[1:]) != shape:
        raise ObservationError(f"predict: observation shape {obs.shape} does not match the policy's {shape} "
                               "(or a batch of them)")
    if batch.dtype.kind == "f" and not np.isfinite(batch).all():
        rows = np.flatnonzero(~np.isfinite(batch.reshape(len(batch), -1)).all(axis=1))
        raise ObservationError(f"predict: observation{'' if single else f' {rows[0]}'} holds NaN or inf values; "
                               "no action is meaningful for it")
    return batch, single


def check_recurrent_inputs(state: Any, episode_start: Any, rows: int, size: int, kind: str | None) -> None:
    """``predict``'s ``state`` (``[rows, size]``: what it returned last) and ``episode_start``
    (``rows`` booleans), refused in one line when they do not fit the observations."""
    if state is not None:
        try:
            shape = tuple(torch.as_tensor(state).shape)
        except (ValueError, TypeError, RuntimeError):
            raise ObservationError(f"predict: state is a {type(state).__name__}, not the array predict returned") from None
        if shape != (rows, size):
            raise ObservationError(f"predict: state has shape {shape}; this {kind} policy's state for {rows} "
                                   f"observation(s) is ({rows}, {size}): pass back the state predict returned")
    if episode_start is not None and np.asarray(episode_start).size != rows:
        raise ObservationError(f"predict: episode_start has {np.asarray(episode_start).size} entries; expected one per "
                               f"observation ({rows})")


def policy_input(obs: np.ndarray, obs_rms: RunningMeanStd | None, clip_obs: float, image: bool = False) -> np.ndarray:
    """What the policy is fed: observations normalised by ``obs_rms`` (float32) when there is one,
    else as they are (uint8 images stay uint8, anything else becomes float32)."""
    if obs_rms is not None:
        return obs_rms.normalize_array(obs, clip_obs)
    return np.asarray(obs, dtype=np.uint8 if image else np.float32)


class RolloutCollector:
    """Owns the env's running state between rollouts: last observation, pending resets, episode stats."""

    def __init__(
        self,
        env: gym.vector.VectorEnv,
        policy: ActorCritic,
        device: torch.device,
        num_steps: int,
        *,
        numpy_policy: NumpyPolicy | None = None,
        masks: ObservationReader | None = None,
        obs_rms: RunningMeanStd | None = None,
        ret_rms: RunningMeanStd | None = None,
        gamma: float = 0.99,
        clip_obs: float = 10.0,
        clip_reward: float = 10.0,
    ) -> None:
        self.env = env
        self.policy = policy
        self.device = device
        self.num_steps = num_steps
        self.num_envs = env.num_envs
        self.obs_rms = obs_rms
        self.ret_rms = ret_rms
        self.gamma = gamma
        self.clip_obs = clip_obs
        self.clip_reward = clip_reward
        self.to_env = ActionAdapter(env.single_action_space)
        self.masks = masks
        #: Whether the env records its own episode statistics (see env_episodes), or was seen to.
        self.env_reports_episodes = records_episodes(env)
        self.mask_size = masks.size if masks is not None and masks.size is not None else 0
        obs_space = masks.observation_space if masks is not None else env.single_observation_space
        self.obs_dtype = torch.uint8 if obs_space.dtype == np.uint8 else torch.float32
        self.obs_shape = tuple(obs_space.shape or ())
        action_space = env.single_action_space
        if isinstance(action_space, (spaces.Tuple, spaces.Dict)):
            self.action_shape: tuple[int, ...] = (action_width(action_space),)
            self.action_dtype = torch.float32
        elif isinstance(action_space, spaces.Box):
            self.action_shape = (int(np.prod(action_space.shape)),)
            self.action_dtype = torch.float32
        elif isinstance(action_space, spaces.MultiDiscrete):
            self.action_shape = (len(np.asarray(action_space.nvec).ravel()),)
            self.action_dtype = torch.int64
        else:
            self.action_shape = ()
            self.action_dtype = torch.int64
        # Fast-path policies act through NumPy (ppokit.control.fast.policy); sampling then draws from
        # this generator instead of torch's, seeded by reset() and saved with the collector's state.
        self.numpy_policy = numpy_policy
        self.rng = np.random.default_rng([0, 1])
        space = env.unwrapped.action_space
        self._trusting = space if isinstance(space, TrustsOwnActions) else None
        #: Whether a step's observation needs no reading when its info is empty (see advance).
        self._plain_obs = masks is None or masks.passes_through
        self._obs: np.ndarray | None = None
        #: The action mask that goes with ``_obs`` (None while the env gives none).
        self._mask: np.ndarray | None = None
        #: The critic's own observation that goes with ``_obs`` (None when it sees the actor's).
        self._critic: np.ndarray | None = None
        #: Recurrent policies: the core's state, and which envs' next observation starts an episode.
        self._state = policy.initial_state(self.num_envs, device)
        self._starts = np.ones(self.num_envs, dtype=bool)
        self._pending_reset = np.zeros(self.num_envs, dtype=bool)
        self._disc_return = np.zeros(self.num_envs, dtype=np.float64)
        self._ep_return = np.zeros(self.num_envs, dtype=np.float64)
        self._ep_length = np.zeros(self.num_envs, dtype=np.int64)
        #: The episodes seen to end.
        self.episodes = EpisodeLog()
        #: A rollout collected by a group stepping several collectors at once (control.seeds), for
        #: the next collect() to return.
        self.prepared: Rollout | None = None

    def _read(self, obs: Any, info: dict[str, Any], ended: np.ndarray | None = None) -> tuple[Any, np.ndarray | None]:
        """The observation and, when the env gives one, the action mask (``ended``: the envs whose
        episode ended with this observation)."""
        if self.masks is None:
            return obs, None
        self._critic = self.masks.read_critic(obs, self.num_envs)
        obs, mask = self.masks.read(obs, info, self.num_envs, ended)
        if mask is not None and not self.policy.spec.action_mask:
            # The env marks invalid actions: the policy honours them from now on, on the torch path
            # (the fast path's allow-list does not implement masks).
            self.policy.spec = dataclasses.replace(self.policy.spec, action_mask=True)
            self.numpy_policy = None
        return obs, mask

    def restart(self) -> None:
        """Drop the current episodes: the next rollout begins with a reset (someone else stepped the envs)."""
        self._obs = None

    def reset(self, seed: int | None = None) -> None:
        obs, info = self.env.reset(seed=seed)
        obs, self._mask = self._read(obs, info)
        if seed is not None:
            self.env.action_space.seed(seed)
            # Not default_rng(seed): that would be the same stream the env draws its resets from.
            self.rng = np.random.default_rng([seed, 1])
        self._pending_reset[:] = False
        self._starts[:] = True
        self._disc_return[:] = 0.0
        self._ep_return[:] = 0.0
        self._ep_length[:] = 0
        self._obs = self._process_obs(obs, update_stats=True)

    def state_dict(self) -> dict[str, Any]:
        """The running state between rollouts (current observation, episode counters), as plain data."""
        return {
            "obs": None if self._obs is None else self._obs.copy(),
            "mask": None if self._mask is None else self._mask.copy(),
            "critic_obs": None if self._critic is None else self._critic.copy(),
            "state": self._state.detach().cpu().numpy().copy(),
            "starts": self._starts.copy(),
            "action_rng": self.rng,
            "pending_reset": self._pending_reset.copy(),
            "disc_return": self._disc_return.copy(),
            "ep_return": self._ep_return.copy(),
            "ep_length": self._ep_length.copy(),
            **self.episodes.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        obs = state["obs"]
        check_saved_obs(obs, self.num_envs, self.obs_shape)
        self._obs = None if obs is None else np.asarray(obs)
        mask = state.get("mask")
        self._mask = None if mask is None else np.asarray(mask, dtype=bool)
        critic = state.get("critic_obs")
        self._critic = None if critic is None else np.asarray(critic, dtype=np.float32)
        if "state" in state:
            saved = np.asarray(state["state"], dtype=np.float32)
            if saved.shape != tuple(self._state.shape):
                raise ValueError(f"saved recurrent state has shape {saved.shape}, expected {tuple(self._state.shape)}")
            self._state = torch.from_numpy(saved.copy()).to(self.device)
            self._starts = np.asarray(state["starts"], dtype=bool).copy()
        if self._mask is not None and not self.policy.spec.action_mask:
            self.policy.spec = dataclasses.replace(self.policy.spec, action_mask=True)
            self.numpy_policy = None
        if isinstance(state.get("action_rng"), np.random.Generator):  # absent in older checkpoints
            self.rng = state["action_rng"]
        for name in ("pending_reset", "disc_return", "ep_return", "ep_length"):
            current = getattr(self, f"_{name}")
            value = np.asarray(state[name], dtype=current.dtype)
            if value.shape != current.shape:
                raise ValueError(f"saved {name} has shape {value.shape}, expected {current.shape}")
            setattr(self, f"_{name}", value.copy())
        self.episodes.load_state_dict(state)

    def _process_obs(self, obs: np.ndarray, update_stats: bool) -> np.ndarray:
        if update_stats and self.obs_rms is not None:
            self.obs_rms.update_array(obs)
        return policy_input(obs, self.obs_rms, self.clip_obs, image=self.obs_dtype == torch.uint8)

    def _act(self, obs: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Acting through torch (collect calls the NumPy policy itself)."""
        mask_t = None if mask is None else torch.as_tensor(mask, device=self.device)
        if self.policy.core is not None:
            starts = torch.as_tensor(self._starts, device=self.device)
            action, logp, value, self._state = self.policy.step(torch.as_tensor(obs, device=self.device),
                                                                self._state, starts, mask_t)
            return action.cpu().numpy(), logp.cpu().numpy(), value.cpu().numpy()
        action, logp, value = self.policy.act(torch.as_tensor(obs, device=self.device), mask=mask_t,
                                              critic_obs=self._critic_tensor())
        return action.cpu().numpy(), logp.cpu().numpy(), value.cpu().numpy()

    def _critic_tensor(self) -> Tensor | None:
        return None if self._critic is None else torch.as_tensor(self._critic, device=self.device)

    def _value(self, obs: np.ndarray) -> np.ndarray:
        if self.numpy_policy is not None:
            return self.numpy_policy.value(obs)
        if self.policy.core is not None:
            starts = torch.as_tensor(self._starts, device=self.device)
            return self.policy.step_value(torch.as_tensor(obs, device=self.device), self._state, starts).cpu().numpy()
        return self.policy.value(torch.as_tensor(obs, device=self.device), self._critic_tensor()).cpu().numpy()

    def _scale_rewards(self, rewards: np.ndarray, done: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Divide rewards by the running std of the discounted return (as in baselines' VecNormalize)."""
        assert self.ret_rms is not None
        self._disc_return = self._disc_return * self.gamma + rewards
        if valid.any():
            self.ret_rms.update_array(self._disc_return[valid])
        self._disc_return[done] = 0.0
        return self.ret_rms.scale_array(rewards, self.clip_reward)

    @torch.inference_mode()
    def collect(self) -> Rollout:
        """Run the policy for ``num_steps`` steps of every env. The loop works on NumPy arrays and
        hands the buffers to torch (and the device) once at the end. A rollout a group collected
        for this collector in lockstep (``prepared``) is handed over instead."""
        if self.prepared is not None:
            rollout, self.prepared = self.prepared, None
            return rollout
        self.begin()
        for t in range(self.num_steps):
            if self.numpy_policy is not None:  # the fast path, without _act's dispatch
                self.advance(t, *self.numpy_policy.act(self.current_obs, self.rng))
            else:
                self.advance(t, *self._act(self.current_obs, self._mask))
        return self.finish()

    @property
    def current_obs(self) -> np.ndarray:
        """What the policy acts on next: the latest observation, normalised."""
        assert self._obs is not None  # begin() resets
        return self._obs

    def begin(self) -> None:
        """Start a rollout: fresh buffers (collect() is begin, ``num_steps`` × advance, finish; a
        group of collectors stepped in lockstep calls them itself, acting for all of them at once)."""
        if self._obs is None:
            self.reset()
        if self.numpy_policy is not None:
            self.numpy_policy.refresh()
        self._buffers = RolloutStorage.allocate(
            self.num_steps, self.num_envs, self.obs_shape,
            np.uint8 if self.obs_dtype == torch.uint8 and self.obs_rms is None else np.float32,
            self.action_shape, np.float32 if self.action_dtype == torch.float32 else np.int64,
            self.mask_size if self.policy.spec.action_mask else None)
        self._initial_state = self._state.clone()
        self._begun = (self._pending_reset.copy(), self._starts.copy())

    def advance(self, t: int, action: np.ndarray, logp: np.ndarray, value: np.ndarray) -> None:
        """Step ``t`` of the rollout: store the policy's output for the current observation and step
        the envs with ``action``. Only what the next step needs is worked out here; ``valid``,
        ``starts`` and the episodes wait for :meth:`finish` (``RolloutStorage.settle``), except
        reward scaling and the env's own episode reports, which need this step's state."""
        b = self._buffers
        b.obs[t] = self._obs
        if b.masks is not None:
            b.masks[t] = True if self._mask is None else self._mask
        if self._critic is not None:
            if b.critic is None:
                b.critic = np.empty((self.num_steps, self.num_envs, *self._critic.shape[1:]), dtype=np.float32)
            b.critic[t] = self._critic
        b.actions[t] = action
        b.logp[t] = logp
        b.values[t] = value
        env_action = self.to_env(action)
        if self._trusting is not None:
            self._trusting.passing = env_action
        next_obs, reward, term, trunc, info = self.env.step(env_action)
        if self._plain_obs and not info:
            self._mask = None  # nothing to read: the observation as it is, no mask
            if self.masks is not None:
                self.masks.steps += 1  # so that a bad mask later is named at its true step
        else:
            next_obs, self._mask = self._read(next_obs, info, np.logical_or(term, trunc))
        if self._mask is not None and b.masks is None:  # the env's first mask, mid-rollout
            b.masks = np.ones((self.num_steps, self.num_envs, self.mask_size), dtype=bool)
        b.raw_rewards[t] = reward
        b.terminated[t] = term
        b.truncated[t] = trunc
        done = b.terminated[t] | b.truncated[t]
        if self.ret_rms is not None:
            b.rewards[t] = self._scale_rewards(b.raw_rewards[t], done, ~self._pending_reset)
        if self.env_reports_episodes or (isinstance(info, dict) and "episode" in info):
            ended = done & ~self._pending_reset
            if ended.any():
                report = env_episodes(info, ended, self.env_reports_episodes)
                if report is not None:
                    b.reports[t] = report
                    self.env_reports_episodes = True
        # A reset step (next-step autoreset) returns an episode's first observation.
        self._starts = self._pending_reset
        self._pending_reset = done
        self._obs = self._process_obs(next_obs, update_stats=True)

    def finish(self) -> Rollout:
        """End the rollout begun by :meth:`begin`: its buffers, as tensors on the device."""
        b = self._buffers
        obs = self.current_obs
        b.settle(*self._begun, self._ep_return, self._ep_length)
        if self.ret_rms is None:
            b.rewards[:] = b.raw_rewards
        self.episodes.record(b.finished_r, b.finished_l)
        recurrent = self.policy.core is not None

        def to_device(a: np.ndarray) -> Tensor:
            return torch.from_numpy(a).to(self.device)

        return Rollout(
            obs=to_device(b.obs), actions=to_device(b.actions), logp=to_device(b.logp),
            values=to_device(b.values), rewards=to_device(b.rewards), terminated=to_device(b.terminated),
            truncated=to_device(b.truncated), valid=to_device(b.valid), last_value=to_device(self._value(obs)),
            masks=None if b.masks is None else to_device(b.masks),
            critic_obs=None if b.critic is None else to_device(b.critic),
            starts=to_device(b.starts) if recurrent else None,
            initial_state=self._initial_state if recurrent else None,
        )
