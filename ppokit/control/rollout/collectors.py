"""Which collector steps a run's training env: the host one (Gymnasium envs, NumPy between steps) or
the device one (torch envs, nothing leaves the device); chosen once, by the env's type."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from ppokit.control.config import ControlConfig
from ppokit.control.envs.observations import ObservationReader, unused_masks
from ppokit.control.envs.torch_env import is_torch_env
from ppokit.control.policy.networks import ActorCritic
from ppokit.control.rollout.device import DeviceRolloutCollector
from ppokit.control.rollout.host import RolloutCollector
from ppokit.core.running_stats import RunningMeanStd
from ppokit.errors import ConfigError

if TYPE_CHECKING:
    from ppokit.control.fast.policy import NumpyPolicy

log = logging.getLogger("ppokit")

Collector = RolloutCollector | DeviceRolloutCollector


def make_collector(env: Any, policy: ActorCritic, config: ControlConfig, device: torch.device, *,
                   numpy_policy: NumpyPolicy | None, obs_rms: RunningMeanStd | None, ret_rms: RunningMeanStd | None,
                   data_parallel: bool, can_make_envs: bool) -> Collector:
    """The collector of ``env``; a torch env refuses, by name, what its collector does not do yet
    (``data_parallel``: the run is one of several processes; ``can_make_envs``: its source can make
    evaluation envs)."""
    c = config
    if not is_torch_env(env):
        return RolloutCollector(
            env, policy, device, c.num_steps, numpy_policy=numpy_policy,
            masks=ObservationReader.for_env(env, c.action_mask_key, warn=True),
            obs_rms=obs_rms, ret_rms=ret_rms, gamma=c.gamma, clip_obs=c.clip_obs, clip_reward=c.clip_reward,
        )
    unused = unused_masks(env, env.single_observation_space, env.single_action_space, c.action_mask_key,
                          method=False, torch_env=True)
    if unused:
        log.warning("%s", unused)
    if data_parallel:
        raise ConfigError("a torch env trains in one process: data-parallel training (--nproc, torchrun) with torch "
                          "envs is not supported yet; run one process with more envs")
    if c.recurrent is not None:
        raise ConfigError(f"config field 'recurrent' = {c.recurrent!r}: recurrent policies are not supported with "
                          "torch envs yet")
    if c.eval_every and not can_make_envs:
        raise ConfigError("config field 'eval_every' needs evaluation envs, and ppokit cannot make more of a torch env "
                          "object; pass its class (env=MyEnv, env_kwargs=...) or set eval_every=0")
    return DeviceRolloutCollector(env, policy, device, c.num_steps, obs_rms=obs_rms,
                                  ret_rms=ret_rms, gamma=c.gamma, clip_obs=c.clip_obs, clip_reward=c.clip_reward)
