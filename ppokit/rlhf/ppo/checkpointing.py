"""Resumable checkpoints of an RLHF PPO run.

``RUN_DIR/checkpoints/update_<N>`` holds ``trainable.safetensors`` (the weights that train: the
policy or its LoRA adapter, and the critic or value head if there is one: the critic-free
advantages have none), ``optimizer.pt`` (read with ``weights_only=True``), ``policy/`` and ``value_model/``
(with a critic) as usable models, and ``resume.json`` (KL controller, prompt position, RNGs, history,
health), written last so its presence marks a complete checkpoint. A data-parallel run's
``resume.json`` holds every process's random state (``world_size`` and ``ranks``); rank 0 writes the
checkpoint, and a sharded (FSDP) model's weights and optimiser state are gathered to it first.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ppokit.configuration import callable_label, check_unchanged, from_mapping, load_yaml, with_absolute_paths
from ppokit.core.collective import gather_rank_states, rank_state
from ppokit.errors import CheckpointError, ConfigError, UntrustedCodeError
from ppokit.io.atomic import atomic_write_dir
from ppokit.io.checkpoints import (
    RESUME_FILE,
    checkpoint_path,
    find_resumable,
    load_torch_state,
    prune_checkpoints,
    refuse_non_finite,
)
from ppokit.io.rng import rng_state, set_rng_state
from ppokit.rlhf.config import PATH_FIELDS, RESUMABLE_FIELDS, RLHFConfig
from ppokit.rlhf.models import sharding
from ppokit.rlhf.rewards.sources import reward_import

if TYPE_CHECKING:
    from ppokit.rlhf.ppo.trainer import RLHFTrainer

#: Version of an RLHF checkpoint's resume.json (2: updates counted as in control, the health monitor).
RESUME_FORMAT = 2
KIND = "ppokit.rlhf"
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"


def save_checkpoint(trainer: RLHFTrainer) -> Path:
    """Write a resumable checkpoint; keeps the newest ``keep_checkpoints``. With several processes
    every one calls it (their states are gathered) and rank 0 writes."""
    from safetensors.torch import save_model

    assert trainer.run_dir is not None
    collective, models = trainer.collective, trainer.models
    # What each process holds of its own; the rest is the same on every process (or gathered, FSDP).
    per_rank = gather_rank_states(collective, {"rng": rng_state()})
    weights = sharding.full_state(models.trainable) if models.sharded else None
    optimizer_state = trainer.optimizer.state_dict()
    path = checkpoint_path(trainer.run_dir, trainer.num_updates)
    if not collective.is_main:
        return path
    state = {
        "format": RESUME_FORMAT, "kind": KIND, "num_updates": trainer.num_updates,
        "kl_coef": trainer.kl_coef,
        "kl_controller": trainer.kl_controller.state_dict() if trainer.kl_controller is not None else None,
        "prompts": trainer.prompts.state_dict(), **per_rank, "history": trainer.history,
        "health": trainer.health.state_dict(),
    }

    def fill(tmp: Path) -> None:
        if weights is None:
            save_model(models.trainable, str(tmp / TRAINABLE_FILE))
        else:
            sharding.save_state(weights, tmp / TRAINABLE_FILE)
        torch.save(optimizer_state, tmp / OPTIMIZER_FILE)
        models.save(tmp, trainer.tokenizer, weights)
        # Written last: its presence marks the checkpoint complete.
        (tmp / RESUME_FILE).write_text(json.dumps(state) + "\n", encoding="utf-8")

    atomic_write_dir(path, fill)
    prune_checkpoints(trainer.run_dir, trainer.config.keep_checkpoints)
    return path


def restore(trainer: RLHFTrainer, checkpoint: Path, state: dict[str, Any]) -> None:
    """Load a checkpoint of this run into a freshly built trainer (on every process)."""
    file = checkpoint / TRAINABLE_FILE
    if trainer.models.sharded:
        sharding.load_state(trainer.models.trainable, file)
    else:
        _load_trainable(trainer, file)
    try:
        trainer.optimizer.load_state_dict(load_torch_state(checkpoint / OPTIMIZER_FILE, trainer.device))
    except (ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"{checkpoint / OPTIMIZER_FILE}: optimizer state does not fit ({err})") from None
    try:
        trainer.num_updates = int(state["num_updates"])
        trainer.kl_coef = float(state["kl_coef"])
        if trainer.kl_controller is not None and state["kl_controller"] is not None:
            trainer.kl_controller.load_state_dict(state["kl_controller"])
        trainer.prompts.load_state_dict(state["prompts"])
        trainer.history = list(state["history"])
        trainer.health.load_state_dict(state["health"])
        set_rng_state(rank_state(state, trainer.collective)["rng"])
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise CheckpointError(f"{checkpoint / RESUME_FILE}: bad resume state ({type(err).__name__}: {err})") from None


def _load_trainable(trainer: RLHFTrainer, file: Path) -> None:
    from safetensors.torch import load_model

    try:
        missing, unexpected = load_model(trainer.models.trainable, str(file), strict=False, device=str(trainer.device))
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for bad files
        raise CheckpointError(f"{file}: not a readable safetensors file ({err})") from None
    refuse_non_finite(file, trainer.models.trainable.named_parameters())
    if missing or unexpected:
        raise CheckpointError(
            f"{file}: the saved weights do not fit this model (missing {list(missing)[:3]}, "
            f"unexpected {list(unexpected)[:3]}); was the policy, value_model or lora setting changed?"
        )


def recorded_config(run_dir: Path, overrides: Mapping[str, Any], resumable: frozenset[str]) -> tuple[Path, dict[str, Any]]:
    """``(config.yaml, its fields)`` of the resumable run in ``run_dir``, for a resume with ``overrides``;
    refused when an override names a field outside ``resumable`` (one that shaped the run)."""
    find_resumable(run_dir)
    config_file = run_dir / "config.yaml"
    fixed = sorted(set(overrides) - resumable)
    if fixed:
        raise ConfigError(f"resuming {run_dir}: {', '.join(fixed)} shaped the run and cannot change on resume "
                          f"(only {', '.join(sorted(resumable))} can)")
    data = dict(load_yaml(config_file))
    data.pop("launch", None)  # how the run was launched (its world size), not a config field
    return config_file, data


def resume_config(run_dir: Path, rewards: Sequence[Any] | None, trust: bool, overrides: Mapping[str, Any]) -> RLHFConfig:
    """The config a run is resumed with (:meth:`RLHFTrainer.resume`): its config.yaml with ``overrides``,
    refused when it names code to run (a reward module, remote code) that was not passed again or trusted."""
    config_file, data = recorded_config(run_dir, overrides, RESUMABLE_FIELDS)
    would_run = []
    if rewards is None and "rewards" not in overrides:
        for spec in data.get("rewards") or []:
            module = reward_import(spec)
            if module is not None and not str(spec).startswith("<python callable"):
                would_run.append(f"reward {spec!r} (imports module {module!r} and calls it)")
    if data.get("trust_remote_code") is True and "trust_remote_code" not in overrides:
        would_run.append("trust_remote_code: true (runs the Python code shipped with the models it loads)")
    if would_run and not trust:
        raise UntrustedCodeError(
            f"{config_file} names code that resuming would run: {'; '.join(would_run)}. ppokit runs nothing a "
            "saved run names unless you allow it: if you trust this run directory, pass --trust to ppokit resume "
            "(in Python: trust=True, or the rewards again with rewards=[...])"
        )
    data.update(overrides)
    data["run_dir"] = str(run_dir)
    if rewards is None and any(isinstance(r, str) and r.startswith("<python callable") for r in data.get("rewards", [])):
        raise ConfigError(f"{run_dir / 'config.yaml'}: the run's reward is a Python callable; resume it "
                          "from Python with RLHFTrainer.resume(run_dir, rewards=[your_function])")
    return from_mapping(RLHFConfig, data, str(run_dir / "config.yaml"))


def check_resumable(config_file: Path, config: RLHFConfig, rewards: Sequence[Any] | None) -> None:
    """Refuse a resume whose config differs from the run's recorded one outside RESUMABLE_FIELDS
    (paths compared as absolute paths, rewards passed in code as their recorded labels)."""
    data = dict(load_yaml(config_file))
    data.pop("launch", None)  # how the run was launched (its world size), not a config field
    saved = with_absolute_paths(from_mapping(RLHFConfig, data, str(config_file)), PATH_FIELDS)
    specs = list(rewards) if rewards is not None else list(config.rewards)
    now = with_absolute_paths(
        dataclasses.replace(config, rewards=[r if isinstance(r, str) else callable_label(r) for r in specs]), PATH_FIELDS)
    check_unchanged(saved, now, RESUMABLE_FIELDS, str(config_file))
