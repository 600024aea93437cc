"""Where a run's environments come from: an env id, or an env object given in code.

An id is a registered Gymnasium id (``CartPole-v1``) or ``'module:EnvClass'``; in Python, ``PPO(config,
env=...)`` also takes what Stable-Baselines3 users pass: an env class or factory function (called once
per parallel env, with ``env_kwargs``), a ``gymnasium.Env`` instance (one env, trained in place; its
evaluation envs are deep copies taken before training touched it), or a vector env (trained in place;
evaluated on copies of its first env: a ``SyncVectorEnv``'s, an ``AsyncVectorEnv``'s made by its first
factory, or any other's made from its spec; one ppokit cannot make evaluation envs for is refused before
training unless evaluation is off).

What the run's files record rebuilds the env exactly, or says it cannot: an env object whose envs all
carry the same Gymnasium ``EnvSpec`` (``gym.make`` sets it, wrappers applied after ``make`` included) is
recorded as that spec (``env_spec``) and remade with ``gym.make(spec)``, its time limit and wrappers
included; an importable class or factory by its ``module:name``; anything else (a wrapper that does not
record its arguments or takes a lambda, an env built by hand, a lambda factory, a class in a script) as
``<object Name>``, and evaluating or resuming the saved run asks for the object again.

An id or spec read back from a saved file that would import a module is only made with the user's
consent (``trusted``); see :class:`~ppokit.errors.UntrustedCodeError`.

Envs made from an id get the preprocessing ``preprocessing`` names (``ControlConfig.env_preprocessing``:
the Atari stack of :mod:`ppokit.control.envs.atari` for ale-py ids), then ``ControlConfig.env_wrappers``;
training and evaluation envs get the same stack, so the policy is evaluated on what it was trained on,
and an Atari evaluation scores whole games through the env's own episode statistics. Env objects are
used as given.
"""

from __future__ import annotations

import copy
import inspect
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym

from ppokit.control.envs.contract import check_first_answers, check_vector_api, foreign_env_hint
from ppokit.control.envs.make import (
    apply_wrappers,
    make_from_spec,
    make_single_env,
    make_vector_env,
    require_no_import,
    spec_imports,
    wrapper_imports,
)
from ppokit.errors import EnvError, UntrustedCodeError

#: Vector wrappers that only watch (they change no observation, reward or action): evaluation envs
#: made without them are the same env.
WATCHING_VECTOR_WRAPPERS: tuple[type, ...] = (gym.wrappers.vector.RecordEpisodeStatistics,)


def _importable(target: Any) -> str | None:
    """``module:name`` of a class or function that can be imported by that name; None for one defined
    in a function or a script."""
    name, module = target.__qualname__, target.__module__
    if "<" in name or module == "__main__":
        return None
    return f"{module}:{name}"


def _entry_importable(entry_point: Any) -> bool:
    """Whether ``gym.make`` can load ``entry_point`` again: a ``module:Name`` outside a script whose
    module, if this process has it, holds ``Name`` (a wrapper class defined in a function or nested in
    another class records a name that is not there)."""
    if not isinstance(entry_point, str) or ":" not in entry_point:
        return False
    module_name, _, name = entry_point.partition(":")
    if module_name == "__main__" or "<" in entry_point:
        return False
    module = sys.modules.get(module_name)
    return module is None or hasattr(module, name)


def saved_spec(spec: gym.envs.registration.EnvSpec | None) -> dict[str, Any] | None:
    """``spec`` as JSON that ``gym.make`` rebuilds the same env from, or None when it cannot be: no spec
    (an env made without ``gym.make``), a callable entry point, a wrapper that does not record its
    arguments (not a ``RecordConstructorArgs``) or records ones that are not JSON (a lambda), or code in
    a script."""
    if spec is None or not _entry_importable(spec.entry_point):
        return None
    if any(w.kwargs is None or not _entry_importable(w.entry_point) for w in spec.additional_wrappers):
        return None
    try:
        data: dict[str, Any] = json.loads(spec.to_json())
    except (TypeError, ValueError):
        return None
    return data


def _vector_spec(spec: gym.envs.registration.EnvSpec | None) -> dict[str, Any] | None:
    """A single env's spec from the spec ``gym.make_vec`` gives its own vector env (its kwargs carry the
    vectorisation); None when it carries wrapper functions."""
    if spec is None:
        return None
    spec = copy.deepcopy(spec)
    kwargs = dict(spec.kwargs)
    for key in ("num_envs", "vectorization_mode", "vector_kwargs"):
        kwargs.pop(key, None)
    if kwargs.pop("wrappers", None):
        return None
    steps = kwargs.pop("max_episode_steps", spec.max_episode_steps)
    spec.kwargs, spec.max_episode_steps = kwargs, steps
    return saved_spec(spec)


def _sub_specs(obj: gym.vector.VectorEnv) -> list[Any]:
    if isinstance(obj, gym.vector.SyncVectorEnv):
        return [env.spec for env in obj.envs]
    try:
        return list(obj.get_attr("spec"))  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a worker that cannot answer: nothing to rebuild from
        return [None]


def describe(obj: Any) -> tuple[str, dict[str, Any] | None]:
    """What the run's files record of ``obj``: ``(env_id, env_spec)``. See the module's docs."""
    if isinstance(obj, gym.vector.VectorEnv):
        while type(obj) in WATCHING_VECTOR_WRAPPERS:
            obj = obj.env  # type: ignore[attr-defined]  # watches only: the env inside is the one to rebuild
        if isinstance(obj, (gym.vector.SyncVectorEnv, gym.vector.AsyncVectorEnv)):
            specs = [saved_spec(spec) for spec in _sub_specs(obj)]
            data = specs[0] if specs and all(s is not None and s == specs[0] for s in specs) else None
        else:  # a vector wrapper changes the env its spec describes; gym.make_vec's own vector envs
            data = None if isinstance(obj, gym.vector.VectorWrapper) else _vector_spec(getattr(obj, "spec", None))
        return (data["id"], data) if data else (f"<object {type(obj).__qualname__}>", None)
    if isinstance(obj, gym.Env):
        data = saved_spec(obj.spec)
        return (data["id"], data) if data else (f"<object {type(obj.unwrapped).__qualname__}>", None)
    if isinstance(obj, type) or inspect.isfunction(obj):
        return _importable(obj) or f"<object {obj.__qualname__}>", None
    # a partial, a callable object: nothing to make again by name
    return f"<object {type(obj).__qualname__}>", None


def given_for_evaluation(env: Any) -> gym.vector.VectorEnv:
    """An env passed to ``evaluate(env=...)``, checked like a training env object before it is played:
    a vector env's attributes now and its first answers when they come; one ``gymnasium.Env`` played
    in place as a vector env of one (as in training)."""
    label = describe(env)[0]
    if isinstance(env, gym.vector.VectorEnv):
        return check_first_answers(env, label)
    if isinstance(env, gym.Env):
        return check_first_answers(gym.vector.SyncVectorEnv(
            [lambda: env], autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP), label)
    raise EnvError(f"evaluate(env={label}): expected a Gymnasium vector env or gymnasium.Env{foreign_env_hint(env)}")


class EnvSource:
    """Makes the training, evaluation and video envs of a run."""

    def __init__(self, env_id: str, env_kwargs: dict[str, Any], *, trusted: bool = True, source: str = "config",
                 obj: Any = None, preprocessing: str = "auto", spec: dict[str, Any] | None = None,
                 wrappers: Sequence[Any] = ()) -> None:
        self.env_id, self.env_kwargs = env_id, dict(env_kwargs)
        self.preprocessing = preprocessing
        self.trusted, self.source = trusted, source
        self.obj = obj
        #: The saved EnvSpec the envs are made from (``ControlConfig.env_spec``), when no object is given.
        self.spec = spec
        #: ``ControlConfig.env_wrappers``, around every env ppokit makes.
        self.wrappers = list(wrappers)
        self._prototype: gym.Env | None = None
        self._first_factory: Callable[[], gym.Env] | None = None
        #: Why evaluation envs cannot be made (an env object ppokit cannot copy), or None.
        self.cannot_evaluate: str | None = None
        if isinstance(obj, gym.vector.VectorEnv):
            check_vector_api(obj, env_id)
            self._evaluation_from_vector(obj)
        elif isinstance(obj, gym.Env):
            self._prototype = copy.deepcopy(obj)
        elif obj is not None and not callable(obj):
            raise EnvError(f"env={obj!r}: expected an env id, a gymnasium.Env, a vector env, or an env class or factory"
                           f"{foreign_env_hint(obj)}")

    def _evaluation_from_vector(self, obj: gym.vector.VectorEnv) -> None:
        """How evaluation envs are made for the vector env ``obj``: copies of its first env."""
        kind, inner = type(obj).__name__, obj
        while isinstance(inner, gym.vector.VectorWrapper):
            if type(inner) not in WATCHING_VECTOR_WRAPPERS:
                self.cannot_evaluate = (f"the vector env is wrapped in {type(inner).__name__} (a VectorWrapper), which "
                                        "ppokit cannot put around evaluation envs")
                return
            inner = inner.env
        if isinstance(inner, gym.vector.SyncVectorEnv):
            self._prototype = copy.deepcopy(inner.envs[0])
        elif isinstance(inner, gym.vector.AsyncVectorEnv):
            self._first_factory = inner.env_fns[0]  # made on first need, in this process
        else:
            spec = _vector_spec(getattr(inner, "spec", None))
            if spec is None:
                self.cannot_evaluate = (f"the vector env {kind} is neither a SyncVectorEnv nor an AsyncVectorEnv "
                                        "and has no Gymnasium spec to make evaluation envs from")
            else:
                self._first_factory = lambda: make_from_spec(spec)

    @classmethod
    def given(cls, obj: Any, env_kwargs: dict[str, Any], preprocessing: str = "auto") -> EnvSource:
        """For ``PPO(config, env=obj)``: a string is an id; anything else an env object."""
        if isinstance(obj, str):
            return cls(obj, env_kwargs, preprocessing=preprocessing)
        env_id, spec = describe(obj)
        return cls(env_id, env_kwargs, obj=obj, preprocessing=preprocessing, spec=spec)

    @property
    def can_make(self) -> bool:
        """Whether more envs can be made (for evaluation): from the id, the spec, the factory, or copies
        of the object given."""
        return self.cannot_evaluate is None

    def require_evaluation(self) -> None:
        """Refuse, before training spends its budget, an env object ppokit cannot evaluate on; make the
        first evaluation env of a vector env now, so a factory that fails does so before training too."""
        if self.cannot_evaluate is not None:
            raise EnvError(f"{self.cannot_evaluate}: pass an env class or factory (env=...), apply the wrappers to "
                           "each env instead, or turn evaluation off (eval_episodes=0, eval_every=0)")
        self._ensure_prototype()

    @property
    def fixed_num_envs(self) -> int | None:
        """The number of envs an env object brings (an instance is one); None when any number can be made."""
        if isinstance(self.obj, gym.vector.VectorEnv):
            return int(self.obj.num_envs)
        if isinstance(self.obj, gym.Env):
            return 1
        return None

    def _check_trusted(self) -> None:
        if self.obj is None and self.env_id.startswith("<object"):
            raise EnvError(f"{self.source}: the run was trained on an env object given in code ({self.env_id}) that "
                           "its files cannot rebuild exactly; pass it again (PPO.load(path, env=...))")
        if isinstance(self.obj, (gym.Env, gym.vector.VectorEnv)) and self.wrappers:
            raise EnvError("env_wrappers wrap the envs ppokit makes; wrap the env object given in code yourself")
        if self.obj is not None or self.trusted:
            return
        if self.spec is not None:
            code = spec_imports(self.spec)
            if code:
                raise UntrustedCodeError(
                    f"{self.source} names the env {self.env_id!r} by a spec whose making would import "
                    f"{', '.join(repr(c) for c in code)}. ppokit imports nothing a saved file names unless you "
                    f"allow it: if you trust this file, pass --env {self.env_id} or --trust (in Python: "
                    "env_id=... or trust=True to PPO.load / PPO.resume)")
        else:
            require_no_import(self.env_id, self.env_kwargs, self.source)
        code = wrapper_imports(self.wrappers)
        if code:
            raise UntrustedCodeError(
                f"{self.source} names the env wrappers {', '.join(map(repr, code))} (outside gymnasium's own "
                "modules): ppokit imports nothing a saved file names unless you allow it: if you trust this file, "
                "pass --trust (in Python: trust=True to PPO.load / PPO.resume)")

    def _factory(self) -> Callable[..., gym.Env] | None:
        if self.obj is not None and not isinstance(self.obj, (gym.Env, gym.vector.VectorEnv)):
            return self.obj  # a class or factory
        return None

    def training(self, num_envs: int, vectorization: str) -> gym.vector.VectorEnv:
        """The training vector env: the given object itself, or ``num_envs`` new envs."""
        self._check_trusted()
        if isinstance(self.obj, gym.vector.VectorEnv):
            return check_first_answers(self.obj, self.env_id)
        if isinstance(self.obj, gym.Env):
            instance = self.obj
            return check_first_answers(gym.vector.SyncVectorEnv(
                [lambda: instance], autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP), self.env_id)
        return self.evaluation(num_envs, vectorization)

    def evaluation(self, num_envs: int, vectorization: str = "auto") -> gym.vector.VectorEnv:
        """``num_envs`` new envs, never the training ones."""
        self._check_trusted()
        factory = self._factory()
        if factory is None and self.obj is None and self.spec is None:
            return check_first_answers(make_vector_env(self.env_id, num_envs, self.env_kwargs, vectorization,
                                                       preprocessing=self.preprocessing, wrappers=self.wrappers),
                                       self.env_id)
        make: Callable[[], gym.Env]
        if factory is not None:
            make = lambda: self._call(factory)  # noqa: E731
        elif self.obj is None:
            spec, wrappers = self.spec, self.wrappers
            assert spec is not None
            make_from_spec(spec, wrappers).close()  # construction errors here, with a message
            make = lambda: make_from_spec(spec, wrappers)  # noqa: E731
        else:
            make = self._new
        fns = [make for _ in range(num_envs)]
        if vectorization == "envpool":
            raise EnvError(f"vectorization 'envpool' makes its envs from an id; {self.env_id} is an env object")
        if vectorization == "async":
            return gym.vector.AsyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
        return check_first_answers(gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP),
                                   self.env_id)

    def single(self, **extra: Any) -> gym.Env:
        """One new env (for videos: ``render_mode='rgb_array'``)."""
        self._check_trusted()
        factory = self._factory()
        if factory is not None:
            return self._call(factory, **extra)
        if self.obj is not None:
            if extra:
                raise EnvError(f"an env object cannot be remade with {extra}; pass an env class or factory instead")
            return self._new()
        if self.spec is not None:
            return make_from_spec(self.spec, self.wrappers, **extra)
        return make_single_env(self.env_id, self.env_kwargs, preprocessing=self.preprocessing,
                               wrappers=self.wrappers, **extra)

    def _call(self, factory: Callable[..., gym.Env], **extra: Any) -> gym.Env:
        env = factory(**{**self.env_kwargs, **extra})
        if not isinstance(env, gym.Env):
            raise EnvError(f"the env factory {self.env_id} returned {type(env).__name__}, not a gymnasium.Env"
                           f"{foreign_env_hint(env)}")
        return apply_wrappers(env, self.wrappers)

    def _ensure_prototype(self) -> None:
        if self._prototype is None and self._first_factory is not None:
            env = self._first_factory()
            if not isinstance(env, gym.Env):
                raise EnvError(f"the vector env's first factory returned {type(env).__name__}, not a gymnasium.Env")
            # A copy, so a factory that hands back one captured instance is never stepped twice at once.
            self._prototype = copy.deepcopy(env)

    def _new(self) -> gym.Env:
        self._ensure_prototype()
        if self._prototype is None:
            raise EnvError(f"evaluation needs envs it can make: {self.cannot_evaluate}; pass an env class or factory "
                           "instead")
        return copy.deepcopy(self._prototype)
