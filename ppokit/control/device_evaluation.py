"""Acting and evaluating on a torch env: batched episodes on its device, as the training rollout runs them."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ppokit.control.envs.torch_env import check_reset, check_step, check_torch_env
from ppokit.control.evaluation import check_fits, summarize
from ppokit.control.policy.networks import ActorCritic
from ppokit.control.rollout.device import TorchActions
from ppokit.core.running_stats import DeviceMeanStd, RunningMeanStd
from ppokit.errors import ObservationError

#: Evaluation checks whether every env has played its quota once per this many steps (one read-back each).
CHECK_EVERY = 16


def policy_input(obs: Tensor, obs_rms: RunningMeanStd | None, clip_obs: float, device: torch.device) -> Tensor:
    """Observations as the policy sees them: normalised by the run's statistics, on the policy's device."""
    obs = obs.to(device, torch.float32)
    if obs_rms is None:
        return obs
    return obs_rms.normalize(obs, clip_obs)


def predict(policy: ActorCritic, obs_rms: RunningMeanStd | None, clip_obs: float, spaces: tuple[Any, Any],
            device: torch.device, obs: Tensor, deterministic: bool = True) -> Tensor:
    """``PPO.predict`` for torch observations (one or a batch): actions as a torch env takes them.
    ``spaces``: the policy's observation and action spaces."""
    observation_space, action_space = spaces
    shape = tuple(observation_space.shape or ())
    single = tuple(obs.shape) == shape
    batch = obs.unsqueeze(0) if single else obs
    if tuple(batch.shape[1:]) != shape:
        raise ObservationError(f"predict: observation shape {tuple(obs.shape)} does not match the policy's {shape} "
                               "(or a batch of them)")
    with torch.inference_mode():
        action = policy.action(policy_input(batch, obs_rms, clip_obs, device), deterministic)
        out = TorchActions(action_space, device)(action)
    return out[0] if single else out


def evaluate(policy: ActorCritic, obs_rms: RunningMeanStd | None, clip_obs: float, spaces: tuple[Any, Any],
             device: torch.device, env: Any, env_id: str, episodes: int, deterministic: bool,
             seed: int) -> dict[str, Any]:
    """``PPO.evaluate`` on a torch env ``env`` (the caller's to close): ``episodes`` batched episodes
    on the env's device, summarised like a Gymnasium evaluation."""
    check_torch_env(env, device)
    check_fits(env_id, env.single_observation_space, env.single_action_space, spaces)
    own = torch.device(env.device)
    devices = [own.index or 0] if own.type == "cuda" else []
    # Stochastic evaluation draws from torch's generator; training must not see those draws.
    with torch.random.fork_rng(devices=devices), torch.inference_mode():
        returns, lengths = play(policy, obs_rms, clip_obs, env, episodes, deterministic, seed)
    return summarize(returns, lengths, deterministic, seed)


def play(policy: ActorCritic, obs_rms: RunningMeanStd | None, clip_obs: float, env: Any, episodes: int,
         deterministic: bool, seed: int) -> tuple[list[float], list[int]]:
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
    stats = DeviceMeanStd(obs_rms, device) if obs_rms is not None else None
    obs, _ = check_reset(env, env.reset(seed=seed))
    step = 0
    while True:
        x = stats.normalize(obs, clip_obs) if stats is not None else obs.to(torch.float32)
        action = policy.action(x, deterministic)
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
