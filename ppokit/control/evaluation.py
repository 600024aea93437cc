"""Evaluating a policy: N whole episodes on fresh env instances, rewards as the env gives them.

An env that keeps its own episode statistics (an Atari game: ``metadata['episode_statistics']``, or
``info['episode']`` seen) is scored by them: an episode is a whole game, its return the game's
unclipped score, and a ``done`` the env does not report (a lost life) only starts the next life.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ppokit.control.config import ControlConfig
from ppokit.control.envs.observations import ObservationReader
from ppokit.control.envs.source import EnvSource
from ppokit.control.policy.actions import first_of
from ppokit.errors import EnvError

#: Periodic evaluations run their episodes in parallel in up to this many envs.
MAX_EVAL_ENVS = 32

#: ``act(obs_batch, deterministic, action_mask_batch or None, starts) -> actions`` in the env's format;
#: ``starts[i]``: env i's observation is its episode's first (a recurrent policy resets its state).
Act = Callable[[np.ndarray, bool, "np.ndarray | None", np.ndarray], Any]


def run_evaluation(act: Act, source: EnvSource, config: ControlConfig, episodes: int, *, deterministic: bool, seed: int,
                   video_dir: str | Path | None = None, env: Any = None,
                   policy_spaces: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """Evaluate on envs from ``source``: recorded to ``video_dir`` one episode at a time, or in
    parallel (on ``env`` when given, else on new envs closed afterwards)."""
    import torch

    # Stochastic evaluation of a torch-path policy draws from torch's generator; training must not
    # see those draws, or evaluating during a run would change its results.
    with torch.random.fork_rng(devices=[]):
        if video_dir is not None:
            if Path(video_dir).exists() and not Path(video_dir).is_dir():
                raise EnvError(f"--video {video_dir}: exists and is not a directory")
            offscreen_rendering()
            try:
                video_env = source.single(render_mode="rgb_array")
            except EnvError:
                raise
            except Exception as err:  # noqa: BLE001 - a renderer's import fails with OpenGL's own types
                raise rendering_failed(config.env_id, err) from err
            return record_video(act, video_env, config.env_id, episodes, video_dir,
                                deterministic=deterministic, seed=seed, policy_spaces=policy_spaces,
                                mask_key=config.action_mask_key)
        owned = env is None
        env = source.evaluation(min(8, episodes), eval_vectorization(config)) if owned else env
        try:
            return evaluate_policy(act, env, config.env_id, episodes, deterministic=deterministic, seed=seed,
                                   policy_spaces=policy_spaces, mask_key=config.action_mask_key)
        finally:
            if owned:
                env.close()


def eval_vectorization(config: ControlConfig) -> str:
    """How evaluation envs are made: by EnvPool when the run trains on it (the same preprocessing in
    the same C++), else Gymnasium's ``auto``."""
    return "envpool" if config.vectorization == "envpool" else "auto"


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
    env: Any,
    env_id: str,
    episodes: int,
    *,
    deterministic: bool = True,
    seed: int = 0,
    policy_spaces: tuple[Any, Any] | None = None,
    mask_key: str = "action_mask",
) -> dict[str, Any]:
    """Run ``episodes`` episodes and summarise their undiscounted returns.

    Episodes are spread over up to ``num_envs`` parallel envs with a fixed quota per env, so short
    episodes are not over-represented (taking the first N to finish would favour them). ``env``: a
    vector env of the task to use (and leave open) instead of making one. ``policy_spaces``: the
    (observation, action) spaces the policy expects; an env with others is refused. An env with
    episode statistics of its own is scored by them (module docstring).
    """
    from ppokit.control.rollout.storage import env_episodes, records_episodes

    if episodes < 1:
        raise ValueError("episodes must be at least 1")
    masks = ObservationReader.for_env(env, mask_key)
    check_fits(env_id, masks.observation_space, env.single_action_space, policy_spaces)
    n = min(env.num_envs, episodes)
    # Envs beyond the first n (a shared env wider than needed) play nothing that counts.
    quota = np.array([(episodes // n + (1 if i < episodes % n else 0)) if i < n else 0 for i in range(env.num_envs)])
    obs, info = env.reset(seed=seed)
    starts = np.ones(env.num_envs, dtype=bool)
    done_count = np.zeros(env.num_envs, dtype=np.int64)
    ep_return = np.zeros(env.num_envs, dtype=np.float64)
    ep_length = np.zeros(env.num_envs, dtype=np.int64)
    pending = np.zeros(env.num_envs, dtype=bool)
    returns: list[float] = []
    lengths: list[int] = []
    reports = records_episodes(env)
    ended = None  # the envs whose episode the last step ended (their mask may allow nothing)
    while np.any(done_count < quota):
        obs, mask = masks.read(obs, info, env.num_envs, ended)
        obs, reward, term, trunc, info = env.step(act(obs, deterministic, mask, starts))
        ended = np.logical_or(term, trunc)
        counting = ~pending & (done_count < quota)
        ep_return += np.asarray(reward, dtype=np.float64) * counting
        ep_length += counting
        done = np.asarray(term, dtype=bool) | np.asarray(trunc, dtype=bool)
        ended = done & counting
        own = env_episodes(info, ended, reports) if ended.any() else None
        reports = reports or own is not None
        for i in np.flatnonzero(ended):
            if own is not None and not own[2][i]:
                continue  # a lost life: the game goes on
            returns.append(float(ep_return[i]) if own is None else float(own[0][i]))
            lengths.append(int(ep_length[i]) if own is None else int(own[1][i]))
            done_count[i] += 1
        ep_return[done] = 0.0
        ep_length[done] = 0
        # A reset step (next-step autoreset) returns an episode's first observation.
        starts = pending
        pending = done
    return summarize(returns, lengths, deterministic, seed)


def summarize(returns: list[float], lengths: list[int], deterministic: bool, seed: int) -> dict[str, Any]:
    """eval.json's figures; ``seed`` is the evaluation envs' seed, so the evaluation can be played again."""
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
        "seed": seed,
    }


def offscreen_rendering() -> None:
    """With no display, MuJoCo renders offscreen through EGL (what its documentation advises for
    servers), unless the user chose a backend with ``MUJOCO_GL``. Classic-control and Box2D envs
    draw with pygame into an array and need no display at all."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) and "MUJOCO_GL" not in os.environ:
        os.environ["MUJOCO_GL"] = "egl"
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")


def rendering_failed(env_id: str, err: Exception) -> EnvError:
    return EnvError(f"recording video of {env_id!r} failed ({type(err).__name__}: {err}); without a display, MuJoCo "
                    "envs need MUJOCO_GL=egl (the default here) or osmesa, and that library installed (docs/tutorials/mujoco.md)")


def record_video(
    act: Act,
    env: Any,
    env_id: str,
    episodes: int,
    video_dir: str | Path,
    *,
    deterministic: bool = True,
    seed: int = 0,
    policy_spaces: tuple[Any, Any] | None = None,
    mask_key: str = "action_mask",
) -> dict[str, Any]:
    """Play ``episodes`` episodes one after another in ``env`` (one env made with
    ``render_mode='rgb_array'``, closed afterwards) with Gymnasium's RecordVideo into ``video_dir``.
    An env with episode statistics of its own plays whole games, one file each."""
    import gymnasium as gym

    reports = bool(env.metadata.get("episode_statistics", False))
    try:
        try:
            masks = ObservationReader.for_env(env, mask_key)
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
            total, length, done, start = 0.0, 0, False, True
            while not done:
                policy_obs, mask = masks.read_single(obs, info)
                starts = np.array([start])
                action = first_of(act(policy_obs, deterministic, None if mask is None else mask[None], starts))
                obs, reward, term, trunc, info = env.step(action)
                total += float(reward)
                length += 1
                start = bool(term or trunc)
                if start and reports and "episode" not in info:
                    # A lost life: the next starts below RecordVideo, so the game stays one file.
                    obs, info = env.env.reset()
                    continue
                if start and "episode" in info:
                    total, length = float(info["episode"]["r"]), int(info["episode"]["l"])
                done = start
            returns.append(total)
            lengths.append(length)
    except gym.error.DependencyNotInstalled as err:
        raise EnvError(f"recording video needs moviepy: pip install 'ppokit[video]' ({err})") from None
    except EnvError:
        raise
    except Exception as err:  # noqa: BLE001 - rendering fails with OpenGL's, MuJoCo's or pygame's own types
        raise rendering_failed(env_id, err) from err
    finally:
        env.close()
    if not math.isfinite(sum(returns)):
        raise EnvError(f"env {env_id!r} returned non-finite rewards during evaluation")
    return summarize(returns, lengths, deterministic, seed)


class EvaluationEnvs:
    """The envs a run's periodic evaluations play in: made for the first, kept to the end of the run,
    one per episode (up to :data:`MAX_EVAL_ENVS`), so each evaluation is as many vector steps as its
    longest episode, with no env construction."""

    def __init__(self, source: EnvSource, vectorization: str) -> None:
        self.source, self.vectorization = source, vectorization
        self.env: Any = None

    def get(self, episodes: int) -> Any:
        if self.env is None:
            self.env = self.source.evaluation(min(episodes, MAX_EVAL_ENVS), self.vectorization)
        return self.env

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None
