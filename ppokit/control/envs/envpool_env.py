"""EnvPool as a vector-env backend (``vectorization: envpool``): many envs stepped in C++ threads.

EnvPool's Gymnasium interface already is a Gymnasium 1.x ``VectorEnv`` with **next-step autoreset**
(its metadata says ``AutoresetMode.NEXT_STEP``, and its documentation and issue #194 describe the
same rule): the step after a ``terminated`` or ``truncated`` one ignores its action, resets that env
and returns the new episode's first observation with reward 0 and both flags false. That is the rule
of ppokit's Gymnasium path, so the rollout's ``valid`` mask and bootstrapping need no conversion;
``tests/control/test_envpool.py`` holds the two paths to the same rules on CartPole-v1.

What :class:`EnvPoolVectorEnv` adds around it:

* **ids**: the Gymnasium id names the env on both backends. ``<Game>NoFrameskip-v4`` is EnvPool's
  ``<Game>-v5`` with its defaults (its Atari follows NoFrameskip-v4 and Baselines' wrappers);
  ``ALE/<Game>-v5`` is the same with sticky actions (``repeat_action_probability`` 0.25), as ale-py
  defines that id. Other ids are used as EnvPool names them (CartPole-v1, Pendulum-v1, Hopper-v5...);
  an id EnvPool lacks is an :class:`~ppokit.errors.EnvError`.
* **Atari preprocessing**: EnvPool's own, set to the standard settings of :mod:`ppokit.control.envs.atari`
  (30 no-ops, 4-frame skip with max-pool, episodic life, FIRE reset, sign-clipped rewards, 84×84 grey,
  4 frames stacked: ``uint8`` (4, 84, 84), as the Gymnasium stack gives).
* **game scores**: EnvPool reports the unclipped reward (``info['reward']``) and the game's end
  (``info['terminated']``); this class sums them into ``info['episode']`` at the end of each game and
  declares ``metadata['episode_statistics']``, as the Gymnasium stack's ``RecordEpisodeStatistics``
  does, so logs and evaluations report game scores, not lives.
* **seeding**: EnvPool fixes its seeds when the pool is made and ignores ``reset(seed=...)``; here a
  seeded reset makes the pool again with that seed (env ``i`` gets ``seed + i``, as Gymnasium's
  vector envs seed theirs), so seeded runs and evaluations repeat.

EnvPool's state lives in C++ and cannot be saved: a checkpoint records why
(:attr:`EnvPoolVectorEnv.state_not_captured`, read by :mod:`ppokit.control.envs.state`) and a resumed
run starts fresh, seeded episodes.
"""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np

from ppokit.control.envs import atari
from ppokit.errors import EnvError

#: EnvPool's Atari options for the standard preprocessing (:mod:`ppokit.control.envs.atari`).
ATARI_OPTIONS: dict[str, Any] = {
    "noop_max": atari.NOOP_MAX, "frame_skip": atari.FRAME_SKIP, "img_height": atari.SCREEN_SIZE,
    "img_width": atari.SCREEN_SIZE, "stack_num": atari.FRAME_STACK, "gray_scale": True, "episodic_life": True,
    "use_fire_reset": True, "reward_clip": True, "repeat_action_probability": 0.0,
    # 108,000 frames, ale-py's max_num_frames_per_episode for both id schemes.
    "max_episode_steps": 108_000 // atari.FRAME_SKIP,
}

#: EnvPool takes seeds of int32.
_SEED_RANGE = 2**31


def _envpool() -> Any:
    try:
        import envpool
    except ImportError:
        raise EnvError("vectorization 'envpool' needs EnvPool: pip install 'ppokit[envpool]'") from None
    return envpool


def envpool_task(env_id: str, preprocessing: str = "auto") -> tuple[str, dict[str, Any], bool]:
    """``(EnvPool's task id, its options, whether it is an Atari game)`` for a Gymnasium id."""
    envpool = _envpool()
    game = atari.game_name(env_id)
    if game is not None:
        if preprocessing == "none":
            raise EnvError(f"env {env_id!r} with vectorization 'envpool': EnvPool always preprocesses Atari frames; "
                           "env_preprocessing 'none' needs vectorization 'sync' or 'async'")
        task = f"{game}-v5"
        options = dict(ATARI_OPTIONS)
        if env_id.startswith("ALE/"):
            options["repeat_action_probability"] = 0.25
    else:
        if preprocessing == "atari":
            raise EnvError(f"env {env_id!r}: env_preprocessing 'atari' with EnvPool needs an Atari id "
                           "(ALE/<Game>-v5 or <Game>NoFrameskip-v4)")
        task, options = env_id, {}
    if task not in envpool.list_all_envs():
        raise EnvError(f"EnvPool does not provide env {env_id!r}: envpool.list_all_envs() lists what it has (Atari "
                       "games go by their ids ALE/<Game>-v5 or <Game>NoFrameskip-v4 here); or use vectorization "
                       "'sync' or 'async'")
    return task, options, game is not None


class EnvPoolVectorEnv(gym.vector.VectorEnv):
    """An EnvPool pool as a Gymnasium 1.x vector env with ppokit's rules (module docstring)."""

    #: Why a checkpoint cannot hold this env's state; :func:`ppokit.control.envs.state.capture_env_state` reads it.
    state_not_captured = ("the envs run inside EnvPool (vectorization 'envpool'), whose C++ state cannot be "
                          "saved or restored")

    def __init__(self, env_id: str, num_envs: int, env_kwargs: dict[str, Any] | None = None,
                 preprocessing: str = "auto") -> None:
        envpool = _envpool()
        self.env_id = env_id
        self.task_id, options, self.atari = envpool_task(env_id, preprocessing)
        self.options = {**options, **(env_kwargs or {})}
        self.num_envs = num_envs
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Box bounds cast to float32, said once per space
                spec = envpool.make_spec(self.task_id, num_envs=num_envs, **self.options)
                self.single_observation_space = spec.gymnasium_observation_space
                self.single_action_space = spec.gymnasium_action_space
                self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
                self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        except (TypeError, ValueError, AssertionError) as err:
            raise EnvError(f"cannot make env {env_id!r} with EnvPool (task {self.task_id!r}, options "
                           f"{self.options}): {err}") from None
        self.metadata = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP, "episode_statistics": self.atari}
        self._pool: Any = None
        self._game_return = np.zeros(num_envs, dtype=np.float64)
        self._game_length = np.zeros(num_envs, dtype=np.int64)
        self._resetting = np.zeros(num_envs, dtype=bool)

    def _make(self, seed: int) -> None:
        envpool = _envpool()
        if self._pool is not None:
            self._pool.close()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._pool = envpool.make(self.task_id, env_type="gymnasium", num_envs=self.num_envs,
                                      seed=int(seed) % _SEED_RANGE, **self.options)

    def reset(self, *, seed: int | list[int] | None = None,
              options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Reset every env; a ``seed`` makes the pool again with it (EnvPool seeds only when made)."""
        if isinstance(seed, list):
            raise EnvError("vectorization 'envpool' takes one seed (env i gets seed + i), not a list")
        if options:
            raise EnvError(f"vectorization 'envpool' takes no reset options, got {sorted(options)}")
        if seed is not None or self._pool is None:
            self._make(int(np.random.SeedSequence().entropy) if seed is None else seed)  # type: ignore[arg-type]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the pool makes its spaces on first use: the same casts again
            obs, info = self._pool.reset()
        self._game_return[:] = 0.0
        self._game_length[:] = 0
        self._resetting[:] = False
        return obs, self._plain(info)

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        if self._pool is None:
            raise EnvError("step() before reset() on an EnvPool vector env")
        obs, reward, terminated, truncated, info = self._pool.step(np.asarray(actions))
        terminated, truncated = np.asarray(terminated, dtype=bool), np.asarray(truncated, dtype=bool)
        info = self._plain(info)
        if self.atari:
            self._game_scores(info, terminated, truncated)
        self._resetting = terminated | truncated
        return obs, reward, terminated, truncated, info

    def _game_scores(self, info: dict[str, Any], terminated: np.ndarray, truncated: np.ndarray) -> None:
        """Add ``info['episode']`` (score and length of each game that ended) as RecordEpisodeStatistics
        does: the score sums EnvPool's unclipped rewards over all lives; a reset step adds nothing."""
        playing = ~self._resetting
        self._game_return += np.asarray(info["reward"], dtype=np.float64) * playing
        self._game_length += playing
        over = truncated | (terminated & (np.asarray(info["terminated"]) != 0))
        if over.any():
            info["episode"] = {"r": np.where(over, self._game_return, 0.0), "l": np.where(over, self._game_length, 0)}
            info["_episode"] = over
            self._game_return[over] = 0.0
            self._game_length[over] = 0

    @staticmethod
    def _plain(info: dict[str, Any]) -> dict[str, Any]:
        # 'players' (multi-agent bookkeeping) and the 128-byte RAM copy serve no single-agent policy.
        return {k: v for k, v in info.items() if k not in ("players", "ram")}

    def close_extras(self, **kwargs: Any) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
