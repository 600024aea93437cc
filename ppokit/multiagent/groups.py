"""A group of agents sharing one policy: the policy, its update, its normalisers, and what the
policy and the critic are fed.

Each group is an actor-critic of control's (:class:`~ppokit.control.policy.networks.ActorCritic`) with
control's update (:class:`~ppokit.control.algorithm.PPOAlgorithm`): a parameter-shared group is
single-agent PPO on its agents' rows stacked, and nothing of the maths is written again here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from ppokit.control.algorithm import PPOAlgorithm
from ppokit.control.envs.observations import ObservationReader
from ppokit.control.policy.actions import ActionAdapter, all_discrete
from ppokit.control.policy.networks import DEFAULT_IMAGE_SCALE, ActorCritic, PolicySpec, is_image_space
from ppokit.control.rollout.host import policy_input
from ppokit.core.collective import SINGLE, Collective
from ppokit.core.running_stats import RunningMeanStd
from ppokit.errors import ConfigError
from ppokit.multiagent.config import MultiAgentConfig
from ppokit.multiagent.envs import Group


class PolicyGroup:
    """One policy and everything that goes with it, for the agents of ``group``."""

    def __init__(self, group: Group, config: MultiAgentConfig, device: torch.device, state_size: int | None,
                 collective: Collective = SINGLE) -> None:
        """``state_size``: entries of the critic's global input (MAPPO), or None (IPPO); ``collective``: the
        processes of a data-parallel run, each with its own env copies."""
        self.group, self.device = group, device
        self.agents = group.agents
        self.index = {a: i for i, a in enumerate(group.agents)}
        self.reader = ObservationReader(group.observation_space, group.action_space, config.action_mask_key,
                                        text=config.text_observations)
        observed = self.reader.observation_space
        self.image = is_image_space(observed)
        #: The one-hot agent index appended to the observation (and the critic's input).
        self.ids = len(group.agents) if config.agent_id and len(group.agents) > 1 else 0
        if self.ids and self.image:
            raise ConfigError(f"config field 'agent_id' = true cannot apply to group {group.name!r}: its observations "
                              "are images, and the one-hot agent index is appended to a vector")
        self.obs_size = int(np.prod(observed.shape or ()))
        obs_shape = tuple(observed.shape or ())
        if self.ids:
            obs_shape = (self.obs_size + self.ids,)
            assert isinstance(observed, spaces.Box)
            low = np.concatenate([np.asarray(observed.low, np.float32).reshape(-1), np.zeros(self.ids, np.float32)])
            high = np.concatenate([np.asarray(observed.high, np.float32).reshape(-1), np.ones(self.ids, np.float32)])
            observed = spaces.Box(low, high, dtype=np.float32)
        self.observation_space = observed
        self.obs_shape = obs_shape
        self.state_size = state_size
        critic_shape = (state_size + self.ids,) if state_size is not None else ()
        self.config = c = config.for_actions(all_discrete(group.action_space))
        self.spec = PolicySpec.from_spaces(
            observed, group.action_space, network=c.network, hidden_sizes=c.hidden_sizes, activation=c.activation,
            shared_trunk=c.shared_trunk, ortho_init=c.ortho_init, log_std_init=c.log_std_init,
            action_mask=self.reader.mask_in_obs,
            critic_obs_shape=critic_shape, recurrent=c.recurrent, recurrent_size=c.recurrent_size,
            image_scale=c.image_scale or DEFAULT_IMAGE_SCALE)
        self.policy = ActorCritic(self.spec).to(device)
        self.algorithm = PPOAlgorithm(c, self.policy, device, collective)
        self.obs_rms = RunningMeanStd(tuple(self.reader.observation_space.shape or ())) if c.normalize_obs and not self.image else None
        self.critic_rms = RunningMeanStd((state_size,)) if c.normalize_obs and state_size else None
        self.ret_rms = RunningMeanStd(()) if c.normalize_reward else None
        self.value_rms = RunningMeanStd(()) if config.normalize_value else None
        self.to_env = ActionAdapter(group.action_space)
        self.obs_dtype = np.uint8 if self.image and self.obs_rms is None else np.float32

    # ---------------------------------------------------------------------------- inputs
    def observation_only(self, raw: Any) -> np.ndarray:
        """One observation as the policy reads it (``[1, ...]``), its mask left unread: for an agent that is
        not acting (waiting for its turn, or finished), whose mask may allow nothing."""
        return np.asarray(self.reader.policy_observation(self.reader._actor_part(raw), None))

    def _with_ids(self, x: np.ndarray, slots: np.ndarray) -> np.ndarray:
        if not self.ids:
            return x
        onehot = np.zeros((len(x), self.ids), dtype=np.float32)
        onehot[np.arange(len(x)), slots] = 1.0
        return np.concatenate([x.reshape(len(x), -1).astype(np.float32), onehot], axis=1)

    def policy_obs(self, raw: np.ndarray, slots: np.ndarray, update: np.ndarray | None) -> np.ndarray:
        """What the policy sees for observations ``raw`` ``[n, ...]`` of the agents in ``slots`` (their
        index in the group); the normaliser learns from the rows ``update`` marks (None: none)."""
        if self.obs_rms is not None and update is not None and update.any():
            self.obs_rms.update_array(raw[update])
        x = policy_input(raw, self.obs_rms, self.config.clip_obs, image=self.image)
        return self._with_ids(x, slots)

    def critic_obs(self, states: np.ndarray, slots: np.ndarray, update: np.ndarray | None) -> np.ndarray:
        if self.critic_rms is not None and update is not None and update.any():
            self.critic_rms.update_array(states[update])
        x = policy_input(states, self.critic_rms, self.config.clip_obs)
        return self._with_ids(x, slots)

    def denormalize(self, values: np.ndarray) -> np.ndarray:
        """The critic's outputs in return units (with ``normalize_value`` it predicts normalised returns)."""
        if self.value_rms is None:
            return values
        std = np.sqrt(self.value_rms._var + 1e-8)
        return (values * std + self.value_rms._mean).astype(np.float32)

    def normalize_values(self, x: torch.Tensor) -> torch.Tensor:
        if self.value_rms is None:
            return x
        mean, std = float(self.value_rms._mean), float(np.sqrt(self.value_rms._var + 1e-8))
        return (x - mean) / std

    def normalisers(self) -> dict[str, RunningMeanStd | None]:
        return {"obs_rms": self.obs_rms, "critic_rms": self.critic_rms, "ret_rms": self.ret_rms,
                "value_rms": self.value_rms}

    # ---------------------------------------------------------------------------- acting
    @torch.inference_mode()
    def act(self, obs: np.ndarray, mask: np.ndarray | None, critic: np.ndarray | None, state: torch.Tensor | None,
            starts: np.ndarray | None, deterministic: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
        """``(actions, log-probs, values in return units, new recurrent state)`` for a batch of rows."""
        device = self.device
        obs_t = torch.as_tensor(obs, device=device)
        mask_t = None if mask is None else torch.as_tensor(mask, device=device)
        if self.policy.core is not None:
            assert state is not None and starts is not None
            action, logp, value, state = self.policy.step(obs_t, state, torch.as_tensor(starts, device=device), mask_t,
                                                          deterministic)
        else:
            critic_t = None if critic is None else torch.as_tensor(critic, device=device)
            action, logp, value = self.policy.act(obs_t, deterministic, mask_t, critic_t)
        return (action.cpu().numpy(), logp.cpu().numpy(), self.denormalize(value.cpu().numpy()), state)

    @torch.inference_mode()
    def values(self, obs: np.ndarray, critic: np.ndarray | None, state: torch.Tensor | None,
               starts: np.ndarray | None) -> np.ndarray:
        obs_t = torch.as_tensor(obs, device=self.device)
        if self.policy.core is not None:
            assert state is not None and starts is not None
            out = self.policy.step_value(obs_t, state, torch.as_tensor(starts, device=self.device))
        else:
            out = self.policy.value(obs_t, None if critic is None else torch.as_tensor(critic, device=self.device))
        return self.denormalize(out.cpu().numpy())
