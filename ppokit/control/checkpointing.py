"""What a control run saves, and reading it back: the format, given the parts it is made of.

A saved policy (``RUN_DIR/model``, ``RUN_DIR/best``) is a directory of ``model.safetensors`` (the
policy's weights and the observation/return normalisers) and ``state.json`` (config, spaces,
counters, controller state). A resumable checkpoint (``RUN_DIR/checkpoints/update_<N>``) adds
``optimizer.pt`` (read with ``weights_only=True``) and ``resume.json``: RNG states, the rollout
collector's and the envs' state, the health monitor, written last so its presence marks a
complete checkpoint. Every directory is written atomically.

The functions take and return the parts (the policy, the normalisers, the optimiser, the collector,
the counters, plain dicts of state); :class:`~ppokit.control.agent.PPO` puts them together.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ppokit._version import __version__
from ppokit.configuration import from_mapping, to_dict
from ppokit.control.config import ControlConfig
from ppokit.control.envs.spaces import space_from_json, space_to_json
from ppokit.control.envs.state import capture_env_state, restore_env_state
from ppokit.control.envs.torch_env import capture_torch_env_state, restore_torch_env_state
from ppokit.control.policy.networks import ActorCritic
from ppokit.control.rollout.collectors import Collector
from ppokit.core.collective import Collective, check_world_size, gather_rank_states, rank_state
from ppokit.core.optim import Optimizer
from ppokit.core.running_stats import RunningMeanStd
from ppokit.errors import CheckpointError, ConfigError
from ppokit.io.atomic import atomic_write_dir, recover_dir, strict_json
from ppokit.io.checkpoints import (
    RESUME_FILE,
    checkpoint_path,
    load_optimizer_state,
    load_safetensors,
    prune_checkpoints,
    read_resume_state,
    refuse_non_finite,
)
from ppokit.io.rng import rng_state, set_rng_state
from ppokit.io.state_codec import decode, encode

log = logging.getLogger("ppokit")

#: Versions of state.json and resume.json (2: the vocabulary shared with RLHF, the health monitor's state).
CHECKPOINT_FORMAT = 2
RESUME_FORMAT = 2
KIND = "ppokit.control"
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"


@dataclass
class Spaces:
    """The spaces a policy was built for: what it observes and does, and what the env gives (the
    observation before an action mask is taken out of it)."""

    observation: Any
    action: Any
    env_observation: Any


@dataclass
class Counters:
    """Where a run stands: env steps and updates done, the step budget, the best periodic evaluation."""

    global_step: int = 0
    num_updates: int = 0
    total_steps: int | None = None
    best_eval_return: float | None = None


# ---------------------------------------------------------------------------------------------- saving

def policy_tensors(policy: ActorCritic, obs_rms: RunningMeanStd | None,
                   ret_rms: RunningMeanStd | None) -> dict[str, torch.Tensor]:
    """``model.safetensors``: the policy's weights and the normalisers' statistics."""
    # clone: the parameters may be views of one buffer (FlatAdam), and safetensors refuses shared memory.
    tensors = {f"policy.{k}": v.detach().cpu().clone() for k, v in policy.state_dict().items()}
    for name, rms in (("obs_rms", obs_rms), ("ret_rms", ret_rms)):
        if rms is not None:
            tensors.update({f"{name}.{k}": v.contiguous() for k, v in rms.state_dict().items()})
    return tensors


def model_state(config: ControlConfig, spaces: Spaces, policy: ActorCritic, counters: Counters, torch_env: bool,
                algorithm_state: Mapping[str, Any]) -> dict[str, Any]:
    """``state.json``: what the weights need to be used again."""
    return {
        "format": CHECKPOINT_FORMAT,
        "kind": KIND,
        "ppokit_version": __version__,
        "config": to_dict(config),
        "observation_space": space_to_json(spaces.observation),
        "action_space": space_to_json(spaces.action),
        "env_observation_space": (None if spaces.env_observation is spaces.observation
                                  else space_to_json(spaces.env_observation)),
        "global_step": counters.global_step,
        "num_updates": counters.num_updates,
        "action_mask": policy.spec.action_mask,
        "critic_obs_shape": list(policy.spec.critic_obs_shape),
        # A torch env's id is made by calling its class; load() must know that before it may import it.
        "torch_env": torch_env,
        **algorithm_state,
    }


def save_model(path: str | Path, tensors: Mapping[str, torch.Tensor], state: Mapping[str, Any],
               optimizer: Optimizer | None = None, extra: Callable[[Path], None] | None = None) -> Path:
    """Write a saved policy (``tensors``, ``state``, with ``optimizer``'s state for a checkpoint) to
    directory ``path``, atomically; ``extra(tmp)`` adds files before it is moved into place."""
    path = Path(path)

    def fill(tmp: Path) -> None:
        save_file(dict(tensors), str(tmp / MODEL_FILE))
        (tmp / STATE_FILE).write_text(strict_json(state, indent=2) + "\n", encoding="utf-8")
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        if extra is not None:
            extra(tmp)

    atomic_write_dir(path, fill)
    return path


def save_best(path: Path, tensors: Mapping[str, torch.Tensor], state: Mapping[str, Any],
              result: Mapping[str, Any]) -> None:
    """The policy with the best periodic evaluation so far, with that evaluation's eval.json."""

    def extra(tmp: Path) -> None:
        (tmp / "eval.json").write_text(strict_json(result, indent=2) + "\n", encoding="utf-8")

    save_model(path, tensors, state, extra=extra)


def rollout_state(env: Any, collector: Collector, torch_env: bool) -> dict[str, Any]:
    """What one process holds of its own: its RNGs, its collector's and its envs' state (or why the
    envs' cannot be saved)."""
    env_state, why = capture_torch_env_state(env) if torch_env else capture_env_state(env)
    return {"rng": rng_state(), "collector": encode(collector.state_dict()), "env": env_state, "env_not_saved": why}


def save_checkpoint(run_dir: Path, tensors: Mapping[str, torch.Tensor], state: Mapping[str, Any],
                    optimizer: Optimizer, counters: Counters, health: Mapping[str, Any], own: Mapping[str, Any],
                    collective: Collective, keep: int) -> Path:
    """A resumable checkpoint ``run_dir/checkpoints/update_<N>``; keeps the newest ``keep``. Every
    process calls it with its ``own`` :func:`rollout_state`; they are gathered to rank 0, which writes."""
    per_rank = gather_rank_states(collective, dict(own))
    path = checkpoint_path(run_dir, counters.num_updates)
    if not collective.is_main:
        return path
    resume_state = {
        "format": RESUME_FORMAT,
        "kind": KIND,
        "global_step": counters.global_step,
        "num_updates": counters.num_updates,
        "total_steps": counters.total_steps,
        "best_eval_return": counters.best_eval_return,
        "health": dict(health),
        **per_rank,
    }

    def write_resume(tmp: Path) -> None:
        # Written last: its presence marks the checkpoint complete (see io.checkpoints).
        (tmp / RESUME_FILE).write_text(json.dumps(resume_state) + "\n", encoding="utf-8")

    save_model(path, tensors, state, optimizer=optimizer, extra=write_resume)
    prune_checkpoints(run_dir, keep)
    return path


# ---------------------------------------------------------------------------------------------- reading

def find_model_dir(path: str | Path) -> Path:
    """The saved policy in ``path``: the directory itself, or its ``model`` folder (a run directory)."""
    path = recover_dir(path)
    if not path.exists():
        raise CheckpointError(f"run or model directory {str(path)!r} does not exist")
    recover_dir(path / "model")
    for candidate in (path, path / "model"):
        if (candidate / STATE_FILE).is_file():
            return candidate
    raise CheckpointError(
        f"{str(path)!r} holds no saved policy (expected {STATE_FILE} and {MODEL_FILE} in it or in its "
        "'model' folder; was training finished or checkpointed?)"
    )


def read_state(model_dir: Path) -> dict[str, Any]:
    """A saved policy's ``state.json``, checked to be a control checkpoint of a format this ppokit reads."""
    file = model_dir / STATE_FILE
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file}: unreadable checkpoint metadata ({err})") from None
    if not isinstance(state, Mapping) or state.get("kind") != KIND:
        raise CheckpointError(f"{file}: not a ppokit control checkpoint")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{file}: checkpoint format {state.get('format')!r} is not supported by ppokit {__version__} "
            f"(expected {CHECKPOINT_FORMAT})"
        )
    if not isinstance(state.get("config"), Mapping):
        raise CheckpointError(f"{file}: checkpoint has no config")
    return dict(state)


def saved_spaces(model_dir: Path, state: Mapping[str, Any]) -> Spaces:
    """The policy's observation and action spaces, and the env's observation space, as saved."""
    try:
        observation_space = space_from_json(state["observation_space"])
        action_space = space_from_json(state["action_space"])
        saved_env_space = state.get("env_observation_space")
        env_space = space_from_json(saved_env_space) if saved_env_space else observation_space
    except (KeyError, TypeError, ValueError, CheckpointError) as err:
        raise CheckpointError(f"{model_dir / STATE_FILE}: bad saved spaces ({err})") from None
    return Spaces(observation_space, action_space, env_space)


def saved_config(model_dir: Path, state: Mapping[str, Any], overrides: Mapping[str, Any]) -> ControlConfig:
    try:
        return from_mapping(ControlConfig, {**state["config"], **overrides}, f"{model_dir / STATE_FILE}")
    except ConfigError as err:
        raise CheckpointError(f"{model_dir}: saved config is not valid for this ppokit: {err}") from None


def saved_counters(model_dir: Path, state: Mapping[str, Any]) -> Counters:
    """The env steps and updates a saved policy was trained for."""
    try:
        return Counters(global_step=int(state.get("global_step", 0)), num_updates=int(state.get("num_updates", 0)))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{model_dir / STATE_FILE}: bad counters ({err})") from None


def load_policy(model_dir: Path, policy: ActorCritic, obs_rms: RunningMeanStd | None,
                ret_rms: RunningMeanStd | None) -> None:
    """Weights and normaliser statistics from ``model.safetensors``; non-finite ones are refused."""
    file = model_dir / MODEL_FILE
    tensors = load_safetensors(file)
    refuse_non_finite(file, tensors.items(), "refusing to load weights that cannot act")
    policy_state = {k[len("policy."):]: v for k, v in tensors.items() if k.startswith("policy.")}
    try:
        policy.load_state_dict(policy_state)
    except RuntimeError as err:
        raise CheckpointError(f"{file}: weights do not fit the configured network: {err}") from None
    for name, rms in (("obs_rms", obs_rms), ("ret_rms", ret_rms)):
        if rms is not None:
            try:
                rms.load_state_dict({k: tensors[f"{name}.{k}"] for k in ("mean", "var", "count")})
            except (KeyError, ValueError) as err:
                raise CheckpointError(f"{file}: missing or bad {name} statistics ({err})") from None


def load_optimizer(model_dir: Path, optimizer: Optimizer, device: torch.device) -> None:
    """The optimiser's state, when the directory holds one (a checkpoint)."""
    if (model_dir / OPTIMIZER_FILE).exists():
        load_optimizer_state(model_dir / OPTIMIZER_FILE, optimizer, device)


@dataclass
class ResumeState:
    """A checkpoint's ``resume.json``, as this process resumes from it."""

    counters: Counters
    health: Mapping[str, Any]
    #: This process's own part (:func:`rollout_state`).
    own: Mapping[str, Any]
    file: Path

    @property
    def envs_saved(self) -> bool:
        return self.own["env"] is not None


def read_resume(checkpoint: Path, collective: Collective) -> ResumeState:
    """The resume state of ``checkpoint``, refused when another number of processes wrote it."""
    file = checkpoint / RESUME_FILE
    resume = read_resume_state(checkpoint, KIND, RESUME_FORMAT)
    check_world_size(resume, collective, file, "envs and random state")
    try:
        own = rank_state(resume, collective)
        counters = Counters(int(resume["global_step"]), int(resume["num_updates"]), resume["total_steps"],
                            resume["best_eval_return"])
        return ResumeState(counters, resume["health"], own, file)
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise CheckpointError(f"{file}: bad or incompatible resume state ({type(err).__name__}: {err})") from None


def restore_rollout(saved: ResumeState, env: Any, collector: Collector, torch_env: bool) -> None:
    """Put the envs, the collector and the RNGs back as the checkpoint left them. Envs whose state could
    not be saved start fresh (seeded) episodes; the finished episodes' statistics carry over."""
    own = saved.own
    try:
        if saved.envs_saved:
            (restore_torch_env_state if torch_env else restore_env_state)(env, own["env"])
            collector.load_state_dict(decode(own["collector"]))
        else:
            log.warning("resuming with fresh episodes, not bit-identically: %s", own["env_not_saved"])
            collector.episodes.carry_over(decode(own["collector"]))
        set_rng_state(own["rng"])
    except CheckpointError as err:
        raise CheckpointError(f"{saved.file}: {err}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{saved.file}: bad or incompatible resume state ({type(err).__name__}: {err})") from None
