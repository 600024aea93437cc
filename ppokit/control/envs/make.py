"""Building vector environments from an env id, with clear errors for ids that do not exist."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import multiprocessing
import shlex
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym
from gymnasium import spaces

from ppokit.control.envs import atari
from ppokit.control.envs.contract import foreign_env_hint
from ppokit.envs import cartpole_vector
from ppokit.errors import ConfigError, EnvError, UntrustedCodeError
from ppokit.imports import import_user_module


def _resolve_callable(env_id: str) -> Callable[..., gym.Env] | None:
    """For ``module:EnvClass`` return the class (or factory); None when the id is a registered one."""
    if ":" not in env_id:
        return None
    module_name, attr = env_id.rsplit(":", 1)
    if not module_name or not attr or module_name.startswith(".") or not all(
            part.isidentifier() for part in module_name.split(".")):
        raise EnvError(f"env id {env_id!r}: expected a registered id (CartPole-v1) or 'package.module:EnvClass'")
    try:
        module = import_user_module(module_name)
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


#: Id prefixes of envs that a package registers when it is imported, and that package: an id that is
#: not registered yet is then made as ``package:id`` (Gymnasium imports the package first).
PACKAGE_OF_IDS: tuple[tuple[str, str], ...] = (
    ("MiniGrid-", "minigrid"), ("BabyAI-", "minigrid"),
    ("highway-", "highway_env"), ("merge-", "highway_env"), ("roundabout-", "highway_env"),
    ("parking-", "highway_env"), ("intersection-", "highway_env"), ("racetrack-", "highway_env"),
    ("exit-", "highway_env"), ("u-turn-", "highway_env"), ("two-way-", "highway_env"), ("lane-keeping-", "highway_env"),
    ("Fetch", "gymnasium_robotics"), ("HandReach", "gymnasium_robotics"), ("HandManipulate", "gymnasium_robotics"),
    ("AntMaze_", "gymnasium_robotics"), ("PointMaze_", "gymnasium_robotics"), ("AdroitHand", "gymnasium_robotics"),
    ("FrankaKitchen", "gymnasium_robotics"),
    ("procgen-", "procgen_gym"), ("MetaDrive", "metadrive"), ("flappy-bird", "flappy_bird_gymnasium"),
    ("FlappyBird", "flappy_bird_gymnasium"), ("Sokoban", "gym_sokoban"), ("miniworld-", "miniworld"),
    ("MiniWorld-", "miniworld"), ("panda-", "panda_gym"), ("Panda", "panda_gym"), ("CarlaEnv", "carla_gym"),
)


def package_hint(env_id: str) -> str:
    """For an unregistered id that a known package registers on import: how to name it so it is made."""
    if ":" in env_id:
        return ""
    package = next((pkg for prefix, pkg in PACKAGE_OF_IDS if env_id.startswith(prefix)), None)
    if package is None:
        return ""
    if importlib.util.find_spec(package) is None:
        return f"; ids like it come from the package {package!r} (not installed): install it, then pass {package}:{env_id}"
    return f"; {package!r} registers it when imported: pass {package}:{env_id}"


def check_env_id(env_id: str) -> None:
    """Raise :class:`EnvError` with Gymnasium's suggestion when ``env_id`` names no environment, and
    the ``package:id`` form when a known package registers ids like it."""
    if _resolve_callable(env_id) is not None:
        return
    name = _registered_id(env_id)
    try:
        _spec(name)
    except gym.error.Error as err:
        raise EnvError(f"unknown env id {env_id!r}: {str(err).rstrip('.')}{package_hint(env_id)}") from None


# ---------------------------------------------------------------- wrappers named in the config

#: The module prefix of Gymnasium's own wrappers: naming one runs no code the user did not install
#: with Gymnasium, so a saved file may name it without consent; any other module needs it.
GYMNASIUM_MODULES = "gymnasium."


def parse_wrappers(entries: Sequence[Any], where: str = "env_wrappers") -> list[tuple[str, dict[str, Any]]]:
    """``env_wrappers`` as ``(module:Name, kwargs)`` pairs: each entry is ``'module:Name'`` or a one-key
    mapping ``{'module:Name': {kwargs}}``."""
    parsed = []
    for i, entry in enumerate(entries):
        name: Any
        kwargs: Any
        if isinstance(entry, str):
            name, kwargs = entry, {}
        elif isinstance(entry, Mapping) and len(entry) == 1:
            name, kwargs = next(iter(entry.items()))
            kwargs = {} if kwargs is None else kwargs
        else:
            raise ConfigError(f"{where}[{i}]: {entry!r}: expected 'module:Wrapper' or {{'module:Wrapper': {{kwargs}}}}")
        module, _, attr = str(name).partition(":")
        if not module or not attr or not isinstance(kwargs, Mapping):
            raise ConfigError(f"{where}[{i}]: {entry!r}: expected 'module:Wrapper' or {{'module:Wrapper': {{kwargs}}}}")
        parsed.append((str(name), dict(kwargs)))
    return parsed


def wrapper_imports(entries: Sequence[Any]) -> list[str]:
    """The wrappers of ``entries`` outside Gymnasium's own modules: code, which a saved file may name only
    with the user's consent."""
    return [name for name, _ in parse_wrappers(entries) if not name.startswith(GYMNASIUM_MODULES)]


def apply_wrappers(env: gym.Env, entries: Sequence[Any]) -> gym.Env:
    """``env`` inside the wrappers ``entries`` names, the first innermost."""
    for name, kwargs in parse_wrappers(entries):
        module_name, _, attr = name.partition(":")
        try:
            wrapper = getattr(import_user_module(module_name), attr, None)
        except ImportError as err:
            raise EnvError(f"env_wrappers: {name!r}: cannot import module {module_name!r} ({err})") from None
        if not callable(wrapper):
            raise EnvError(f"env_wrappers: {name!r}: module {module_name!r} has no wrapper {attr!r}")
        try:
            env = wrapper(env, **kwargs)
        except TypeError as err:
            raise EnvError(f"env_wrappers: {name!r} with {kwargs}: {err}") from None
        if not isinstance(env, gym.Env):
            raise EnvError(f"env_wrappers: {name!r} returned {type(env).__name__}, not a gymnasium.Env")
    return env


# ---------------------------------------------------------------- Gymnasium's EnvSpec, as saved

def spec_from_dict(data: Mapping[str, Any]) -> gym.envs.registration.EnvSpec:
    """The EnvSpec ``env_spec`` records (the JSON of ``EnvSpec.to_json``)."""
    try:
        return gym.envs.registration.EnvSpec.from_json(json.dumps(dict(data)))
    except (ValueError, TypeError) as err:
        raise EnvError(f"env_spec: not a Gymnasium EnvSpec ({err})") from None


def spec_imports(data: Mapping[str, Any]) -> list[str]:
    """What making the saved spec ``data`` would import beyond registered envs and Gymnasium's own
    wrappers: its entry point when its id is not registered with that entry point, and every wrapper
    outside ``gymnasium.``. Looks at the names only; imports nothing (ale-py ids aside, as for an id)."""
    spec = spec_from_dict(data)
    found = []
    try:
        registered = _spec(spec.id).entry_point
    except (gym.error.Error, EnvError):
        registered = None
    if registered != spec.entry_point:
        found.append(str(spec.entry_point))
    found += [str(w.entry_point) for w in spec.additional_wrappers
              if not str(w.entry_point).startswith(GYMNASIUM_MODULES)]
    return found


def consent_flags(env_id: str, env_spec: Mapping[str, Any] | None, wrappers: Sequence[Any]) -> str:
    """The flags a printed ``ppokit resume`` command needs to make the run's envs from its saved files:
    ``--trust`` for wrappers outside Gymnasium, ``--env ID`` for an id or spec that imports a module."""
    if wrapper_imports(wrappers):
        return " --trust"
    spec = env_spec if env_spec and env_spec.get("id") == env_id else None
    if (spec_imports(spec) if spec is not None else env_import(env_id)):
        return f" --env {shlex.quote(env_id)}"
    return ""


def make_from_spec(data: Mapping[str, Any], wrappers: Sequence[Any] = (), **extra: Any) -> gym.Env:
    """One env, as ``gym.make`` makes it from the saved spec (its time limit and wrappers included)."""
    spec = spec_from_dict(data)
    for entry_point in [spec.entry_point, *(w.entry_point for w in spec.additional_wrappers)]:
        module = str(entry_point).partition(":")[0]
        if module:  # the one import rule: the working directory too
            try:
                import_user_module(module)
            except ImportError as err:
                raise EnvError(f"env {spec.id!r}: cannot import module {module!r} ({err})") from None
    try:
        env = gym.make(spec, **extra)
    except gym.error.DependencyNotInstalled as err:
        raise EnvError(f"env {spec.id!r} needs a package that is not installed: {err}") from None
    except (gym.error.Error, TypeError, ValueError) as err:
        raise EnvError(f"cannot make env {spec.id!r} from its saved spec: {err}") from None
    return apply_wrappers(env, wrappers)


def make_single_env(env_id: str, env_kwargs: dict[str, Any] | None = None, *, preprocessing: str = "auto",
                    wrappers: Sequence[Any] = (), **extra: Any) -> gym.Env:
    """One environment instance (used for evaluation videos and as the sync/async building block),
    inside the Atari stack when ``preprocessing`` says so (:func:`ppokit.control.envs.atari.applies`),
    then inside ``wrappers`` (``ControlConfig.env_wrappers``)."""
    kwargs = {**(env_kwargs or {}), **extra}
    factory = _resolve_callable(env_id)
    stack = atari.applies(env_id, preprocessing)
    if stack and factory is None:
        kwargs = atari.base_kwargs(env_id, kwargs)
    try:
        if factory is not None:
            env = factory(**kwargs)
            if not isinstance(env, gym.Env):
                raise EnvError(f"env id {env_id!r}: the factory returned {type(env).__name__}, not a gymnasium.Env"
                               f"{foreign_env_hint(env, env_id)}")
        else:
            _spec(_registered_id(env_id))
            env = gym.make(_registered_id(env_id), **kwargs)
        return apply_wrappers(atari.wrap(env, env_id) if stack else env, wrappers)
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
    wrappers: Sequence[Any] = (),
) -> gym.vector.VectorEnv:
    """A Gymnasium vector env with next-step autoreset.

    ``vectorization='auto'`` uses the env's native vectorised implementation where it registers one
    (CartPole's numpy-batched env steps many envs in one call; ppokit steps a few of them with
    :mod:`ppokit.envs.cartpole_vector`, the same env with a cheaper step), else runs the envs in-process
    (``sync``); ``async`` runs each in its own worker process; ``envpool`` steps them in EnvPool's C++
    threads (:mod:`ppokit.control.envs.envpool_env`). ``preprocessing``: see ``ControlConfig.env_preprocessing``;
    ``wrappers``: ``ControlConfig.env_wrappers``, around each env (so never a native vector env).
    """
    if vectorization == "envpool":
        from ppokit.control.envs.envpool_env import EnvPoolVectorEnv

        if wrappers:
            raise EnvError("vectorization 'envpool' steps its envs in C++: env_wrappers cannot wrap them")
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
    if factory is None and vectorization == "auto" and not stack and not wrappers and not atari.is_atari_id(env_id):
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
    wrappers = list(wrappers)
    fns = [lambda: make_single_env(env_id, kwargs, preprocessing=preprocessing, wrappers=wrappers)
           for _ in range(num_envs)]
    # Build one env up front so construction errors surface here, in this process, with a message.
    make_single_env(env_id, kwargs, preprocessing=preprocessing, wrappers=wrappers).close()
    if vectorization == "async":
        worker_fns = [lambda: _in_worker(env_id, kwargs, preprocessing, wrappers) for _ in range(num_envs)]
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


def _in_worker(env_id: str, kwargs: dict[str, Any], preprocessing: str = "auto", wrappers: Sequence[Any] = ()) -> gym.Env:
    """Build an env inside an async worker process, deaf to Ctrl-C.

    Ctrl-C reaches every process of the terminal's group; the trainer handles it in the main process
    (finish the update, checkpoint), which needs the workers alive until it is done.
    """
    from ppokit.control.envs.contract import FirstAnswersChecked

    if multiprocessing.parent_process() is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return FirstAnswersChecked(make_single_env(env_id, kwargs, preprocessing=preprocessing, wrappers=wrappers), env_id)


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
