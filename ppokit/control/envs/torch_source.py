"""Where a run's envs come from, torch envs included: the choice the agent makes once, before any env exists.

:class:`~ppokit.control.envs.source.EnvSource` makes Gymnasium envs from ids and env objects;
:class:`TorchEnvSource` is its counterpart for :class:`~ppokit.control.envs.torch_env.TorchVecEnv` envs:
an env object given in code (trained in place; e.g. an Isaac Lab env behind an adapter), or a class,
given or named by a ``'module:Class'`` id, that ppokit calls as ``cls(num_envs=N, device=D,
**env_kwargs)`` (ppokit's reference envs, or your own).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ppokit import runtime
from ppokit.control.config import ControlConfig
from ppokit.control.envs.make import _resolve_callable
from ppokit.control.envs.source import EnvSource
from ppokit.control.envs.torch_env import check_torch_env, is_torch_env, is_torch_env_class
from ppokit.errors import EnvError


def _label(obj: Any) -> str:
    """``module:Class`` of a torch env class (of an instance's class), which ``PPO.load(..., trust=True)``
    can make again; ``<object Name>`` for a class defined in a script or a function."""
    target = obj if isinstance(obj, type) else type(obj)
    name, module = target.__qualname__, target.__module__
    if "<" in name or module == "__main__":
        return f"<object {name}>"
    return f"{module}:{name}"


class TorchEnvSource(EnvSource):
    """Makes (or hands over) the torch envs of a run."""

    def __init__(self, env_id: str, env_kwargs: dict[str, Any], *, trusted: bool = True, source: str = "config",
                 obj: Any = None, device: str = "cpu") -> None:
        super().__init__(env_id, env_kwargs, trusted=trusted, source=source)
        self.obj = obj
        #: The config's device: where the envs ppokit makes run.
        self.device = device

    @property
    def fixed_num_envs(self) -> int | None:
        return int(self.obj.num_envs) if is_torch_env(self.obj) else None

    @property
    def can_make(self) -> bool:
        """Whether more envs can be made (for evaluation): not when only an env object was given,
        whose constructor arguments ppokit does not know (a simulator may allow one per process anyway)."""
        return not is_torch_env(self.obj)

    def _class(self) -> Any:
        self._check_trusted()
        if isinstance(self.obj, type):
            return self.obj
        target = _resolve_callable(self.env_id)
        if not is_torch_env_class(target):
            raise EnvError(f"env id {self.env_id!r} does not name a torch env class (one whose constructor takes "
                           "num_envs and device)")
        return target

    def make(self, num_envs: int) -> Any:
        """``num_envs`` new envs on the config's device."""
        kwargs = {"num_envs": num_envs, "device": str(runtime.resolve_device(self.device)), **self.env_kwargs}
        try:
            env = self._class()(**kwargs)
        except TypeError as err:
            raise EnvError(f"cannot make torch env {self.env_id!r} with {kwargs}: {err}") from None
        check_torch_env(env)
        return env

    def training(self, num_envs: int, vectorization: str = "auto") -> Any:
        """The env object given, checked, or ``num_envs`` new envs (``vectorization`` does not apply)."""
        self._check_trusted()
        if is_torch_env(self.obj):
            check_torch_env(self.obj)
            return self.obj
        return self.make(num_envs)

    def evaluation(self, num_envs: int, vectorization: str = "auto") -> Any:
        if not self.can_make:
            raise EnvError("evaluation envs cannot be made from a torch env object; pass its class (env=MyEnv, "
                           "env_kwargs=...) or evaluate(env=...)")
        return self.make(num_envs)

    def single(self, **extra: Any) -> Any:
        raise EnvError("a torch env has no single-env form (videos need one); use a Gymnasium env")


def given(obj: Any, env_kwargs: dict[str, Any]) -> EnvSource:
    """For ``PPO(config, env=obj)``: a torch env object or class, an id, or what EnvSource takes."""
    if is_torch_env(obj) or is_torch_env_class(obj):
        return TorchEnvSource(_label(obj), env_kwargs, obj=obj)
    if isinstance(obj, str) and _names_torch_class(obj):
        return TorchEnvSource(obj, env_kwargs)
    return EnvSource.given(obj, env_kwargs)


def given_overrides(source: EnvSource, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The config fields an env object sets: its id, its number of envs, and a torch env's device
    (``overrides`` may name another, which the env's check then refuses)."""
    own: dict[str, Any] = {"env_id": source.env_id, "env_spec": source.spec}
    if is_torch_env(source.obj):
        own["device"] = str(source.obj.device)
    fixed = {"num_envs": source.fixed_num_envs} if source.fixed_num_envs is not None else {}
    return {**own, **overrides, **fixed}


def _names_torch_class(env_id: str) -> bool:
    return ":" in env_id and is_torch_env_class(_resolve_callable(env_id))


def for_config(config: ControlConfig, source: EnvSource | None = None, *, trusted: bool = True,
               where: str = "config", torch_env: bool | None = None) -> EnvSource:
    """The run's env source: ``source`` (from :func:`given`) bound to the config's device, else one for
    ``config.env_id``. Whether that id names a torch env class is looked up when the config is trusted;
    a saved one (``trusted`` False) says so itself (``torch_env``), since looking would import its module."""
    if source is None:
        if torch_env is None:
            torch_env = trusted and _names_torch_class(config.env_id)
        kind = TorchEnvSource if torch_env else EnvSource
        source = kind(config.env_id, config.env_kwargs, trusted=trusted, source=where)
    if isinstance(source, TorchEnvSource):
        source.device = config.device
    else:  # the Atari stack or none, for the envs made from an id (ppokit.control.envs.atari)
        source.preprocessing = config.env_preprocessing
        source.wrappers = list(config.env_wrappers)
        # The saved spec of an env object rebuilds it, unless another env is named now (env_id).
        if source.obj is None and config.env_spec and config.env_spec.get("id") == config.env_id:
            source.spec = dict(config.env_spec)
    return source
