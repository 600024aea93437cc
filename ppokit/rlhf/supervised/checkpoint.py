"""Resumable checkpoints of SFT and reward-training runs.

``RUN_DIR/checkpoints/update_<optimiser steps>`` holds ``trainable.safetensors`` (the weights that
train: the whole model, or its LoRA adapters and new head), ``optimizer.pt`` (AdamW's moments, read
with ``weights_only=True``) and ``resume.json``, written last so its presence marks a complete
checkpoint: the step, the learning-rate schedule, the data position (epoch, batches taken, the
shuffling generator as the epoch began), every process's RNG states, the evaluations so far and a
fingerprint of the training data. The model a run trains is written at its end (``model/``), not
into every checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ppokit.configuration import check_unchanged, from_mapping, load_yaml, with_absolute_paths
from ppokit.core.collective import Collective, gather_rank_states
from ppokit.core.optim import Optimizer
from ppokit.errors import CheckpointError, ConfigError
from ppokit.io.atomic import atomic_write_dir
from ppokit.io.checkpoints import (
    RESUME_FILE,
    checkpoint_path,
    load_optimizer_state,
    load_safetensors,
    prune_checkpoints,
    refuse_non_finite,
)
from ppokit.io.rng import rng_state
from ppokit.io.run_dir import recorded_config
from ppokit.rlhf import data_parallel
from ppokit.rlhf.config import PATH_FIELDS, SUPERVISED_RESUMABLE_FIELDS, RewardConfig, SFTConfig, SupervisedConfig
from ppokit.rlhf.consent import refuse_without_consent, saved_uses

#: Version of a supervised checkpoint's resume.json.
RESUME_FORMAT = 1
#: The run kind a checkpoint's resume.json names, by stage (``ppokit resume`` dispatches on it).
KINDS = {"sft": "ppokit.rlhf.sft", "reward": "ppokit.rlhf.reward"}
CONFIGS: dict[str, type[SFTConfig] | type[RewardConfig]] = {"sft": SFTConfig, "reward": RewardConfig}
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
#: Fields a resume may give again, as consent to read the files config.yaml names: they must equal
#: the recorded ones (:func:`check_resumable` compares them).
NAMED_AGAIN = frozenset({"data", "eval_data"})


def save_checkpoint(run_dir: Path, stage: str, trainable: Mapping[str, torch.Tensor], optimizer: Optimizer,
                    state: Mapping[str, Any], collective: Collective, keep: int) -> Path:
    """Write a resumable checkpoint of optimiser step ``state['step']`` (``state``: the trainer's own,
    :meth:`SupervisedTrainer.state_dict`); keeps the newest ``keep``. With several processes every one
    calls it (their RNG states are gathered) and rank 0 writes: the weights are the same on all."""
    from safetensors.torch import save_file

    per_rank = gather_rank_states(collective, {"rng": rng_state()})
    path = checkpoint_path(run_dir, int(state["step"]))
    if not collective.is_main:
        return path
    resume = {"format": RESUME_FORMAT, "kind": KINDS[stage], **state, **per_rank}
    weights = {name: p.detach().cpu().contiguous() for name, p in trainable.items()}
    optimizer_state = optimizer.state_dict()

    def fill(tmp: Path) -> None:
        save_file(weights, str(tmp / TRAINABLE_FILE))
        torch.save(optimizer_state, tmp / OPTIMIZER_FILE)
        # Written last: its presence marks the checkpoint complete.
        (tmp / RESUME_FILE).write_text(json.dumps(resume) + "\n", encoding="utf-8")

    atomic_write_dir(path, fill)
    prune_checkpoints(run_dir, keep)
    return path


def check_data(checkpoint: Path, state: Mapping[str, Any], fingerprint: str) -> None:
    """Refuse to resume on training rows other than the run's (their fingerprint differs)."""
    if state.get("data") != fingerprint:
        raise CheckpointError(f"{checkpoint / RESUME_FILE}: the run was trained on other data (fingerprint "
                              f"{state.get('data')!r}, this data's is {fingerprint!r}); resume it on the same rows, "
                              "or start a new run")


def restore(checkpoint: Path, state: Mapping[str, Any], trainable: Mapping[str, torch.nn.Parameter],
            optimizer: Optimizer, device: torch.device, collective: Collective) -> None:
    """Load a checkpoint's weights, optimiser state and this process's random state (on every process);
    the trainer's own state in ``state`` (its resume.json) is the trainer's to load."""
    _load_trainable(trainable, checkpoint / TRAINABLE_FILE, device)
    load_optimizer_state(checkpoint / OPTIMIZER_FILE, optimizer, device)
    data_parallel.restore_rng(state, collective, checkpoint / RESUME_FILE)


def _load_trainable(trainable: Mapping[str, torch.nn.Parameter], file: Path, device: torch.device) -> None:
    saved = load_safetensors(file, device=str(device))
    missing = sorted(set(trainable) - set(saved))
    unexpected = sorted(set(saved) - set(trainable))
    misshapen = [k for k in set(saved) & set(trainable) if saved[k].shape != trainable[k].shape]
    if missing or unexpected or misshapen:
        raise CheckpointError(
            f"{file}: the saved weights do not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"other shape {misshapen[:3]}); was the model or the lora setting changed?")
    refuse_non_finite(file, saved.items())
    with torch.no_grad():
        for name, param in trainable.items():
            param.copy_(saved[name])


def check_resumable(config_file: Path, config: SupervisedConfig) -> None:
    """Refuse a resume whose config differs from the run's recorded one outside
    :data:`~ppokit.rlhf.config.SUPERVISED_RESUMABLE_FIELDS` (paths compared as absolute paths)."""
    data = dict(load_yaml(config_file))
    data.pop("launch", None)  # how the run was launched (its world size), not a config field
    saved = with_absolute_paths(from_mapping(type(config), data, str(config_file)), PATH_FIELDS)
    check_unchanged(saved, with_absolute_paths(config, PATH_FIELDS), SUPERVISED_RESUMABLE_FIELDS, str(config_file))


def resume_config(stage: str, run_dir: Path, trust: bool, overrides: Mapping[str, Any]) -> SFTConfig | RewardConfig:
    """The config an SFT or reward-training run is resumed with from its directory alone (``ppokit
    resume``): its config.yaml with ``overrides``. Refused when it turns on ``trust_remote_code`` without
    the user's consent, or when the run's data came in as a Python object (not recorded)."""
    config_file, data = recorded_config(run_dir, overrides, SUPERVISED_RESUMABLE_FIELDS | NAMED_AGAIN)
    refuse_without_consent(config_file, saved_uses(data, set(overrides)), trust,
                           "ppokit resume RUN --data FILE [--eval-data FILE]")
    if not data.get("data"):
        function = "train_sft" if stage == "sft" else "train_reward_model"
        raise ConfigError(f"{config_file}: the run's data came in as a Python object, not a file; resume it from "
                          f"Python with {function}(config, data=..., resume=True)")
    data.update(overrides)
    data["run_dir"] = str(run_dir)
    return from_mapping(CONFIGS[stage], data, str(config_file))
