"""The Gymnasium API, checked where an env first answers: its first ``reset`` and first ``step``.

An env written for the old gym API (``step`` returning 4 values, ``reset`` returning the observation
alone) or one whose observations do not fit its ``observation_space`` would otherwise fail inside
Gymnasium's vector env with a traceback about unpacking or broadcasting, or train on garbage. Each
sub-env of a ``SyncVectorEnv`` answers through a :class:`_FirstAnswers` proxy until its first step has
been checked; the proxy then takes itself out of the vector env, so nothing is left in the path of
the later steps (or in the env state a checkpoint captures). Async workers check their own env
(:class:`FirstAnswersChecked`); any other vector env (EnvPool, ppokit's batched envs, a VectorEnv
subclass from another library) has its attributes checked when it is given, and its own first
``reset`` and ``step`` (infos one dict of batched values, observations of the batched space).
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


#: What ppokit reads of every vector env, beyond reset and step.
VECTOR_ATTRIBUTES = ("num_envs", "single_observation_space", "single_action_space", "observation_space", "action_space")

#: Where a multi-agent env goes instead of ``PPO``.
MULTI_AGENT = "ppokit.MultiAgentPPO (docs/guides/multi-agent.md)"

_NEXT_STEP = (gym.vector.AutoresetMode.NEXT_STEP, "NextStep", "next_step")


def foreign_env_hint(obj: Any, env_id: str | None = None) -> str:
    """What to use instead of ``obj`` when it is another library's multi-agent or vector env that
    ``PPO`` cannot train on ("" for anything else), as a clause to end a refusal with. ``env_id``:
    the id that made it, for the command that trains a PettingZoo env's factory as a multi-agent run
    (``ppokit train`` takes a ``module:function`` as control's unless a multi-agent field is set).

    SuperSuit's vector envs (``pettingzoo_env_to_vec_env_v1``, ``concat_vec_envs_v1``, with or without
    ``black_death_v3``) subclass ``VectorEnv`` but keep Stable-Baselines3's conventions: the unbatched
    space as ``observation_space``, a list of infos, and an undeclared same-step reset that puts the
    last observation in ``info['terminal_observation']``; black death also hides each agent's own end.
    """
    inner = obj
    while isinstance(inner, gym.vector.VectorWrapper):
        inner = inner.env
    package = type(inner).__module__.partition(".")[0]
    if package == "supersuit":
        return ("; SuperSuit's vector envs keep Stable-Baselines3's conventions (the unbatched observation_space, a "
                "list of infos, an undeclared same-step reset), which ppokit cannot train on: give the PettingZoo env "
                f"to {MULTI_AGENT}")
    if package == "pettingzoo" or hasattr(inner, "possible_agents"):
        command = (f" (on the command line: ppokit train {env_id} --set critic=mappo, or critic=ippo)"
                   if env_id is not None else "")
        return f"; a PettingZoo env has many agents: train it with {MULTI_AGENT}{command}"
    if package in ("stable_baselines3", "sb3_contrib"):
        return "; a Stable-Baselines3 VecEnv is not a Gymnasium vector env: pass the Gymnasium env or its factory"
    return ""


def vector_api_problem(env: Any) -> str | None:
    """What ``env`` (a vector env) lacks of what ppokit reads of it, or None."""
    kind = type(env).__name__
    missing = []
    for name in VECTOR_ATTRIBUTES:
        try:
            value = getattr(env, name)
        except AttributeError:
            missing.append(repr(name))
            continue
        if name == "num_envs" and not (isinstance(value, (int, np.integer)) and value >= 1):
            return f"the vector env {kind} has num_envs = {value!r}; ppokit needs a count of 1 or more"
        if name != "num_envs" and not isinstance(value, spaces.Space):
            return f"the vector env {kind}'s {name} is a {type(value).__name__}, not a gymnasium space"
    if missing:
        return (f"the vector env {kind} has no {' or '.join(missing)}, which ppokit needs of a Gymnasium VectorEnv "
                "(num_envs, single_observation_space, single_action_space, batched observation_space and "
                "action_space)")
    metadata = getattr(env, "metadata", None)
    if not isinstance(metadata, Mapping) or "autoreset_mode" not in metadata:
        # Gymnasium's wrappers assume next-step here; an env that resets otherwise would then train on
        # transitions that cross episodes, so ppokit asks rather than assumes.
        return (f"the vector env {kind} declares no metadata['autoreset_mode'], so ppokit cannot tell how it resets "
                "an ended episode; if it resets on the step after (Gymnasium's default), say so: metadata = "
                "{'autoreset_mode': gymnasium.vector.AutoresetMode.NEXT_STEP}")
    mode = metadata["autoreset_mode"]
    if mode not in _NEXT_STEP:
        return f"the vector env {kind} resets with {mode}; ppokit needs Gymnasium's default, AutoresetMode.NEXT_STEP"
    return None


def check_vector_api(env: Any, env_id: str) -> None:
    """Refuse in one line a vector env that lacks what ppokit reads of it (SuperSuit's vector envs have
    no ``single_observation_space``), or that does not declare that it resets next-step."""
    problem = vector_api_problem(env)
    if problem:
        raise EnvError(f"env {env_id!r}: {problem}{foreign_env_hint(env)}")


def _vector_problem(env: Any, call: str, out: Any) -> str | None:
    size, api = (2, _RESET) if call == "reset()" else (5, _STEP)
    if not isinstance(out, tuple) or len(out) != size:
        return f"{call} returned {_count(out)}; {api}"
    if not isinstance(out[-1], Mapping):
        return (f"{call} returned its infos as a {type(out[-1]).__name__}; Gymnasium vector envs return one dict "
                "of batched values (a list of per-env dicts is the old convention)")
    for i, part in enumerate(out[1:3] if size == 5 else ()):
        if np.shape(part) != (env.num_envs,):
            return f"{call} returned {('rewards', 'terminated')[i]} of shape {np.shape(part)}, not ({env.num_envs},)"
    problem = observation_problem(env.observation_space, out[0])
    return f"{call} returned {problem}; its observation_space is {env.observation_space}" if problem else None


def _check_vector_answers(env: Any, env_id: str) -> None:
    """Check the first ``reset`` and ``step`` of a vector env that is not a SyncVectorEnv, through methods
    set on the instance that take themselves off once the first step is checked."""
    def checked(call: str, method: Any) -> Any:
        def answer(*args: Any, **kwargs: Any) -> Any:
            out = method(*args, **kwargs)
            problem = _vector_problem(env, call, out)
            if problem or call == "step()":
                _take_off(env)
            if problem:
                raise EnvError(f"env {env_id!r} ({type(env).__name__}): {problem}")
            return out
        answer.first_answer_check = True  # type: ignore[attr-defined]
        return answer

    try:
        env.reset, env.step = checked("reset()", env.reset), checked("step()", env.step)
    except AttributeError:  # an env with __slots__ or read-only methods: its own errors will do
        pass


def _take_off(env: Any) -> None:
    for name in ("reset", "step"):
        if getattr(getattr(env, "__dict__", {}).get(name), "first_answer_check", False):
            del env.__dict__[name]


def check_first_answers(env: Any, env_id: str) -> Any:
    """``env`` with what ppokit reads of it checked: its attributes now; each sub-env's first ``reset``
    and ``step`` (a SyncVectorEnv), or the vector env's own (any other)."""
    check_vector_api(env, env_id)
    if isinstance(env, gym.vector.SyncVectorEnv):
        env.envs = [_FirstAnswers(sub, env, i, env_id) for i, sub in enumerate(env.envs)]  # type: ignore[misc]
    elif not isinstance(env, gym.vector.AsyncVectorEnv):  # async workers check their own (FirstAnswersChecked)
        _check_vector_answers(env, env_id)
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
    else:
        _take_off(env)
