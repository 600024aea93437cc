"""The search space of ``ppokit tune``: which :class:`ControlConfig` fields a study samples, and how.

A space maps config fields to entries, in YAML::

    learning_rate: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
    num_epochs: {type: int, low: 3, high: 10}
    hidden_sizes: {type: categorical, choices: [[64, 64], [128, 128]]}
    gamma: 0.99        # a plain value fixes the field

A file's entries replace or add to those of :func:`default_space`; ``default_space: false`` at its
top level starts from an empty space instead. Every entry is checked when the file is read: its
field, its keys, its bounds, and that each bound or choice makes a valid config with the base one.

Imports no torch, gymnasium or Optuna: a trial passes itself in to :meth:`Param.suggest`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppokit.configuration import coerce, field_types, from_mapping, load_yaml, nearest_divisor, suggest, to_dict
from ppokit.control.config import ControlConfig
from ppokit.errors import ConfigError

#: The keys each entry type needs, and those it may have.
KINDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "float": (frozenset({"low", "high"}), frozenset({"log", "step"})),
    "int": (frozenset({"low", "high"}), frozenset({"log", "step"})),
    "categorical": (frozenset({"choices"}), frozenset()),
}

#: Fields a study does not search: ``ppokit tune`` sets them itself (``--total-steps``, ``--seed``,
#: ``--out``), or they change only how a run is watched.
NOT_SEARCHED = frozenset({"env_id", "total_steps", "seed", "run_dir", "progress", "tensorboard"})

#: Rollout lengths the default space chooses among (powers of two, so the default minibatch counts
#: divide the batch whatever ``num_envs`` is, once the rollout is at least 32 steps).
DEFAULT_NUM_STEPS = (32, 64, 128, 256, 512, 1024, 2048)
#: The default space keeps rollout lengths that leave at least this many updates in the budget.
MIN_UPDATES = 4


@dataclass(frozen=True)
class Param:
    """One entry of a space: a field sampled from a distribution (float, int, categorical) or fixed."""

    name: str
    kind: str  # "float", "int", "categorical" or "fixed"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    value: Any = None

    def labels(self) -> list[Any]:
        """The choices as Optuna stores them: lists and mappings as their JSON text, since Optuna's
        categorical choices must be None, bool, int, float or str."""
        return [json.dumps(c) if isinstance(c, (list, dict)) else c for c in self.choices]

    def suggest(self, trial: Any) -> Any:
        """This field's value for an Optuna ``trial`` (a fixed entry's value without asking it)."""
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        if self.kind == "categorical":
            labels = self.labels()
            return self.choices[labels.index(trial.suggest_categorical(self.name, labels))]
        return self.value

    def distribution(self) -> Any:
        """The Optuna distribution :meth:`suggest` samples from (None for a fixed entry), to check that a
        resumed study samples each field as its trials did."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "float":
            return FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        if self.kind == "categorical":
            return CategoricalDistribution(self.labels())
        return None

    def candidates(self) -> list[tuple[str, Any]]:
        """``(what, value)`` for each value worth checking against the config: the bounds or choices."""
        if self.kind == "fixed":
            return [("value", self.value)]
        if self.kind == "categorical":
            return [("choice", c) for c in self.choices]
        return [("low", self.low), ("high", self.high)]

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"fixed at {self.value!r}"
        if self.kind == "categorical":
            return "one of " + ", ".join(map(repr, self.choices))
        return f"{self.kind} in [{self.low:g}, {self.high:g}]" + (", log scale" if self.log else "")


Space = dict[str, Param]


def default_space(base: ControlConfig, discrete: bool) -> Space:
    """The fields that matter most for PPO, in ranges that cover the presets and the usual recipes.

    The entropy bonus is searched for discrete actions only (a Gaussian's entropy grows without bound,
    so continuous tasks keep it at 0). Rollout lengths that would leave fewer than ``MIN_UPDATES``
    updates in ``base.total_steps`` are left out; with fewer than two left, ``num_steps`` is the base's.
    """
    space: Space = {"learning_rate": Param("learning_rate", "float", 1e-5, 1e-2, log=True)}
    fitting = [n for n in DEFAULT_NUM_STEPS if base.num_envs * n * MIN_UPDATES <= base.total_steps]
    if len(fitting) >= 2:
        space["num_steps"] = Param("num_steps", "categorical", choices=tuple(fitting))
    space.update({
        "num_minibatches": Param("num_minibatches", "categorical", choices=(1, 2, 4, 8, 16, 32)),
        "num_epochs": Param("num_epochs", "int", 3, 15),
        "gamma": Param("gamma", "categorical", choices=(0.95, 0.98, 0.99, 0.995, 0.999)),
        "gae_lambda": Param("gae_lambda", "categorical", choices=(0.9, 0.95, 0.98, 1.0)),
        "clip_range": Param("clip_range", "categorical", choices=(0.1, 0.2, 0.3)),
    })
    if discrete:
        space["ent_coef"] = Param("ent_coef", "float", 1e-5, 0.05, log=True)
    space["hidden_sizes"] = Param("hidden_sizes", "categorical", choices=([64, 64], [128, 128], [256, 256]))
    return space


def load_space(source: str | Path | Mapping[str, Any] | None, base: ControlConfig, discrete: bool,
               chosen: frozenset[str] = frozenset()) -> Space:
    """The space a study samples: the default one, less the fields in ``chosen`` (those the user set
    in the base config, which the default space must not silently replace), with the entries of
    ``source`` (a YAML file or a mapping) replacing or adding to it; checked against ``base``.
    Errors name the file and the field."""
    space = {name: param for name, param in default_space(base, discrete).items() if name not in chosen}
    where = "the default search space"
    if source is not None:
        data = dict(source) if isinstance(source, Mapping) else load_yaml(source)
        where = "search space" if isinstance(source, Mapping) else str(source)
        keep_defaults = data.pop("default_space", True)
        if not isinstance(keep_defaults, bool):
            raise ConfigError(f"{where}: default_space: expected true or false, got {keep_defaults!r}")
        if not keep_defaults:
            space = {}
        for name, entry in data.items():
            space[name] = parse_entry(str(name), entry, where)
    check_space(space, base, where)
    return space


def searched(space: Space) -> list[str]:
    """The fields of ``space`` that take more than one value (a range, or several choices)."""
    return [name for name, p in space.items()
            if (p.kind == "categorical" and len(set(p.labels())) > 1) or (p.kind in ("float", "int") and p.low < p.high)]


def parse_entry(name: str, entry: Any, where: str) -> Param:
    """One entry of a space file: a ``{type: ...}`` mapping, or a plain value that fixes the field."""
    types_ = field_types(ControlConfig)
    if name not in types_:
        raise ConfigError(f"{where}: unknown config field {name!r}{suggest(name, types_)}")
    if name in NOT_SEARCHED:
        raise ConfigError(f"{where}: field {name!r} cannot be searched: ppokit tune sets it (--total-steps, "
                          "--seed, --out) or it only changes how a trial is watched")
    tp = types_[name]
    at = f"{where}: field {name!r}"
    if not isinstance(entry, Mapping) or ("type" not in entry and _takes_mapping(tp)):
        return Param(name, "fixed", value=coerce(entry, tp, at))
    if "type" not in entry:
        raise ConfigError(f"{at}: missing key 'type' (float, int or categorical; a plain value fixes the field)")
    kind = entry["type"]
    if kind not in KINDS:
        raise ConfigError(f"{at}: unknown type {kind!r}; expected one of {', '.join(KINDS)}")
    required, optional = KINDS[kind]
    missing = sorted(required - set(entry))
    if missing:
        raise ConfigError(f"{at}: a {kind} entry needs the key {missing[0]!r}")
    unknown = sorted(set(entry) - required - optional - {"type"})
    if unknown:
        raise ConfigError(f"{at}: unknown key {unknown[0]!r} for a {kind} entry (it takes "
                          f"{', '.join(sorted(required | optional))})")
    if kind == "categorical":
        choices = entry["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{at}: choices must be a non-empty list, got {choices!r}")
        return Param(name, kind, choices=tuple(coerce(c, tp, f"{at}: choice {i}") for i, c in enumerate(choices)))
    return _numeric(name, kind, entry, tp, at)


def _numeric(name: str, kind: str, entry: Mapping[str, Any], tp: Any, at: str) -> Param:
    number = int if kind == "int" else float
    if number is float and not _accepts(tp, float):
        raise ConfigError(f"{at}: a float entry cannot set this field; use int or categorical")
    if number is int and not _accepts(tp, int):
        raise ConfigError(f"{at}: an int entry cannot set this field; use float or categorical")
    low, high = (coerce(entry[key], number, f"{at}: {key}") for key in ("low", "high"))
    if low >= high:
        raise ConfigError(f"{at}: low ({low!r}) must be less than high ({high!r})")
    log = coerce(entry.get("log", False), bool, f"{at}: log")
    step = None if entry.get("step") is None else coerce(entry["step"], number, f"{at}: step")
    if log and low <= 0:
        raise ConfigError(f"{at}: a log-scale range needs low > 0, got {low!r}")
    if step is not None and (step <= 0 or log):
        raise ConfigError(f"{at}: step must be positive and cannot be combined with log: true")
    return Param(name, kind, low, high, log=log, step=step)


def _accepts(tp: Any, number: type) -> bool:
    """Whether a field of type ``tp`` holds plain numbers of type ``number`` (an int field no floats)."""
    import types
    import typing

    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = set(typing.get_args(tp)) - {type(None)}
    else:
        args = {tp}
    return number in args or (number is int and float in args)


def _takes_mapping(tp: Any) -> bool:
    import typing

    return tp is dict or typing.get_origin(tp) is dict


def check_space(space: Space, base: ControlConfig, where: str) -> None:
    """Build a config from ``base`` with each bound and choice of each entry, so a value no trial
    could train with (``gamma`` high 1.5, a rollout longer than the budget) fails now, by name."""
    data = to_dict(base)
    fixed = {p.name: p.value for p in space.values() if p.kind == "fixed"}
    for param in space.values():
        for what, value in param.candidates():
            values = {**fixed, param.name: value}
            try:
                from_mapping(ControlConfig, {**data, **values, **fit_minibatches({**data, **values})})
            except ConfigError as err:
                raise ConfigError(f"{where}: field {param.name!r}: {what} {value!r} gives an invalid config: "
                                  f"{err}") from None


def sample(space: Space, trial: Any, base: Mapping[str, Any]) -> dict[str, Any]:
    """The values of one trial: each entry suggested in the order of the space, then
    ``num_minibatches`` fitted to the batch (:func:`fit_minibatches`)."""
    values = {name: param.suggest(trial) for name, param in space.items()}
    return {**values, **fit_minibatches({**base, **values})}


def fit_minibatches(data: Mapping[str, Any]) -> dict[str, int]:
    """``{"num_minibatches": n}`` when the value in ``data`` does not divide what it must (the batch,
    ``num_envs * num_steps``, or for a recurrent policy ``num_envs``): the nearest divisor on a log
    scale, so sampling ``num_envs``, ``num_steps`` and ``num_minibatches`` apart never makes a config
    that cannot train. ``{}`` when it already divides (or the values are not integers yet)."""
    try:
        num_envs, wanted = int(data["num_envs"]), int(data["num_minibatches"])
        whole = num_envs if data.get("recurrent") else num_envs * int(data["num_steps"])
    except (KeyError, TypeError, ValueError):
        return {}  # the config check names the bad field
    if whole < 1 or wanted < 1 or whole % wanted == 0:
        return {}
    return {"num_minibatches": nearest_divisor(whole, wanted)}
