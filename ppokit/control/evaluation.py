"""Evaluating a policy: N whole episodes on fresh env instances, rewards as the env gives them."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ppokit.control.envs import make_single_env, make_vector_env
from ppokit.control.masks import MaskSource
from ppokit.errors import EnvError

#: ``act(obs_batch, deterministic, action_mask_batch or None) -> actions`` in the env's format.
Act = Callable[[np.ndarray, bool, "np.ndarray | None"], np.ndarray]


def run_evaluation(act: Act, config: Any, episodes: int, *, deterministic: bool, seed: int,
                   video_dir: str | Path | None = None, env: Any = None,
                   policy_spaces: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """Evaluate on the config's env: recorded to ``video_dir`` one episode at a time, or in parallel."""
    import torch

    # Stochastic evaluation of a torch-path policy draws from torch's generator; training must not
    # see those draws, or evaluating during a run would change its results.
    with torch.random.fork_rng(devices=[]):
        if video_dir is not None:
            return record_video(act, config.env_id, episodes, video_dir, env_kwargs=config.env_kwargs,
                                deterministic=deterministic, seed=seed, policy_spaces=policy_spaces,
                                mask_key=config.action_mask_key)
        return evaluate_policy(act, config.env_id, episodes, env_kwargs=config.env_kwargs, deterministic=deterministic,
                               seed=seed, env=env, policy_spaces=policy_spaces, mask_key=config.action_mask_key)


def check_fits(env_id: str, observation_space: Any, action_space: Any, policy_spaces: tuple[Any, Any] | None) -> None:
    """Refuse an env whose spaces are not those the policy was trained on (``policy_spaces``), with
    both named, instead of failing inside the policy."""
    if policy_spaces is None:
        return
    for what, env_space, own in (("observation", observation_space, policy_spaces[0]),
                                 ("action", action_space, policy_spaces[1])):
        if type(env_space) is not type(own) or env_space.shape != own.shape or (
                hasattr(own, "n") and int(env_space.n) != int(own.n)):
            raise EnvError(f"env {env_id!r} has the {what} space {_brief(env_space)}; the policy was trained on "
                           f"{_brief(own)}")


def _brief(space: Any) -> str:
    if hasattr(space, "n"):
        return f"{type(space).__name__}({int(space.n)})"
    return f"{type(space).__name__} of shape {tuple(space.shape or ())}"


def evaluate_policy(
    act: Act,
    env_id: str,
    episodes: int,
    *,
    env_kwargs: dict[str, Any] | None = None,
    deterministic: bool = True,
    seed: int = 0,
    num_envs: int = 8,
    env: Any = None,
    policy_spaces: tuple[Any, Any] | None = None,
    mask_key: str = "action_mask",
) -> dict[str, Any]:
    """Run ``episodes`` episodes and summarise their undiscounted returns.

    Episodes are spread over up to ``num_envs`` parallel envs with a fixed quota per env, so short
    episodes are not over-represented (taking the first N to finish would favour them). ``env``: a
    vector env of the task to use (and leave open) instead of making one. ``policy_spaces``: the
    (observation, action) spaces the policy expects; an env with others is refused.
    """
    if episodes < 1:
        raise ValueError("episodes must be at least 1")
    owned = env is None
    if owned:
        env = make_vector_env(env_id, min(num_envs, episodes), env_kwargs)
    try:
        masks = MaskSource(env.single_observation_space, env.single_action_space, mask_key)
        check_fits(env_id, masks.observation_space, env.single_action_space, policy_spaces)
    except EnvError:
        if owned:
            env.close()
        raise
    n = min(env.num_envs, episodes)
    # Envs beyond the first n (a shared env wider than needed) play nothing that counts.
    quota = np.array([(episodes // n + (1 if i < episodes % n else 0)) if i < n else 0 for i in range(env.num_envs)])
    try:
        obs, info = env.reset(seed=seed)
        done_count = np.zeros(n, dtype=np.int64)
        ep_return = np.zeros(n, dtype=np.float64)
        ep_length = np.zeros(n, dtype=np.int64)
        pending = np.zeros(n, dtype=bool)
        returns: list[float] = []
        lengths: list[int] = []
        while np.any(done_count < quota):
            obs, mask = masks.read(obs, info, env.num_envs)
            obs, reward, term, trunc, info = env.step(act(obs, deterministic, mask))
            counting = ~pending & (done_count < quota)
            ep_return += np.asarray(reward, dtype=np.float64) * counting
            ep_length += counting
            done = np.asarray(term, dtype=bool) | np.asarray(trunc, dtype=bool)
            for i in np.flatnonzero(done & counting):
                returns.append(float(ep_return[i]))
                lengths.append(int(ep_length[i]))
                done_count[i] += 1
            ep_return[done] = 0.0
            ep_length[done] = 0
            pending = done
    finally:
        if owned:
            env.close()
    return summarize(returns, lengths, deterministic)


def summarize(returns: list[float], lengths: list[int], deterministic: bool) -> dict[str, Any]:
    arr = np.asarray(returns, dtype=np.float64)
    return {
        "mean_return": float(arr.mean()),
        "std_return": float(arr.std()),
        "min_return": float(arr.min()),
        "max_return": float(arr.max()),
        "mean_length": float(np.mean(lengths)),
        "episodes": int(arr.size),
        "deterministic": bool(deterministic),
        "returns": [float(r) for r in arr],
    }


def record_video(
    act: Act,
    env_id: str,
    episodes: int,
    video_dir: str | Path,
    *,
    env_kwargs: dict[str, Any] | None = None,
    deterministic: bool = True,
    seed: int = 0,
    policy_spaces: tuple[Any, Any] | None = None,
    mask_key: str = "action_mask",
) -> dict[str, Any]:
    """Play ``episodes`` episodes one after another with Gymnasium's RecordVideo into ``video_dir``."""
    import gymnasium as gym

    if Path(video_dir).exists() and not Path(video_dir).is_dir():
        raise EnvError(f"--video {video_dir}: exists and is not a directory")
    try:
        env = make_single_env(env_id, env_kwargs, render_mode="rgb_array")
        try:
            masks = MaskSource(env.observation_space, env.action_space, mask_key)
            check_fits(env_id, masks.observation_space, env.action_space, policy_spaces)
        except EnvError:
            env.close()
            raise
        env = gym.wrappers.RecordVideo(
            env, str(video_dir), episode_trigger=lambda _: True, name_prefix="eval", disable_logger=True
        )
    except gym.error.DependencyNotInstalled as err:
        raise EnvError(f"recording video needs moviepy: pip install 'ppokit[video]' ({err})") from None
    returns: list[float] = []
    lengths: list[int] = []
    try:
        for episode in range(episodes):
            obs, info = env.reset(seed=seed + episode)
            total, length, done = 0.0, 0, False
            while not done:
                policy_obs, mask = masks.read_single(obs, info)
                action = act(np.asarray(policy_obs)[None], deterministic, None if mask is None else mask[None])[0]
                obs, reward, term, trunc, info = env.step(action)
                total += float(reward)
                length += 1
                done = bool(term or trunc)
            returns.append(total)
            lengths.append(length)
    except gym.error.DependencyNotInstalled as err:
        raise EnvError(f"recording video needs moviepy: pip install 'ppokit[video]' ({err})") from None
    finally:
        env.close()
    if not math.isfinite(sum(returns)):
        raise EnvError(f"env {env_id!r} returned non-finite rewards during evaluation")
    return summarize(returns, lengths, deterministic)
