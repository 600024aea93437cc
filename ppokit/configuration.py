"""Turning YAML files, dicts and ``key=value`` overrides into validated config dataclasses.

Every trainer config is a dataclass whose fields carry a one-line ``help`` and, where the type alone
allows too much, a :class:`Rule` in their metadata (:func:`doc`; fields several configs share are
declared once in :mod:`ppokit.config_fields`). This module is the one place that checks them
(:func:`validate`, called from every config's ``__post_init__``, before its checks across fields),
so the YAML file, the Python API and ``--set`` on the command line all fail the same way, naming the
field and source.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ppokit.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Rule:
    """The values a field allows beyond its type: a test, and the words for what passes it."""

    test: Callable[[Any], bool]
    #: What is allowed, as the reference and the errors say it ("at least 1", "in [0, 1]").
    allowed: str


AT_LEAST_1 = Rule(lambda v: v >= 1, "at least 1")
POSITIVE = Rule(lambda v: v > 0, "positive")
NON_NEGATIVE = Rule(lambda v: v >= 0, "not negative")
UNIT = Rule(lambda v: 0.0 <= v <= 1.0, "in [0, 1]")
#: A fraction held out or dropped: 1 would leave nothing.
FRACTION = Rule(lambda v: 0.0 <= v < 1.0, "in [0, 1)")
#: The clip range ε: a ratio clipped to [1 - ε, 1 + ε] needs 0 < ε < 1.
OPEN_UNIT = Rule(lambda v: 0.0 < v < 1.0, "in (0, 1)")


def doc(help_text: str, *, rule: Rule | None = None, **kwargs: Any) -> Any:
    """A dataclass field with a one-line description (TRL-style) and, optionally, the :class:`Rule`
    its values must pass (null passes where the type allows it: it disables)."""
    return dataclasses.field(metadata={"help": help_text, "rule": rule}, **kwargs)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _yaml_value(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: {text!r} is not valid YAML ({problem})") from None


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` to the annotated type ``tp`` or raise a ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except ConfigError:
                pass
        choices = literal_choices(tp)
        if choices:
            allowed = ", ".join(map(repr, choices)) + (" or null" if type(None) in args else "")
            raise ConfigError(f"{where}: {value!r} is not allowed; expected one of {allowed}")
        raise ConfigError(f"{where}: {value!r} is not a valid {_type_name(tp)}")
    if tp is Any:
        return value
    if origin is typing.Literal:
        if value in args and type(value) is type(args[args.index(value)]):
            return value
        raise ConfigError(f"{where}: {value!r} is not allowed; expected one of {', '.join(map(repr, args))}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                as_float = float(value.replace("_", ""))
            except ValueError:
                pass
            else:
                if as_float.is_integer():
                    return int(as_float)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        number = None
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, str):
            value = _yaml_value(value, where)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_type = args[0] if args else Any
        return [coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if isinstance(value, str):
            value = _yaml_value(value, where)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    raise ConfigError(f"{where}: unsupported field type {_type_name(tp)}")


_HINTS: dict[type, dict[str, Any]] = {}


def field_types(cls: type) -> dict[str, Any]:
    """The resolved type annotation of every field of dataclass ``cls``."""
    if cls not in _HINTS:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return _HINTS[cls]


def literal_choices(tp: Any) -> tuple[Any, ...]:
    """The allowed values of a ``Literal[...]`` (or optional ``Literal``) annotation; () for others."""
    if typing.get_origin(tp) is typing.Literal:
        return typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return tuple(v for arg in typing.get_args(tp) for v in literal_choices(arg))
    return ()


def check_types(config: Any) -> None:
    """Parse every field of ``config`` into its declared type, in place, or raise a ConfigError
    naming the field: a config built in code (``ControlConfig(total_steps=1e4)``,
    ``learning_rate="fast"``) is checked as strictly as one read from YAML or ``--set``, when it is
    built rather than deep inside training."""
    for name, tp in field_types(type(config)).items():
        value = getattr(config, name)
        coerced = coerce(value, tp, f"config field {name!r}")
        if coerced is not value:
            object.__setattr__(config, name, coerced)


def check_rules(config: Any) -> None:
    """Reject a value its field's :class:`Rule` refuses, naming the field, the value and what is allowed."""
    for f in dataclasses.fields(config):
        rule = f.metadata.get("rule")
        value = getattr(config, f.name)
        if rule is not None and value is not None and not rule.test(value):
            raise ConfigError(f"config field {f.name!r} = {value!r} is invalid: must be {rule.allowed}")


def validate(config: Any) -> None:
    """Every field's own checks, in the order a reader needs them: its type, its ``Literal`` choices,
    its rule. A config's ``__post_init__`` calls this, then checks what concerns several fields."""
    check_types(config)
    check_choices(config)
    check_rules(config)


def allowed(cls: type, name: str) -> str:
    """What field ``name`` of ``cls`` allows beyond its type, in words ('' when its type says it all)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    rule = f.metadata.get("rule")
    tp = field_types(cls)[name]
    choices = literal_choices(tp)
    text = rule.allowed if rule is not None else ", ".join(map(repr, choices)) if choices else ""
    if text and type(None) in typing.get_args(tp):
        text += " or null"
    return text


def check_choices(config: Any) -> None:
    """Reject a value outside its field's ``Literal[...]`` choices, naming the field and the choices.

    Called from the configs' ``__post_init__``, so a config built directly in code is checked as
    strictly as one parsed from YAML or ``--set``.
    """
    for name, tp in field_types(type(config)).items():
        choices = literal_choices(tp)
        value = getattr(config, name)
        if choices and value not in choices and not (value is None and type(None) in typing.get_args(tp)):
            raise ConfigError(
                f"config field {name!r} = {value!r} is invalid: expected one of {', '.join(map(repr, choices))}"
            )


#: The fields the user gave, for the config being built by :func:`from_mapping` (None: its keywords).
_GIVEN: contextvars.ContextVar[frozenset[str] | None] = contextvars.ContextVar("ppokit_given_fields", default=None)


def records_given(cls: type[T]) -> type[T]:
    """Class decorator (over ``@dataclass``): each instance remembers which fields its maker gave, so
    its ``__post_init__`` can let the fields left to their defaults (or to a preset) adapt to the
    ones the user set (:func:`adapt`), and refuse only a conflict between fields the user set.

    In code the given fields are the arguments passed (``ControlConfig(recurrent="lstm")`` gives one);
    :func:`from_mapping` is told them (the command line gives the config file's keys, the flags and
    ``--set``, not the preset's); a copy made by :func:`replace` keeps its original's plus the changes."""
    init = cls.__init__
    names = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        told = _GIVEN.get()
        given = told if told is not None else frozenset(names[:len(args)]) | frozenset(kwargs)
        object.__setattr__(self, "_given", given)
        object.__setattr__(self, "_adapted", [])
        token = _GIVEN.set(None)  # a config built inside this one's __post_init__ counts its own arguments
        try:
            init(self, *args, **kwargs)
        finally:
            _GIVEN.reset(token)

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


def given_fields(config: Any) -> frozenset[str]:
    """The fields of ``config`` its maker gave (every field, for a config not built by :func:`records_given`)."""
    given = getattr(config, "_given", None)
    return given if given is not None else frozenset(f.name for f in dataclasses.fields(config))


def adapt(config: Any, name: str, value: Any, why: str) -> None:
    """Set field ``name`` of ``config`` (one its maker did not give) to ``value`` because ``why``, and
    keep a note of it (:func:`adapted_notes`): the run prints it, and config.yaml records the value."""
    old = getattr(config, name)
    object.__setattr__(config, name, value)
    config._adapted.append(f"{name} = {value!r} (not {old!r}: {why}; set {name} to choose)")


def adapted_notes(config: Any) -> list[str]:
    """What :func:`adapt` changed in ``config``, one line each."""
    return list(getattr(config, "_adapted", []))


def nearest_divisor(whole: int, wanted: int) -> int:
    """The divisor of ``whole`` nearest to ``wanted`` on a log scale (the smaller on a tie)."""
    divisors = [d for d in range(1, whole + 1) if whole % d == 0]
    return min(divisors, key=lambda d: (abs(math.log(d / wanted)), d))


def from_mapping(cls: type[T], data: Mapping[str, Any], source: str = "config",
                 given: frozenset[str] | set[str] | None = None) -> T:
    """Build ``cls`` from a mapping, rejecting unknown keys and ill-typed values by name. ``given``:
    the keys the user set (default: all of them); the others may adapt (:func:`records_given`)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of field: value, got {type(data).__name__}")
    types_ = field_types(cls)
    unknown = [k for k in data if k not in types_]
    if unknown:
        raise ConfigError(
            f"{source}: unknown config field {unknown[0]!r}"
            + suggest(str(unknown[0]), types_)
        )
    values = {k: coerce(v, types_[k], f"{source}: field {k!r}") for k, v in data.items()}
    token = _GIVEN.set(frozenset(data) if given is None else frozenset(given))
    try:
        return cls(**values)  # __post_init__ validates ranges and consistency
    except ConfigError as err:
        if source == "config":
            raise
        raise ConfigError(f"{source}: {err}") from None
    finally:
        _GIVEN.reset(token)


def suggest(name: str, choices: Mapping[str, Any]) -> str:
    """' (did you mean X?)' for the closest of ``choices``, or ''."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load``; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}{line}: invalid YAML: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of field: value at the top level")
    return data


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are read as YAML scalars (``1e-3``, ``true``, ``[64, 64]``)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected key=value")
        key, raw = pair.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set {pair!r}: empty key")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key] = raw
    return out


def merge_overrides(cls: type, data: dict[str, Any], pairs: list[str] | None) -> dict[str, Any]:
    """Apply ``--set key=value`` pairs to ``data``, rejecting keys that are not fields of ``cls``."""
    overrides = parse_overrides(pairs)
    known = field_types(cls)
    for key in overrides:
        if key not in known:
            raise ConfigError(f"--set {key}=...: unknown config field {key!r}{suggest(key, known)}")
    data.update(overrides)
    return data


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def with_absolute_paths(config: T, fields: tuple[str, ...]) -> T:
    """A copy of ``config`` whose path-valued ``fields`` (strings, or lists of them, that name existing
    files or directories) are absolute: what a run directory records, so it can be resumed from
    anywhere. Hub ids and ``module:function`` strings are left as they are."""
    def absolute(value: Any) -> Any:
        if isinstance(value, str) and value and Path(value).exists():
            return str(Path(value).resolve())
        if isinstance(value, list):
            return [absolute(v) for v in value]
        return value

    changes = {name: absolute(getattr(config, name)) for name in fields if hasattr(config, name)}
    return dataclasses.replace(config, **changes)  # type: ignore[type-var]


def check_unchanged(saved: Any, now: Any, resumable: frozenset[str], where: str) -> None:
    """Refuse a resume whose config ``now`` differs from the run's ``saved`` one in a field outside
    ``resumable``: it would silently train a different run. Names each field, then and now."""
    changed = [f.name for f in dataclasses.fields(saved)
               if f.name not in resumable and getattr(saved, f.name) != getattr(now, f.name)]
    if changed:
        from ppokit.errors import CheckpointError
        from ppokit.urls import redact_text

        shown = redact_text(", ".join(f"{name} = {getattr(saved, name)!r} (now {getattr(now, name)!r})"
                                      for name in changed[:4]))
        raise CheckpointError(
            f"{where}: the run was made with {shown}{' and more' if len(changed) > 4 else ''}; these shape "
            f"training and cannot change on resume (only {', '.join(sorted(resumable))} can). Start a new "
            "run (another --run-dir, or --overwrite) to train with them"
        )


def callable_label(fn: Any) -> str:
    """How a Python callable among a config's values is recorded: a label no loader will import."""
    return f"<python callable {getattr(fn, '__qualname__', repr(fn))}>"


def config_to_yaml(config: Any) -> str:
    """The config as the YAML a run directory keeps; a Python callable among the values (an RLHF
    reward passed in code) is written as ``<python callable NAME>``, which no loader will import."""

    def plain(value: Any) -> Any:
        if callable(value):
            return callable_label(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return yaml.safe_dump({f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)},
                          sort_keys=False)


def replace(config: T, source: str = "override", **changes: Any) -> T:
    """A copy of ``config`` with ``changes`` applied through the same parsing and validation."""
    data = to_dict(config)
    types_ = field_types(type(config))
    for key in changes:
        if key not in types_:
            raise ConfigError(f"{source}: unknown config field {key!r}" + suggest(key, types_))
    data.update(changes)
    return from_mapping(type(config), data, source, given=given_fields(config) | set(changes))


def describe(cls: type) -> list[tuple[str, str, Any, str, str]]:
    """``(name, type, default, help, allowed)`` for every field, for ``--help`` listings and the
    reference; ``allowed``: :func:`allowed`."""
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        )
        rows.append((f.name, _type_name(field_types(cls)[f.name]), default, f.metadata.get("help", ""),
                     allowed(cls, f.name)))
    return rows


def fields_help(cls: type) -> str:
    """Every field of ``cls`` with its doc, default and allowed values: the epilog of ``--help``."""
    lines = ["config fields (set any of them with --set key=value or in a --config YAML file):"]
    for name, _type, default, help_text, allows in describe(cls):
        lines.append(f"  {name:<22} {help_text} [default: {default!r}" + (f"; {allows}]" if allows else "]"))
    return "\n".join(lines)
