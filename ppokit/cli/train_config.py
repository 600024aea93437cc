"""The control config of ``ppokit train``, from its arguments: defaults, preset, file, flags, ``--set``."""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any


def config_fields_help() -> str:
    from ppokit.configuration import fields_help
    from ppokit.control.config import ControlConfig

    return fields_help(ControlConfig)


#: ``--stop-at-return`` without ``eval_every``: evaluations at least this many env steps apart. A
#: 20-episode evaluation of a nearly solved policy costs more than a small update (BENCHMARKS.md,
#: time to solve), so evaluating after every one of them would double the time to solve; updates of
#: this size or more are evaluated after each one.
STOP_EVAL_MIN_STEPS = 1024


def _stop_eval_every(config_cls: type, data: dict[str, Any]) -> int:
    """Updates between evaluations for ``--stop-at-return`` when the config does not say."""
    defaults = {f.name: f.default for f in dataclasses.fields(config_cls)}
    try:
        per_update = int(data.get("num_envs", defaults["num_envs"])) * int(data.get("num_steps", defaults["num_steps"]))
    except (TypeError, ValueError):
        return 1  # the config check names the bad field
    return max(1, math.ceil(STOP_EVAL_MIN_STEPS / per_update)) if per_update > 0 else 1


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
    if args.env_id:
        data["env_id"] = args.env_id
    if "env_id" not in data:
        raise ConfigError("no environment given: pass ENV_ID, --preset or a --config with env_id")
    for field in ("total_steps", "seed", "run_dir"):
        if getattr(args, field) is not None:
            data[field] = getattr(args, field)
    if args.no_progress:
        data["progress"] = False
    if args.stop_at_return is not None:
        data["stop_at_return"] = args.stop_at_return
    merge_overrides(ControlConfig, data, args.overrides)
    if args.stop_at_return is not None and "eval_every" not in data:
        data["eval_every"] = _stop_eval_every(ControlConfig, data)
    sources = ([f"preset {preset!r}"] if preset else []) + ([args.config] if args.config else [])
    return from_mapping(ControlConfig, data, f"config ({', '.join(sources)})" if sources else "config"), preset


