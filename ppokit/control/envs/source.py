"""Where a run's environments come from: an env id, or an env object given in code.

An id is a registered Gymnasium id (``CartPole-v1``) or ``'module:EnvClass'``; in Python, ``PPO(config,
env=...)`` also takes what Stable-Baselines3 users pass: an env class or factory function (called once
per parallel env, with ``env_kwargs``), a ``gymnasium.Env`` instance (one env, trained in place; its
evaluation envs are deep copies taken before training touched it), or a vector env (trained in place;
evaluated on copies of its first env when it is a ``SyncVectorEnv``).

An id read back from a saved file that would import a module is only made with the user's consent
(``trusted``); see :class:`~ppokit.errors.UntrustedCodeError`.

Envs made from an id get the preprocessing ``preprocessing`` names (``ControlConfig.env_preprocessing``:
the Atari stack of :mod:`ppokit.control.envs.atari` for ale-py ids); training and evaluation envs get the
same stack, so the policy is evaluated on what it was trained on, and an Atari evaluation scores whole
games through the env's own episode statistics. Env objects are used as given.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

import gymnasium as gym

from ppokit.control.envs.contract import check_first_answers
from ppokit.control.envs.make import make_single_env, make_vector_env, require_no_import
from ppokit.errors import EnvError


def _label(obj: Any) -> str:
    """An env id for the run's files: ``module:name`` of the class or function (of an instance's
    class), which ``PPO.load(..., trust=True)`` can make again; ``<object name>`` when there is none."""
    if isinstance(obj, gym.vector.SyncVectorEnv):
        target: Any = type(obj.envs[0].unwrapped)
    elif isinstance(obj, gym.Env):
        target = type(obj.unwrapped)
    elif isinstance(obj, type) or inspect.isfunction(obj):
        target = obj
    else:  # another vector env, a partial, a callable object: nothing to make again by name
        return f"<object {type(obj).__qualname__}>"
    name, module = target.__qualname__, target.__module__
    if "<" in name or module == "__main__":  # defined inside a function, or in a script
        return f"<object {name}>"
    return f"{module}:{name}"


class EnvSource:
    """Makes the training, evaluation and video envs of a run."""

    def __init__(self, env_id: str, env_kwargs: dict[str, Any], *, trusted: bool = True, source: str = "config",
                 obj: Any = None, preprocessing: str = "auto") -> None:
        self.env_id, self.env_kwargs = env_id, dict(env_kwargs)
        self.preprocessing = preprocessing
        self.trusted, self.source = trusted, source
        self.obj = obj
        self._prototype: gym.Env | None = None
        if isinstance(obj, gym.vector.VectorEnv):
            mode = obj.metadata.get("autoreset_mode")
            if mode is not None and mode != gym.vector.AutoresetMode.NEXT_STEP:
                raise EnvError(f"the vector env given resets with {mode}; ppokit needs Gymnasium's default, "
                               "AutoresetMode.NEXT_STEP")
            if isinstance(obj, gym.vector.SyncVectorEnv):
                self._prototype = copy.deepcopy(obj.envs[0])
        elif isinstance(obj, gym.Env):
            self._prototype = copy.deepcopy(obj)
        elif obj is not None and not callable(obj):
            raise EnvError(f"env={obj!r}: expected an env id, a gymnasium.Env, a vector env, or an env class or factory")

    @classmethod
    def given(cls, obj: Any, env_kwargs: dict[str, Any], preprocessing: str = "auto") -> EnvSource:
        """For ``PPO(config, env=obj)``: a string is an id; anything else an env object."""
        if isinstance(obj, str):
            return cls(obj, env_kwargs, preprocessing=preprocessing)
        return cls(_label(obj), env_kwargs, obj=obj, preprocessing=preprocessing)

    @property
    def can_make(self) -> bool:
        """Whether more envs can be made (for evaluation): Gymnasium envs always can, from the id, the
        factory or copies of the object given."""
        return True

    @property
    def fixed_num_envs(self) -> int | None:
        """The number of envs an env object brings (an instance is one); None when any number can be made."""
        if isinstance(self.obj, gym.vector.VectorEnv):
            return int(self.obj.num_envs)
        if isinstance(self.obj, gym.Env):
            return 1
        return None

    def _check_trusted(self) -> None:
        if self.obj is None and not self.trusted:
            require_no_import(self.env_id, self.env_kwargs, self.source)
        if self.obj is None and self.env_id.startswith("<object"):
            raise EnvError(f"{self.source}: the run was trained on an env object given in code ({self.env_id}); "
                           "pass it again (PPO.load(path, env=...))")

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
        if factory is None and self.obj is None:
            return check_first_answers(make_vector_env(self.env_id, num_envs, self.env_kwargs, vectorization,
                                                       preprocessing=self.preprocessing), self.env_id)
        make = (lambda: self._new()) if factory is None else (lambda: self._call(factory))
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
        return make_single_env(self.env_id, self.env_kwargs, preprocessing=self.preprocessing, **extra)

    def _call(self, factory: Callable[..., gym.Env], **extra: Any) -> gym.Env:
        env = factory(**{**self.env_kwargs, **extra})
        if not isinstance(env, gym.Env):
            raise EnvError(f"the env factory {self.env_id} returned {type(env).__name__}, not a gymnasium.Env")
        return env

    def _new(self) -> gym.Env:
        if self._prototype is None:
            raise EnvError("evaluation needs envs it can make: this vector env is not a SyncVectorEnv; pass an env "
                           "class or factory instead")
        return copy.deepcopy(self._prototype)
