"""Acting and evaluating on a torch env: batched episodes on its device, as the training rollout runs them."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ppokit.control.envs.torch_env import check_reset, check_step, check_torch_env
from ppokit.control.evaluation import check_fits, summarize
from ppokit.control.rollout.device import TorchActions
from ppokit.core.running_stats import DeviceMeanStd
from ppokit.errors import EnvError, ObservationError

if TYPE_CHECKING:
    from ppokit.control.agent import PPO

log = logging.getLogger("ppokit")

#: Evaluation checks whether every env has played its quota once per this many steps (one read-back each).
CHECK_EVERY = 16


def policy_input(agent: PPO, obs: Tensor) -> Tensor:
    """Observations as the policy sees them: normalised by the run's statistics, on the policy's device."""
    obs = obs.to(agent.device, torch.float32)
    if agent.obs_rms is None:
        return obs
    return agent.obs_rms.normalize(obs, agent.config.clip_obs)


def predict(agent: PPO, obs: Tensor, deterministic: bool = True) -> Tensor:
    """``PPO.predict`` for torch observations (one or a batch): actions as a torch env takes them."""
    shape = tuple(agent.observation_space.shape or ())
    single = tuple(obs.shape) == shape
    batch = obs.unsqueeze(0) if single else obs
    if tuple(batch.shape[1:]) != shape:
        raise ObservationError(f"predict: observation shape {tuple(obs.shape)} does not match the policy's {shape} "
                               "(or a batch of them)")
    with torch.inference_mode():
        action = agent.policy.action(policy_input(agent, batch), deterministic)
        out = TorchActions(agent.action_space, agent.device)(action)
    return out[0] if single else out


def evaluate(agent: PPO, episodes: int, deterministic: bool, seed: int, video_dir: Any = None,
             env: Any = None) -> dict[str, Any]:
    """``PPO.evaluate`` on a torch env: ``env``, else new envs from the run's source, else (an env
    object that cannot be made again) the training env, whose episodes then start over."""
    if video_dir is not None:
        raise EnvError("video recording needs a Gymnasium env; a torch env has no single-env form")
    owned = env is None and getattr(agent.env_source, "can_make", False)
    if owned:
        env = agent.env_source.evaluation(episodes)
    elif env is None:
        if agent.env is None:
            agent.env = agent.env_source.training(agent.config.num_envs, agent.config.vectorization)
        env = agent.env
        if agent.collector is not None:
            log.info("evaluating on the training env (an env object ppokit cannot make more of); its episodes "
                     "start over")
            agent.collector._obs = None  # the next rollout resets them
    check_torch_env(env, agent.device)
    check_fits(agent.config.env_id, env.single_observation_space, env.single_action_space,
               (agent.observation_space, agent.action_space))
    own = torch.device(env.device)
    devices = [own.index or 0] if own.type == "cuda" else []
    try:
        # Stochastic evaluation draws from torch's generator; training must not see those draws.
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            returns, lengths = play(agent, env, episodes, deterministic, seed)
    finally:
        if owned:
            env.close()
    return summarize(returns, lengths, deterministic, seed)


def play(agent: PPO, env: Any, episodes: int, deterministic: bool, seed: int) -> tuple[list[float], list[int]]:
    """Undiscounted returns and lengths of ``episodes`` episodes, a fixed quota per env (so short
    episodes are not over-represented), counted on the device."""
    n_envs, device = int(env.num_envs), torch.device(env.device)
    n = min(n_envs, episodes)
    quota = torch.tensor([(episodes // n + (1 if i < episodes % n else 0)) if i < n else 0 for i in range(n_envs)],
                         device=device)
    most = episodes // n + (1 if episodes % n else 0)
    returns = torch.zeros(n_envs, most, dtype=torch.float64, device=device)
    lengths = torch.zeros(n_envs, most, dtype=torch.int64, device=device)
    done_count = torch.zeros(n_envs, dtype=torch.int64, device=device)
    ep_return = torch.zeros(n_envs, dtype=torch.float64, device=device)
    ep_length = torch.zeros(n_envs, dtype=torch.int64, device=device)
    rows = torch.arange(n_envs, device=device)
    to_env = TorchActions(env.single_action_space, device)
    # The run's statistics copied to the device once, not at every step.
    stats = DeviceMeanStd(agent.obs_rms, device) if agent.obs_rms is not None else None
    obs, _ = check_reset(env, env.reset(seed=seed))
    step = 0
    while True:
        x = stats.normalize(obs, agent.config.clip_obs) if stats is not None else obs.to(torch.float32)
        action = agent.policy.action(x, deterministic)
        result = env.step(to_env(action))
        if step == 0:
            check_step(env, result)
        obs, reward, terminated, truncated, _ = result
        counting = done_count < quota
        ep_return += reward.to(torch.float64) * counting
        ep_length += counting.to(torch.int64)
        ended = (terminated.to(torch.bool) | truncated.to(torch.bool))
        finished = ended & counting
        slot = done_count.clamp(max=most - 1)
        returns[rows, slot] = torch.where(finished, ep_return, returns[rows, slot])
        lengths[rows, slot] = torch.where(finished, ep_length, lengths[rows, slot])
        done_count += finished.to(torch.int64)
        ep_return.masked_fill_(ended, 0.0)
        ep_length.masked_fill_(ended, 0)
        step += 1
        if step % CHECK_EVERY == 0 and not bool((done_count < quota).any()):
            break
    keep = torch.arange(most, device=device).unsqueeze(0) < quota.unsqueeze(1)
    return returns[keep].tolist(), lengths[keep].tolist()
