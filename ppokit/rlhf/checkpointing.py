"""Resumable checkpoints of an RLHF PPO run.

``RUN_DIR/checkpoints/update_<N>`` holds ``trainable.safetensors`` (the weights that train: the
policy or its LoRA adapter, and the critic or value head), ``optimizer.pt`` (read with
``weights_only=True``), ``policy/`` and ``value_model/`` as usable models, and ``resume.json``
(KL controller, prompt position, RNGs, history, health), written last so its presence marks a
complete checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ppokit.errors import CheckpointError
from ppokit.io.atomic import atomic_write_dir
from ppokit.io.checkpoints import RESUME_FILE, checkpoint_path, load_torch_state, prune_checkpoints
from ppokit.io.rng import rng_state, set_rng_state

if TYPE_CHECKING:
    from ppokit.rlhf.trainer import RLHFTrainer

#: Version of an RLHF checkpoint's resume.json (2: updates counted as in control, the health monitor).
RESUME_FORMAT = 2
KIND = "ppokit.rlhf"
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"


def save_checkpoint(trainer: RLHFTrainer) -> Path:
    """Write a resumable checkpoint; keeps the newest ``keep_checkpoints``."""
    from safetensors.torch import save_model

    assert trainer.run_dir is not None
    state = {
        "format": RESUME_FORMAT, "kind": KIND, "num_updates": trainer.num_updates,
        "kl_coef": trainer.kl_coef,
        "kl_controller": trainer.kl_controller.state_dict() if trainer.kl_controller is not None else None,
        "prompts": trainer.prompts.state_dict(), "rng": rng_state(), "history": trainer.history,
        "health": trainer.health.state_dict(),
    }

    def fill(tmp: Path) -> None:
        save_model(trainer.models.trainable, str(tmp / TRAINABLE_FILE))
        torch.save(trainer.optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        trainer.save(tmp)
        # Written last: its presence marks the checkpoint complete.
        (tmp / RESUME_FILE).write_text(json.dumps(state) + "\n", encoding="utf-8")

    path = checkpoint_path(trainer.run_dir, trainer.num_updates)
    atomic_write_dir(path, fill)
    prune_checkpoints(trainer.run_dir, trainer.config.keep_checkpoints)
    return path


def restore(trainer: RLHFTrainer, checkpoint: Path, state: dict[str, Any]) -> None:
    """Load a checkpoint of this run into a freshly built trainer."""
    from safetensors.torch import load_model

    file = checkpoint / TRAINABLE_FILE
    try:
        missing, unexpected = load_model(trainer.models.trainable, str(file), strict=False, device=str(trainer.device))
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for bad files
        raise CheckpointError(f"{file}: not a readable safetensors file ({err})") from None
    bad = [name for name, p in trainer.models.trainable.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise CheckpointError(f"{file}: holds non-finite values (NaN or inf) in {', '.join(bad[:3])}"
                              f"{' and more' if len(bad) > 3 else ''}; refusing to resume from them")
    if missing or unexpected:
        raise CheckpointError(
            f"{file}: the saved weights do not fit this model (missing {list(missing)[:3]}, "
            f"unexpected {list(unexpected)[:3]}); was the policy, value_model or lora setting changed?"
        )
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
        set_rng_state(state["rng"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{checkpoint / RESUME_FILE}: bad resume state ({type(err).__name__}: {err})") from None
