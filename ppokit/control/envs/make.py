"""Building vector environments from an env id, with clear errors for ids that do not exist."""

from __future__ import annotations

import dataclasses
import importlib
import multiprocessing
import signal
from collections.abc import Callable
from typing import Any

import gymnasium as gym
from gymnasium import spaces

from ppokit.control.envs import atari
from ppokit.envs import cartpole_vector
from ppokit.errors import EnvError, UntrustedCodeError


def _resolve_callable(env_id: str) -> Callable[..., gym.Env] | None:
    """For ``module:EnvClass`` return the class (or factory); None when the id is a registered one."""
    if ":" not in env_id:
        return None
    module_name, attr = env_id.rsplit(":", 1)
    if not module_name or not attr or module_name.startswith(".") or not all(
            part.isidentifier() for part in module_name.split(".")):
        raise EnvError(f"env id {env_id!r}: expected a registered id (CartPole-v1) or 'package.module:EnvClass'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise EnvError(f"env id {env_id!r}: cannot import module {module_name!r} ({err})") from None
    target = getattr(module, attr, None)
    if target is None:
        # Gymnasium's own 'module:Env-v0' form: importing the module registered the env.
        return None
    if not callable(target):
        raise EnvError(f"env id {env_id!r}: {attr!r} in {module_name!r} is not an environment class")
    return target


def env_import(env_id: str) -> str | None:
    """The module that making ``env_id`` would import (``'module:EnvClass'``, or Gymnasium's
    ``'module:Env-v0'``); None for a registered id, which names only code that is already installed
    and registered."""
    if ":" not in env_id:
        return None
    return env_id.rsplit(":", 1)[0] or None


def require_no_import(env_id: str, env_kwargs: dict[str, Any], source: str) -> None:
    """Raise :class:`UntrustedCodeError` when making ``env_id`` (named in ``source``, a file the user
    has not vouched for) would import a module, saying exactly what would run and how to allow it."""
    module = env_import(env_id)
    if module is None:
        return
    raise UntrustedCodeError(
        f"{source} names the env {env_id!r}: making it would import module {module!r} and call "
        f"{env_id.rsplit(':', 1)[1]!r} with env_kwargs {env_kwargs!r}. ppokit imports nothing a saved file "
        f"names unless you allow it: if you trust this file, pass --env {env_id} or --trust (in Python: "
        "env_id=... or trust=True to PPO.load / PPO.resume)"
    )


def _registered_id(env_id: str) -> str:
    return env_id.rsplit(":", 1)[1] if ":" in env_id else env_id


def _spec(name: str) -> gym.envs.registration.EnvSpec:
    """Gymnasium's spec of a registered id; ale-py's ids are registered on first need (Gymnasium 1.x
    no longer does it, and importing ale-py for every run would cost every run its start-up)."""
    try:
        return gym.spec(name)
    except gym.error.Error:
        if not atari.register_ale():
            if atari.game_name(name) is not None:
                raise atari.missing_ale(name) from None
            raise
        return gym.spec(name)


def check_env_id(env_id: str) -> None:
    """Raise :class:`EnvError` with Gymnasium's suggestion when ``env_id`` names no environment."""
    if _resolve_callable(env_id) is not None:
        return
    name = _registered_id(env_id)
    try:
        _spec(name)
    except gym.error.Error as err:
        raise EnvError(f"unknown env id {env_id!r}: {err}") from None


def make_single_env(env_id: str, env_kwargs: dict[str, Any] | None = None, *, preprocessing: str = "auto",
                    **extra: Any) -> gym.Env:
    """One environment instance (used for evaluation videos and as the sync/async building block),
    inside the Atari stack when ``preprocessing`` says so (:func:`ppokit.control.envs.atari.applies`)."""
    kwargs = {**(env_kwargs or {}), **extra}
    factory = _resolve_callable(env_id)
    stack = atari.applies(env_id, preprocessing)
    if stack and factory is None:
        kwargs = atari.base_kwargs(env_id, kwargs)
    try:
        if factory is not None:
            env = factory(**kwargs)
            if not isinstance(env, gym.Env):
                raise EnvError(f"env id {env_id!r}: the factory returned {type(env).__name__}, not a gymnasium.Env")
        else:
            _spec(_registered_id(env_id))
            env = gym.make(_registered_id(env_id), **kwargs)
        return atari.wrap(env, env_id) if stack else env
    except gym.error.DependencyNotInstalled as err:
        raise EnvError(f"env {env_id!r} needs a package that is not installed: {err}") from None
    except gym.error.Error as err:
        raise EnvError(f"cannot make env {env_id!r}: {err}") from None
    except TypeError as err:
        raise EnvError(f"cannot make env {env_id!r} with env_kwargs {kwargs}: {err}") from None


class TrustsOwnActions:
    """A batched action space whose ``contains`` is True at once for ``passing``, the array the
    rollout collector is handing to ``step`` (its sampler makes valid actions by construction);
    any other value is checked as the space checks it. Gymnasium's batched envs (CartPole's) assert
    ``action_space.contains`` on every step, a fifth of the step's cost for a few envs."""

    passing: Any = None

    def contains(self, x: Any) -> bool:
        return x is self.passing or bool(super().contains(x))  # type: ignore[misc]


class _TrustingMultiDiscrete(TrustsOwnActions, spaces.MultiDiscrete):
    pass


class _TrustingBox(TrustsOwnActions, spaces.Box):
    pass


def trust_own_actions(env: gym.vector.VectorEnv) -> gym.vector.VectorEnv:
    """``env`` with its action space (MultiDiscrete or Box) made a :class:`TrustsOwnActions`."""
    space = env.action_space
    kind = {spaces.MultiDiscrete: _TrustingMultiDiscrete, spaces.Box: _TrustingBox}.get(type(space))
    if kind is not None:
        trusting: spaces.Space[Any] = object.__new__(kind)
        trusting.__dict__.update(space.__dict__)  # the same space, its generator included
        env.action_space = trusting
    return env


def make_vector_env(
    env_id: str,
    num_envs: int,
    env_kwargs: dict[str, Any] | None = None,
    vectorization: str = "auto",
    render_mode: str | None = None,
    preprocessing: str = "auto",
) -> gym.vector.VectorEnv:
    """A Gymnasium vector env with next-step autoreset.

    ``vectorization='auto'`` uses the env's native vectorised implementation where it registers one
    (CartPole's numpy-batched env steps many envs in one call; ppokit steps a few of them with
    :mod:`ppokit.envs.cartpole_vector`, the same env with a cheaper step), else runs the envs in-process
    (``sync``); ``async`` runs each in its own worker process; ``envpool`` steps them in EnvPool's C++
    threads (:mod:`ppokit.control.envs.envpool_env`). ``preprocessing``: see ``ControlConfig.env_preprocessing``.
    """
    if vectorization == "envpool":
        from ppokit.control.envs.envpool_env import EnvPoolVectorEnv

        if render_mode is not None:
            raise EnvError("vectorization 'envpool' does not render; record videos with a Gymnasium env")
        return EnvPoolVectorEnv(env_id, num_envs, env_kwargs, preprocessing)
    check_env_id(env_id)
    kwargs = dict(env_kwargs or {})
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    factory = _resolve_callable(env_id)
    stack = atari.applies(env_id, preprocessing)
    # ale-py's own vector env (its entry point) preprocesses in C++ its own way; ppokit's stack is
    # Gymnasium's wrappers, and 'none' means raw frames, so ale-py ids always take the sync path.
    if factory is None and vectorization == "auto" and not stack and not atari.is_atari_id(env_id):
        spec = gym.spec(_registered_id(env_id))
        if spec.vector_entry_point == cartpole_vector.GYMNASIUM_ENTRY_POINT and cartpole_vector.stands_in():
            # The same env, bit for bit, with a step that costs under half for a few envs.
            spec = dataclasses.replace(spec, vector_entry_point=cartpole_vector.ENTRY_POINT)
        if spec.vector_entry_point is not None:
            try:
                return trust_own_actions(gym.make_vec(spec, num_envs=num_envs,
                                                      vectorization_mode="vector_entry_point", **kwargs))
            except gym.error.Error as err:
                raise EnvError(f"cannot make env {env_id!r}: {err}") from None
            except TypeError as err:
                raise EnvError(f"cannot make env {env_id!r} with env_kwargs {kwargs}: {err}") from None
    fns = [lambda: make_single_env(env_id, kwargs, preprocessing=preprocessing) for _ in range(num_envs)]
    # Build one env up front so construction errors surface here, in this process, with a message.
    make_single_env(env_id, kwargs, preprocessing=preprocessing).close()
    if vectorization == "async":
        worker_fns = [lambda: _in_worker(env_id, kwargs, preprocessing) for _ in range(num_envs)]
        return ReportingAsyncVectorEnv(worker_fns, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    return gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)


def check_spaces(observation_space: spaces.Space, action_space: spaces.Space, env_id: str) -> None:
    if not isinstance(observation_space, spaces.Box):
        raise EnvError(
            f"env {env_id!r}: observation space {observation_space} is not supported "
            "(ppokit handles Box observations; flatten Dict/Tuple spaces with a wrapper)"
        )
    simple = (spaces.Discrete, spaces.Box, spaces.MultiDiscrete)
    parts = (list(action_space.spaces.values()) if isinstance(action_space, spaces.Dict) else
             list(action_space.spaces) if isinstance(action_space, spaces.Tuple) else [action_space])
    if not parts or not all(isinstance(p, simple) for p in parts):
        raise EnvError(
            f"env {env_id!r}: action space {action_space} is not supported "
            "(ppokit handles Discrete, Box and MultiDiscrete actions, and Tuples or Dicts of them)"
        )


def _in_worker(env_id: str, kwargs: dict[str, Any], preprocessing: str = "auto") -> gym.Env:
    """Build an env inside an async worker process, deaf to Ctrl-C.

    Ctrl-C reaches every process of the terminal's group; the trainer handles it in the main process
    (finish the update, checkpoint), which needs the workers alive until it is done.
    """
    from ppokit.control.envs.contract import FirstAnswersChecked

    if multiprocessing.parent_process() is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return FirstAnswersChecked(make_single_env(env_id, kwargs, preprocessing=preprocessing), env_id)


class ReportingAsyncVectorEnv(gym.vector.AsyncVectorEnv):
    """Gymnasium's AsyncVectorEnv, but a failing or dead worker raises :class:`EnvError` naming the
    env index and the worker's error, instead of a bare exception of the worker's type."""

    def _raise_if_errors(self, successes: Any) -> None:
        successes = list(successes)
        if all(successes):
            return
        failures = []
        for _ in range(len(successes) - sum(successes)):
            index, exctype, value, trace = self.error_queue.get()
            self.parent_pipes[index].close()
            self.parent_pipes[index] = None  # type: ignore[call-overload]  # gymnasium's own mark of a closed pipe
            failures.append((index, exctype, value, trace))
        self._state = gym.vector.async_vector_env.AsyncState.DEFAULT
        index, exctype, value, trace = min(failures, key=lambda f: f[0])
        if issubclass(exctype, EnvError):  # a one-line account already (the Gymnasium API check)
            raise EnvError(f"environment worker {index} (of {self.num_envs}): {value}")
        where = _last_frame(trace)
        others = f" ({len(failures) - 1} other worker(s) failed too)" if len(failures) > 1 else ""
        raise EnvError(
            f"environment worker {index} (of {self.num_envs}) failed: {exctype.__name__}: {value}"
            f"{f' at {where}' if where else ''}{others}"
        )

    def _dead_worker(self, during: str) -> EnvError:
        dead = []
        for index, process in enumerate(self.processes):
            process.join(timeout=1.0)
            if not process.is_alive():
                dead.append(f"{index} (exit code {process.exitcode})")
                if self.parent_pipes[index] is not None:
                    self.parent_pipes[index].close()
                    self.parent_pipes[index] = None  # type: ignore[call-overload]  # gymnasium's own mark of a closed pipe
        # Nothing is pending any more; lets close() shut the live workers down instead of waiting.
        self._state = gym.vector.async_vector_env.AsyncState.DEFAULT
        named = ", ".join(dead) if dead else "unknown"
        return EnvError(f"environment worker {named} of {self.num_envs} died during {during} "
                        "(killed, out of memory, or crashed in native code)")

    def step(self, actions: Any) -> Any:
        try:
            return super().step(actions)
        except (EOFError, BrokenPipeError, ConnectionResetError):
            raise self._dead_worker("step") from None

    def reset(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().reset(*args, **kwargs)
        except (EOFError, BrokenPipeError, ConnectionResetError):
            raise self._dead_worker("reset") from None


def _last_frame(trace: str) -> str:
    """``file:line`` of the innermost frame of a formatted traceback."""
    frames = [line.strip() for line in trace.splitlines() if line.strip().startswith("File ")]
    if not frames:
        return ""
    parts = frames[-1].split(",")
    try:
        file = parts[0].split('"')[1]
        return f"{file}:{parts[1].split()[-1]}"
    except IndexError:
        return ""
