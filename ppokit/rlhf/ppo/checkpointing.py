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
from typing import Any

import torch

from ppokit.configuration import callable_label, check_unchanged, from_mapping, load_yaml, with_absolute_paths
from ppokit.core.collective import Collective, gather_rank_states
from ppokit.core.optim import Optimizer
from ppokit.errors import CheckpointError, ConfigError
from ppokit.io.atomic import atomic_write_dir
from ppokit.io.checkpoints import (
    RESUME_FILE,
    checkpoint_path,
    load_optimizer_state,
    prune_checkpoints,
    refuse_non_finite,
)
from ppokit.io.rng import rng_state
from ppokit.io.run_dir import recorded_config
from ppokit.rlhf import data_parallel
from ppokit.rlhf.config import PATH_FIELDS, RESUMABLE_FIELDS, RLHFConfig
from ppokit.rlhf.consent import refuse_without_consent, saved_uses
from ppokit.rlhf.models import sharding
from ppokit.rlhf.ppo.roles import PPOModels
from ppokit.rlhf.rewards.sources import reward_import

#: Version of an RLHF checkpoint's resume.json (2: updates counted as in control, the health monitor).
RESUME_FORMAT = 2
KIND = "ppokit.rlhf"
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
#: Fields a resume may give again, as consent to use what config.yaml names: they must equal the
#: recorded ones (:func:`check_resumable` compares them).
NAMED_AGAIN = frozenset({"data"})


def save_checkpoint(run_dir: Path, models: PPOModels, tokenizer: Any, optimizer: Optimizer,
                    state: Mapping[str, Any], collective: Collective, keep: int) -> Path:
    """Write a resumable checkpoint of update ``state['num_updates']`` (``state``: the trainer's own,
    :meth:`RLHFTrainer.state_dict`); keeps the newest ``keep``. With several processes every one calls
    it (their random states are gathered, sharded weights too) and rank 0 writes."""
    from safetensors.torch import save_model

    # What each process holds of its own; the rest is the same on every process (or gathered, FSDP).
    per_rank = gather_rank_states(collective, {"rng": rng_state()})
    weights = sharding.full_state(models.trainable) if models.sharded else None
    optimizer_state = optimizer.state_dict()
    path = checkpoint_path(run_dir, int(state["num_updates"]))
    if not collective.is_main:
        return path
    resume = {"format": RESUME_FORMAT, "kind": KIND, **state, **per_rank}

    def fill(tmp: Path) -> None:
        if weights is None:
            save_model(models.trainable, str(tmp / TRAINABLE_FILE))
        else:
            sharding.save_state(weights, tmp / TRAINABLE_FILE)
        torch.save(optimizer_state, tmp / OPTIMIZER_FILE)
        models.save(tmp, tokenizer, weights)
        # Written last: its presence marks the checkpoint complete.
        (tmp / RESUME_FILE).write_text(json.dumps(resume) + "\n", encoding="utf-8")

    atomic_write_dir(path, fill)
    prune_checkpoints(run_dir, keep)
    return path


def restore(checkpoint: Path, state: Mapping[str, Any], models: PPOModels, optimizer: Optimizer,
            device: torch.device, collective: Collective) -> None:
    """Load a checkpoint's weights, optimiser state and this process's random state (on every
    process); the trainer's own state in ``state`` (its resume.json) is the trainer's to load."""
    file = checkpoint / TRAINABLE_FILE
    if models.sharded:
        sharding.load_state(models.trainable, file)
    else:
        _load_trainable(models.trainable, file, device)
    load_optimizer_state(checkpoint / OPTIMIZER_FILE, optimizer, device)
    data_parallel.restore_rng(state, collective, checkpoint / RESUME_FILE)


def _load_trainable(trainable: torch.nn.Module, file: Path, device: torch.device) -> None:
    from safetensors.torch import load_model

    try:
        missing, unexpected = load_model(trainable, str(file), strict=False, device=str(device))
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for bad files
        raise CheckpointError(f"{file}: not a readable safetensors file ({err})") from None
    refuse_non_finite(file, trainable.named_parameters())
    if missing or unexpected:
        raise CheckpointError(
            f"{file}: the saved weights do not fit this model (missing {list(missing)[:3]}, "
            f"unexpected {list(unexpected)[:3]}); was the policy, value_model or lora setting changed?"
        )


def resume_config(run_dir: Path, rewards: Sequence[Any] | None, trust: bool, overrides: Mapping[str, Any],
                  prompts_given: bool = False) -> RLHFConfig:
    """The config a run is resumed with (:meth:`RLHFTrainer.resume`): its config.yaml with ``overrides``,
    refused when it names code to run, a data file to read or a reward server to contact that was not
    named again (``rewards``, ``prompts_given``, ``overrides``) or trusted (:mod:`ppokit.rlhf.consent`)."""
    config_file, data = recorded_config(run_dir, overrides, RESUMABLE_FIELDS | NAMED_AGAIN)
    named_again = set(overrides) | ({"rewards"} if rewards is not None else set()) | ({"data"} if prompts_given else set())
    refuse_without_consent(config_file, saved_uses(data, named_again, reward_import), trust,
                           "ppokit resume RUN --data FILE --reward SOURCE; in Python prompts=..., rewards=[...]")
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
