"""Named presets: tuned hyperparameters shipped as YAML files in this package (``ppokit/control/presets``).

A preset named after an env id (``CartPole-v1``) is the default for that env; other presets
(``CartPole-v1-cleanrl``) are alternatives a user picks with ``--preset``. A preset that sets a
multi-agent field (``mpe``: ``critic``) is a multi-agent run's (``ppokit.cli.train_config.is_multiagent``).
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

from ppokit.configuration import load_yaml
from ppokit.errors import ConfigError


def _preset_files() -> dict[str, Path]:
    root = resources.files("ppokit.control.presets")
    return {Path(str(p)).stem: Path(str(p)) for p in root.iterdir() if str(p).endswith(".yaml")}


def list_presets() -> dict[str, str]:
    """``{name: one-line description}`` for every shipped preset."""
    out = {}
    for name, path in sorted(_preset_files().items()):
        out[name] = str(load_yaml(path).get("description", ""))
    return out


def preset_path(name: str) -> Path:
    files = _preset_files()
    if name not in files:
        import difflib

        close = difflib.get_close_matches(name, list(files), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown preset {name!r}{hint}; `ppokit presets` lists them")
    return files[name]


def load_preset(name: str) -> dict[str, Any]:
    """The preset's config fields (its ``description`` removed)."""
    data = dict(load_yaml(preset_path(name)))
    data.pop("description", None)
    return data


def default_preset_for(env_id: str) -> str | None:
    """The preset named after ``env_id``; an Atari game's is named by its ``<Game>NoFrameskip-v4`` id
    and serves ``ALE/<Game>-v5`` too (the same game, with sticky actions); every ``MiniGrid-*`` id
    (``minigrid:MiniGrid-DoorKey-5x5-v0`` as well) gets the ``minigrid`` preset, and every MPE env
    of the ``mpe2`` package (``mpe2.simple_spread_v3``, ``mpe2:simple_spread_v3``) the ``mpe`` one."""
    files = _preset_files()
    if env_id in files:
        return env_id
    ale = re.fullmatch(r"ALE/([A-Za-z0-9]+)-v5", env_id)
    alias = f"{ale.group(1)}NoFrameskip-v4" if ale else None
    if re.fullmatch(r"(minigrid:)?MiniGrid-[\w-]+", env_id):
        alias = "minigrid"
    if re.fullmatch(r"mpe2[.:]\w+", env_id):
        alias = "mpe"
    return alias if alias in files else None
