"""The Gymnasium API, checked where an env first answers: its first ``reset`` and first ``step``.

An env written for the old gym API (``step`` returning 4 values, ``reset`` returning the observation
alone) or one whose observations do not fit its ``observation_space`` would otherwise fail inside
Gymnasium's vector env with a traceback about unpacking or broadcasting, or train on garbage. Each
sub-env of a ``SyncVectorEnv`` answers through a :class:`_FirstAnswers` proxy until its first step has
been checked; the proxy then takes itself out of the vector env, so nothing is left in the path of
the later steps (or in the env state a checkpoint captures). Other vector envs (async workers,
EnvPool, ppokit's own batched envs) are not looked into: their own errors already name the worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ppokit.errors import EnvError

_STEP = "Gymnasium envs return 5 (obs, reward, terminated, truncated, info)"
_RESET = "Gymnasium envs return 2 (obs, info)"


def observation_problem(space: spaces.Space, obs: Any) -> str | None:
    """What is wrong with ``obs`` as an observation of ``space`` (shape, dtype, keys), or None.
    Bounds are not checked: many envs leave them loose, and the policy copes."""
    if isinstance(space, spaces.Dict):
        if not isinstance(obs, Mapping):
            return f"a {type(obs).__name__} where a dict is expected"
        if set(obs) != set(space.spaces):
            return f"a dict with keys {sorted(map(str, obs))}, not {sorted(map(str, space.spaces))}"
        for key, part in space.spaces.items():
            problem = observation_problem(part, obs[key])
            if problem:
                return f"{problem} under key {key!r}"
        return None
    if isinstance(space, spaces.Tuple):
        if not isinstance(obs, (tuple, list)) or len(obs) != len(space.spaces):
            return f"{type(obs).__name__} of {len(obs) if isinstance(obs, (tuple, list)) else '?'} parts where a " \
                   f"tuple of {len(space.spaces)} is expected"
        for i, (part, item) in enumerate(zip(space.spaces, obs)):
            problem = observation_problem(part, item)
            if problem:
                return f"{problem} in part {i}"
        return None
    if not isinstance(space, (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
        return None  # a space ppokit does not read part by part (Text, Graph...): refused elsewhere
    try:
        array = np.asarray(obs)
    except (ValueError, TypeError):  # ragged nested lists
        return f"a {type(obs).__name__} that is not an array"
    expected = tuple(space.shape or ())
    if array.dtype.kind not in "biuf":
        return f"values of type {array.dtype} ({type(obs).__name__})"
    if array.shape != expected:
        return f"an observation of shape {array.shape}, not {expected}"
    if space.dtype is not None and not np.can_cast(array.dtype, space.dtype, casting="same_kind"):
        return f"an observation of dtype {array.dtype}, which does not fit {space.dtype}"
    return None


def _count(out: Any) -> str:
    if isinstance(out, tuple):
        return f"{len(out)} value{'s' * (len(out) != 1)}"
    return f"a value of type {type(out).__name__}, not a tuple"


def answer_problem(call: str, out: Any, space: spaces.Space) -> str | None:
    """What is wrong with what ``reset()`` or ``step()`` (``call``) returned, or None."""
    size, api = (2, _RESET) if call == "reset()" else (5, _STEP)
    if not isinstance(out, tuple) or len(out) != size:
        return f"{call} returned {_count(out)}; {api}"
    problem = observation_problem(space, out[0])
    return f"{call} returned {problem}; its observation_space is {space}" if problem else None


class _FirstAnswers:
    """Stands in for sub-env ``index`` of a SyncVectorEnv until its first step is checked."""

    def __init__(self, env: gym.Env, vector: gym.vector.SyncVectorEnv, index: int, env_id: str) -> None:
        self._env, self._vector, self._index, self._env_id = env, vector, index, env_id

    @property
    def checked_env(self) -> gym.Env:
        """The sub-env itself, for code that looks at its wrappers."""
        return self._env

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # this proxy's own (absent while a copy is being built)
            raise AttributeError(name)
        return getattr(self._env, name)

    def _checked(self, call: str, out: Any, done: bool) -> Any:
        problem = answer_problem(call, out, self._env.observation_space)
        if problem or done:
            self._vector.envs[self._index] = self._env  # checked: out of the way of every later step
        if problem:
            raise EnvError(f"env {self._env_id!r} (env {self._index} of {self._vector.num_envs}): {problem}")
        return out

    def reset(self, **kwargs: Any) -> Any:
        return self._checked("reset()", self._env.reset(**kwargs), done=False)

    def step(self, action: Any) -> Any:
        return self._checked("step()", self._env.step(action), done=True)


def check_first_answers(env: Any, env_id: str) -> Any:
    """``env`` with each sub-env's first ``reset`` and ``step`` checked (SyncVectorEnv only)."""
    if isinstance(env, gym.vector.SyncVectorEnv):
        env.envs = [_FirstAnswers(sub, env, i, env_id) for i, sub in enumerate(env.envs)]  # type: ignore[misc]
    return env


class FirstAnswersChecked(gym.Wrapper):
    """The same checks for one env in an async worker process (whose env state is never captured,
    so a wrapper left in place costs only its call)."""

    def __init__(self, env: gym.Env, env_id: str) -> None:
        super().__init__(env)
        self._env_id, self._stepped = env_id, False

    def reset(self, **kwargs: Any) -> Any:
        out = self.env.reset(**kwargs)
        problem = answer_problem("reset()", out, self.env.observation_space)
        if problem:
            raise EnvError(f"env {self._env_id!r}: {problem}")
        return out

    def step(self, action: Any) -> Any:
        out = self.env.step(action)
        if not self._stepped:
            problem = answer_problem("step()", out, self.env.observation_space)
            if problem:
                raise EnvError(f"env {self._env_id!r}: {problem}")
            self._stepped = True
        return out


def settle_checks(env: Any) -> None:
    """Take the first-answer proxies out of ``env`` now (an env whose state is saved or restored)."""
    if isinstance(env, gym.vector.SyncVectorEnv):
        env.envs = [sub._env if isinstance(sub, _FirstAnswers) else sub for sub in env.envs]
