"""The config of ``ppokit train``, from its arguments: defaults, preset, file, flags, ``--set``; and
the one decision of which front end trains it (:func:`is_multiagent`)."""

from __future__ import annotations

import argparse
import importlib.util
import types
from collections.abc import Iterable
from typing import Any

from ppokit.errors import ConfigError


def config_fields_help() -> str:
    from ppokit.configuration import fields_help
    from ppokit.control.config import ControlConfig

    extra = ", ".join(sorted(MULTIAGENT_FIELDS))
    return (fields_help(ControlConfig) + f"\n\nmulti-agent runs (PettingZoo envs) take every field above and: {extra} "
            "(MultiAgentConfig in docs/reference/config.md)")


#: The fields MultiAgentConfig adds to ControlConfig (a test keeps the list equal to them): written
#: out so that building the parser imports neither torch nor the multi-agent front end.
MULTIAGENT_FIELDS = frozenset({"policies", "agent_id", "critic", "normalize_value", "bootstrap_truncation"})


def is_multiagent(env_id: str, fields: Iterable[str] = ()) -> bool:
    """Whether ``ppokit train`` trains ``env_id`` with MultiAgentPPO (else control's PPO). Decided here
    alone, from what the user wrote, never from what an env turns out to be:

    * a config that sets a multi-agent-only field (``policies``, ``agent_id``, ``critic``, ``bootstrap_truncation``,
      ``normalize_value``: in the preset, the --config file or --set);
    * a dotted module path, PettingZoo's own form (``mpe2.simple_spread_v3``,
      ``pettingzoo.classic.connect_four_v3``): Gymnasium ids are not Python module paths;
    * ``module:attr`` whose ``attr`` is a module (``mpe2:simple_spread_v3``).

    A ``module:function`` factory stays control's: if it makes a PettingZoo env, control says in one
    line to set ``critic``."""
    if MULTIAGENT_FIELDS & set(fields):
        return True
    module, sep, attr = env_id.partition(":")
    if not sep:
        return _module_path(env_id)
    if not (module and attr.isidentifier() and all(part.isidentifier() for part in module.split("."))):
        return False  # Gymnasium's 'module:Env-v0', or an id control refuses in its own words
    from ppokit.imports import import_user_module

    try:
        target = getattr(import_user_module(module), attr, None)
        if target is None:  # a submodule its package does not import itself
            return importlib.util.find_spec(f"{module}.{attr}") is not None
    except (ImportError, ValueError):
        return False  # control names the import error
    return isinstance(target, types.ModuleType)


def _module_path(env_id: str) -> bool:
    parts = env_id.split(".")
    return len(parts) > 1 and all(part.isidentifier() for part in parts)


def check_multiagent_env(env_id: str, fields: Iterable[str]) -> None:
    """Refuse in one line a multi-agent field set for a Gymnasium id (``CartPole-v1 --set critic=ippo``):
    a PettingZoo env is named by its module or a 'module:function'."""
    if ":" not in env_id and not _module_path(env_id):
        named = ", ".join(sorted(MULTIAGENT_FIELDS & set(fields)))
        raise ConfigError(f"config field {named} makes this a multi-agent run, but env_id {env_id!r} is a Gymnasium id; "
                          "a PettingZoo env is named by its module (mpe2.simple_spread_v3) or 'module:function' (drop "
                          f"{named} to train {env_id} with control PPO)")


def resolve_train_config(args: argparse.Namespace) -> tuple[Any, str | None]:
    """Merge defaults, preset, config file, flags and --set into one validated ControlConfig, or
    MultiAgentConfig when :func:`is_multiagent` says so."""
    from ppokit.configuration import from_mapping, load_yaml, merge_overrides, parse_overrides
    from ppokit.control.config import ControlConfig
    from ppokit.control.presets import default_preset_for, load_preset

    file_data = load_yaml(args.config) if args.config else {}
    file_data.pop("description", None)  # a preset's (or best.yaml's) note for people, not a config field
    file_data.pop("launch", None)  # a run's config.yaml: how it was launched (world size), not a config field
    env_id = args.env_id or file_data.get("env_id")
    preset = args.preset
    if preset is None and not args.no_preset and env_id:
        preset = default_preset_for(str(env_id))
    data: dict[str, Any] = load_preset(preset) if preset else {}
    data.update(file_data)
    # What the user set: the preset's values and the defaults adapt to these (ControlConfig).
    given = set(file_data)
    if args.env_id:
        data["env_id"] = args.env_id
        given.add("env_id")
    if "env_id" not in data:
        raise ConfigError("no environment given: pass ENV_ID, --preset or a --config with env_id")
    for field in ("total_steps", "seed", "run_dir"):
        if getattr(args, field) is not None:
            data[field] = getattr(args, field)
            given.add(field)
    if args.no_progress:
        data["progress"] = False
        given.add("progress")
    if args.stop_at_return is not None:
        data["stop_at_return"] = args.stop_at_return
        given.add("stop_at_return")
    cls: type = ControlConfig
    named = set(data) | set(parse_overrides(args.overrides))
    if is_multiagent(str(data["env_id"]), named):
        from ppokit.multiagent.config import MultiAgentConfig

        check_multiagent_env(str(data["env_id"]), named)
        cls = MultiAgentConfig
    given |= set(merge_overrides(cls, {}, args.overrides))
    merge_overrides(cls, data, args.overrides)
    sources = ([f"preset {preset!r}"] if preset else []) + ([args.config] if args.config else [])
    where = f"config ({', '.join(sources)})" if sources else "config"
    return from_mapping(cls, data, where, given=given), preset
