"""Which collector steps a run's training env: the host one (Gymnasium envs, NumPy between steps) or
the device one (torch envs, nothing leaves the device); chosen once, by the env's type."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ppokit.control.envs.observations import ObservationReader
from ppokit.control.envs.torch_env import is_torch_env
from ppokit.control.rollout.device import DeviceRolloutCollector
from ppokit.control.rollout.host import RolloutCollector
from ppokit.errors import ConfigError

if TYPE_CHECKING:
    from ppokit.control.agent import PPO

Collector = RolloutCollector | DeviceRolloutCollector


def make_collector(agent: PPO) -> Collector:
    """The collector of ``agent.env``; a torch env refuses, by name, what its collector does not do yet."""
    c, env = agent.config, agent.env
    if not is_torch_env(env):
        return RolloutCollector(
            env, agent.policy, agent.device, c.num_steps, numpy_policy=agent.numpy_policy,
            masks=ObservationReader(env.single_observation_space, env.single_action_space, c.action_mask_key),
            obs_rms=agent.obs_rms, ret_rms=agent.ret_rms, gamma=c.gamma, clip_obs=c.clip_obs, clip_reward=c.clip_reward,
        )
    if agent.collective.active:
        raise ConfigError("a torch env trains in one process: data-parallel training (--nproc, torchrun) with torch "
                          "envs is not supported yet; run one process with more envs")
    if c.recurrent is not None:
        raise ConfigError(f"config field 'recurrent' = {c.recurrent!r}: recurrent policies are not supported with "
                          "torch envs yet")
    if c.eval_every and not getattr(agent.env_source, "can_make", True):
        raise ConfigError("config field 'eval_every' needs evaluation envs, and ppokit cannot make more of a torch env "
                          "object; pass its class (env=MyEnv, env_kwargs=...) or set eval_every=0")
    return DeviceRolloutCollector(env, agent.policy, agent.device, c.num_steps, obs_rms=agent.obs_rms,
                                  ret_rms=agent.ret_rms, gamma=c.gamma, clip_obs=c.clip_obs, clip_reward=c.clip_reward)
