"""The control config of ``ppokit train``, from its arguments: defaults, preset, file, flags, ``--set``."""

from __future__ import annotations

import argparse
from typing import Any


def config_fields_help() -> str:
    from ppokit.configuration import fields_help
    from ppokit.control.config import ControlConfig

    return fields_help(ControlConfig)


def resolve_train_config(args: argparse.Namespace) -> tuple[Any, str | None]:
    """Merge defaults, preset, config file, flags and --set into one validated ControlConfig."""
    from ppokit.configuration import from_mapping, load_yaml, merge_overrides
    from ppokit.control.config import ControlConfig
    from ppokit.control.presets import default_preset_for, load_preset
    from ppokit.errors import ConfigError

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
    given |= set(merge_overrides(ControlConfig, {}, args.overrides))
    merge_overrides(ControlConfig, data, args.overrides)
    sources = ([f"preset {preset!r}"] if preset else []) + ([args.config] if args.config else [])
    where = f"config ({', '.join(sources)})" if sources else "config"
    return from_mapping(ControlConfig, data, where, given=given), preset


