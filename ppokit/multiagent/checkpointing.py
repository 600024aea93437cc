"""What a multi-agent run saves: control's layout, one entry per policy group.

``model.safetensors`` holds every group's weights and normalisers under ``<group>.``; ``state.json``
the config, the groups (their agents and spaces) and the counters; a checkpoint adds
``optimizer.pt`` (one optimiser state per group) and ``resume.json`` (RNGs, the collector's and the env
copies' state), written last. The env copies' state is PettingZoo objects walked for plain data
(:func:`ppokit.control.envs.state.capture_object_state`): nothing in it is code, and restoring it
only sets values on envs made from the config.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ppokit._version import __version__
from ppokit.configuration import from_mapping, to_dict
from ppokit.control.envs.spaces import space_from_json, space_to_json
from ppokit.control.envs.state import capture_object_state, restore_object_state
from ppokit.errors import CheckpointError, ConfigError
from ppokit.io.checkpoints import load_safetensors, load_torch_state, refuse_non_finite
from ppokit.multiagent.config import MultiAgentConfig
from ppokit.multiagent.envs import OWN_PACKAGES, Group
from ppokit.multiagent.groups import PolicyGroup

KIND = "ppokit.multiagent"
FORMAT = 1
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"


def tensors(groups: list[PolicyGroup]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for group in groups:
        name = group.group.name
        out.update({f"{name}.policy.{k}": v.detach().cpu().clone() for k, v in group.policy.state_dict().items()})
        for key, rms in group.normalisers().items():
            if rms is not None:
                out.update({f"{name}.{key}.{k}": v.contiguous().clone() for k, v in rms.state_dict().items()})
    return out


def model_state(config: MultiAgentConfig, groups: list[PolicyGroup], counters: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "kind": KIND,
        "ppokit_version": __version__,
        "config": to_dict(config),
        "groups": [{
            "name": g.group.name, "agents": list(g.agents),
            "observation_space": space_to_json(g.group.observation_space),
            "action_space": space_to_json(g.group.action_space),
            "state_size": g.state_size,
        } for g in groups],
        **counters,
    }


def optimizer_states(groups: list[PolicyGroup]) -> dict[str, Any]:
    return {g.group.name: g.algorithm.optimizer.state_dict() for g in groups}


def read_state(model_dir: Path) -> dict[str, Any]:
    file = model_dir / STATE_FILE
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file}: unreadable checkpoint metadata ({err})") from None
    if not isinstance(state, dict) or state.get("kind") != KIND:
        raise CheckpointError(f"{file}: not a ppokit multi-agent checkpoint")
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{file}: multi-agent checkpoint format {state.get('format')!r} is not supported by "
                              f"ppokit {__version__} (expected {FORMAT})")
    return state


def is_multiagent(model_dir: Path) -> bool:
    """Whether ``model_dir`` holds a multi-agent policy (its state.json says so)."""
    try:
        return bool(json.loads((model_dir / STATE_FILE).read_text(encoding="utf-8")).get("kind") == KIND)
    except (OSError, ValueError, AttributeError):
        return False


def saved_config(model_dir: Path, state: Mapping[str, Any], overrides: Mapping[str, Any]) -> MultiAgentConfig:
    try:
        return from_mapping(MultiAgentConfig, {**state["config"], **overrides}, f"{model_dir / STATE_FILE}")
    except (ConfigError, KeyError, TypeError) as err:
        raise CheckpointError(f"{model_dir}: saved config is not valid for this ppokit: {err}") from None


def saved_groups(model_dir: Path, state: Mapping[str, Any]) -> tuple[list[Group], int | None]:
    """The groups as saved (agents and spaces), and the critic's global input size."""
    try:
        groups = [Group(str(g["name"]), [str(a) for a in g["agents"]], space_from_json(g["observation_space"]),
                        space_from_json(g["action_space"])) for g in state["groups"]]
        sizes = {g["state_size"] for g in state["groups"]}
    except (KeyError, TypeError, ValueError, CheckpointError) as err:
        raise CheckpointError(f"{model_dir / STATE_FILE}: bad saved groups ({err})") from None
    size = sizes.pop() if len(sizes) == 1 else None
    return groups, None if size is None else int(size)


def load_weights(model_dir: Path, groups: list[PolicyGroup]) -> None:
    file = model_dir / MODEL_FILE
    saved = load_safetensors(file)
    refuse_non_finite(file, saved.items(), "refusing to load weights that cannot act")
    for group in groups:
        prefix = f"{group.group.name}.policy."
        try:
            group.policy.load_state_dict({k[len(prefix):]: v for k, v in saved.items() if k.startswith(prefix)})
        except RuntimeError as err:
            raise CheckpointError(f"{file}: group {group.group.name!r}'s weights do not fit its network: {err}") from None
        for key, rms in group.normalisers().items():
            if rms is None:
                continue
            try:
                rms.load_state_dict({k: saved[f"{group.group.name}.{key}.{k}"] for k in ("mean", "var", "count")})
            except (KeyError, ValueError) as err:
                raise CheckpointError(f"{file}: missing or bad {group.group.name}.{key} statistics ({err})") from None


def load_optimizers(model_dir: Path, groups: list[PolicyGroup], device: torch.device) -> None:
    file = model_dir / OPTIMIZER_FILE
    if not file.exists():
        return
    states = load_torch_state(file, device)
    for group in groups:
        try:
            group.algorithm.optimizer.load_state_dict(states[group.group.name])
        except (KeyError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"{file}: optimizer state of group {group.group.name!r} does not fit ({err})") from None


def _parts_of(top: str) -> Any:
    """Which objects of an env copy are parts to walk into: PettingZoo's and MPE2's own (wrappers,
    worlds, agents, selectors), those of the env's own package, and ppokit's face of the copy."""
    def check(value: Any) -> bool:
        module = str(getattr(type(value), "__module__", "") or "").split(".")[0]
        return ((module in OWN_PACKAGES or module in (top, "ppokit")) and hasattr(value, "__dict__")
                and not isinstance(value, type))
    return check


def capture_envs(envs: list[Any], env_module: str) -> tuple[list[dict[str, Any]] | None, str | None]:
    """Every env copy's state (the PettingZoo env and who acts on what), or why it cannot be captured exactly."""
    check = _parts_of(env_module.split(".")[0])
    out = []
    for i, env in enumerate(envs):
        try:
            state, why = capture_object_state(env, check, f"env[{i}]")
        except (AttributeError, TypeError, RecursionError) as err:  # an env's own object that will not be walked
            return None, f"env[{i}] could not be walked for its state ({type(err).__name__}: {err})"
        if state is None:
            return None, why
        out.append(state)
    return out, None


def restore_envs(envs: list[Any], states: list[dict[str, Any]]) -> None:
    if len(states) != len(envs):
        raise CheckpointError(f"the checkpoint saved {len(states)} env copies; the run has {len(envs)}")
    for i, (env, state) in enumerate(zip(envs, states)):
        restore_object_state(env, state, f"env[{i}]")

