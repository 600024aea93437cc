"""Atari games through ``ale-py``, with the standard preprocessing of the DQN and PPO papers.

The stack is Gymnasium's own wrappers where they exist, in the order of OpenAI Baselines'
``wrap_deepmind`` (and so of Stable-Baselines3's ``AtariWrapper`` and CleanRL's ``ppo_atari.py``),
bottom to top:

=========================  =====================================================================
``AtariEnv``               the emulator, made with ``frameskip=1`` (the next wrapper skips)
``AtariPreprocessing``     1-30 random no-op frames at each reset; each action repeated for 4
                           frames, the observation the pixel-wise max of the last two (sprites
                           flicker); 84×84 grey (Gymnasium's wrapper, ``cv2.INTER_AREA``)
``RecordEpisodeStatistics`` the game's own score and length (all lives, unclipped) in ``info['episode']``
``EpisodicLife``           a lost life ends the *training* episode (``terminated``); the reset after
                           it continues the same game with one no-op step (value estimation sees
                           the loss; the emulator does not restart)
``FireReset``              FIRE (then action 2) after each reset, in games that wait for it
``TransformReward(sign)``  rewards clipped to their sign, -1, 0 or +1
``FrameStackObservation``  the last 4 frames: ``uint8`` of shape (4, 84, 84), what the Nature CNN takes
=========================  =====================================================================

Scores are game scores: ``RecordEpisodeStatistics`` sits below the life and reward rules, and the
vector env declares ``metadata['episode_statistics']``, so training logs and evaluations count a game
only when it ends (a ``done`` at a lost life is no episode) and report its unclipped score. Evaluation
plays the same stack, as CleanRL and SB3 do: the policy sees what it was trained on, including the
FIRE at each new life.
"""

from __future__ import annotations

import re
from typing import Any

import gymnasium as gym
import numpy as np

from ppokit.errors import EnvError

#: The standard settings (Mnih et al., 2015; Machado et al., 2018 for the names).
NOOP_MAX = 30
FRAME_SKIP = 4
SCREEN_SIZE = 84
FRAME_STACK = 4

#: The entry point ale-py registers every Atari id with.
ALE_ENTRY_POINT = "ale_py.env:AtariEnv"

_V5 = re.compile(r"ALE/([A-Za-z0-9]+)-v5")
_NO_FRAMESKIP = re.compile(r"([A-Za-z0-9]+)NoFrameskip-v4")


def game_name(env_id: str) -> str | None:
    """The game of an Atari id in either scheme ppokit knows, ``ALE/Breakout-v5`` (sticky actions) or
    ``BreakoutNoFrameskip-v4`` (none): ``'Breakout'``; None for any other id (``-ram`` ids too)."""
    match = _V5.fullmatch(env_id) or _NO_FRAMESKIP.fullmatch(env_id)
    return match.group(1) if match else None


def register_ale() -> bool:
    """Register ale-py's ids with Gymnasium (importing ale-py does not do it in Gymnasium 1.x); False
    when ale-py is not installed."""
    try:
        import ale_py
    except ImportError:
        return False
    # Its banner on every emulator made (once per env, in each worker) says nothing a user needs.
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    gym.register_envs(ale_py)
    return True


def missing_ale(env_id: str) -> EnvError:
    return EnvError(f"env {env_id!r} is an Atari game and needs ale-py (its ROMs come with it): "
                    "pip install 'ppokit[atari]'")


def is_atari_id(env_id: str) -> bool:
    """Whether ``env_id`` is a registered ale-py id with image observations (``-ram`` ids are not)."""
    if ":" in env_id:
        return False
    try:
        spec = gym.spec(env_id)
    except gym.error.Error:
        if not register_ale():
            return False
        try:
            spec = gym.spec(env_id)
        except gym.error.Error:
            return False
    return spec.entry_point == ALE_ENTRY_POINT and spec.kwargs.get("obs_type", "rgb") != "ram"


def applies(env_id: str, preprocessing: str) -> bool:
    """Whether envs made from ``env_id`` get the Atari stack: ``'auto'`` for ale-py's image ids,
    ``'atari'`` always (the env must be an ale-py one), ``'none'`` never."""
    if preprocessing == "none":
        return False
    if preprocessing == "atari":
        if ":" not in env_id and not is_atari_id(env_id):
            raise EnvError(f"env_preprocessing 'atari' needs an ale-py Atari id with image observations "
                           f"(ALE/<Game>-v5 or <Game>NoFrameskip-v4); {env_id!r} is not one")
        return True
    return is_atari_id(env_id)


def base_kwargs(env_id: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments of the emulator under the stack: ``frameskip=1``, since
    AtariPreprocessing repeats each action itself (and max-pools the last two frames)."""
    frameskip = kwargs.get("frameskip", 1)
    if frameskip != 1:
        raise EnvError(f"env {env_id!r} with env_kwargs frameskip={frameskip!r}: the Atari preprocessing repeats "
                       f"each action {FRAME_SKIP} frames itself; leave frameskip out (or set env_preprocessing: none)")
    return {**kwargs, "frameskip": 1}


class EpisodicLife(gym.Wrapper):
    """A lost life ends the episode the agent trains on (``terminated``), but not the game: the reset
    that follows takes one no-op step instead of restarting the emulator (Mnih et al., 2015).

    A seeded reset, or one after the game really ended, restarts it.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.lives = 0
        self.game_over = True

    def _lives(self) -> int:
        return int(self.env.unwrapped.ale.lives())  # type: ignore[attr-defined]

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = bool(terminated or truncated)
        lives = self._lives()
        # lives > 0: at the last life the game's own terminal says it (and some games count down
        # through 0 for a few frames before it does).
        if 0 < lives < self.lives:
            terminated = True
        self.lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if self.game_over or seed is not None:
            obs, info = self.env.reset(seed=seed, options=options)
        else:
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:  # the no-op ended the game: a new one
                obs, info = self.env.reset(options=options)
        self.game_over = False
        self.lives = self._lives()
        return obs, info


class FireReset(gym.Wrapper):
    """Press FIRE, then action 2, after each reset, for games that wait for FIRE to start (Breakout
    launches no ball without it); as Baselines' ``FireResetEnv``."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        meanings = env.unwrapped.get_action_meanings()  # type: ignore[attr-defined]
        if len(meanings) < 3 or meanings[1] != "FIRE":
            raise EnvError(f"FireReset needs FIRE as action 1, got {meanings[:3]}")

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        for action in (1, 2):
            obs, _, terminated, truncated, info = self.env.step(action)
            if terminated or truncated:
                obs, info = self.env.reset(options=options)
        return obs, info


def needs_fire(env: gym.Env) -> bool:
    meanings = env.unwrapped.get_action_meanings()  # type: ignore[attr-defined]
    return len(meanings) >= 3 and meanings[1] == "FIRE"


def reward_sign(reward: Any) -> float:
    """Reward clipping: the sign of the reward (Atari rewards are integers, so this is clipping to ±1)."""
    return float(np.sign(reward))


def wrap(env: gym.Env, env_id: str) -> gym.Env:
    """``env`` (an ale-py env made with ``frameskip=1``) inside the standard stack (module docstring)."""
    if not hasattr(env.unwrapped, "ale"):
        env.close()
        raise EnvError(f"env_preprocessing 'atari' needs an ale-py Atari env; {env_id!r} is "
                       f"{type(env.unwrapped).__name__}")
    try:
        env = gym.wrappers.AtariPreprocessing(env, noop_max=NOOP_MAX, frame_skip=FRAME_SKIP, screen_size=SCREEN_SIZE,
                                              terminal_on_life_loss=False, grayscale_obs=True)
    except gym.error.DependencyNotInstalled:
        raise EnvError(f"env {env_id!r}: the Atari preprocessing resizes frames with OpenCV: "
                       "pip install 'ppokit[atari]'") from None
    except ValueError as err:  # an emulator that skips frames itself
        raise EnvError(f"env {env_id!r}: {err}") from None
    env = gym.wrappers.RecordEpisodeStatistics(env)
    env = EpisodicLife(env)
    if needs_fire(env):
        env = FireReset(env)
    env = gym.wrappers.TransformReward(env, reward_sign)
    env = gym.wrappers.FrameStackObservation(env, FRAME_STACK)
    # Read by the rollout and the evaluation: a done without info['episode'] is a lost life.
    env.metadata = {**env.metadata, "episode_statistics": True}
    return env
