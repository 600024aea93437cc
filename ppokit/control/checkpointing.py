"""Saving, loading and resuming a control agent.

A saved policy (``RUN_DIR/model``, ``RUN_DIR/best``) is a directory of ``model.safetensors`` (the
policy's weights and the observation/return normalisers) and ``state.json`` (config, spaces,
counters, controller state). A resumable checkpoint (``RUN_DIR/checkpoints/update_<N>``) adds
``optimizer.pt`` (read with ``weights_only=True``) and ``resume.json``: RNG states, the rollout
collector's and the envs' state, the health monitor, written last so its presence marks a
complete checkpoint. Every directory is written atomically.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

from ppokit._version import __version__
from ppokit.configuration import check_unchanged, from_mapping, to_dict
from ppokit.control.config import RESUMABLE_FIELDS, ControlConfig
from ppokit.control.envs.spaces import space_from_json, space_to_json
from ppokit.control.envs.state import capture_env_state, restore_env_state
from ppokit.control.envs.torch_env import capture_torch_env_state, restore_torch_env_state
from ppokit.core.collective import check_world_size, gather_rank_states, rank_state
from ppokit.errors import CheckpointError, ConfigError
from ppokit.io.atomic import atomic_write_dir, recover_dir
from ppokit.io.checkpoints import (
    RESUME_FILE,
    checkpoint_path,
    load_safetensors,
    load_torch_state,
    prune_checkpoints,
    read_resume_state,
    refuse_non_finite,
)
from ppokit.io.rng import rng_state, set_rng_state
from ppokit.io.state_codec import decode, encode

if TYPE_CHECKING:
    from ppokit.control.agent import PPO

log = logging.getLogger("ppokit")

#: Versions of state.json and resume.json (2: the vocabulary shared with RLHF, the health monitor's state).
CHECKPOINT_FORMAT = 2
RESUME_FORMAT = 2
KIND = "ppokit.control"
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"


def _tensors(agent: PPO) -> dict[str, torch.Tensor]:
    # clone: the parameters may be views of one buffer (FlatAdam), and safetensors refuses shared memory.
    tensors = {f"policy.{k}": v.detach().cpu().clone() for k, v in agent.policy.state_dict().items()}
    for name, rms in (("obs_rms", agent.obs_rms), ("ret_rms", agent.ret_rms)):
        if rms is not None:
            tensors.update({f"{name}.{k}": v.contiguous() for k, v in rms.state_dict().items()})
    return tensors


def _state(agent: PPO) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "kind": KIND,
        "ppokit_version": __version__,
        "config": to_dict(agent.config),
        "observation_space": space_to_json(agent.observation_space),
        "action_space": space_to_json(agent.action_space),
        "env_observation_space": (None if agent.env_observation_space is agent.observation_space
                                  else space_to_json(agent.env_observation_space)),
        "global_step": agent.global_step,
        "num_updates": agent.num_updates,
        "action_mask": agent.policy.spec.action_mask,
        "critic_obs_shape": list(agent.policy.spec.critic_obs_shape),
        # A torch env's id is made by calling its class; load() must know that before it may import it.
        "torch_env": agent.torch_env,
        **agent.algorithm.state_dict(),
    }


def save_model(agent: PPO, path: str | Path, include_optimizer: bool = False,
               extra: Callable[[Path], None] | None = None) -> Path:
    """Write the policy (safetensors) and its metadata (JSON) to directory ``path``, atomically."""
    path = Path(path)

    def fill(tmp: Path) -> None:
        save_file(_tensors(agent), str(tmp / MODEL_FILE))
        (tmp / STATE_FILE).write_text(json.dumps(_state(agent), indent=2) + "\n", encoding="utf-8")
        if include_optimizer:
            torch.save(agent.algorithm.optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        if extra is not None:
            extra(tmp)

    atomic_write_dir(path, fill)
    return path


def finish_run(agent: PPO, metrics: Any) -> None:
    """The end of ``learn()``: save the model and the final evaluation (eval.json), and give them to the trackers."""
    assert agent.run_dir is not None
    c = agent.config
    agent.save(agent.run_dir / "model")
    result = agent._final_eval
    if result is None and c.eval_episodes > 0:
        result = agent.evaluate(c.eval_episodes, deterministic=c.eval_deterministic)
    if result is not None:
        from ppokit.io.atomic import atomic_write_json

        atomic_write_json(agent.run_dir / "eval.json", result)
    metrics.finish({f"eval/{k}": v for k, v in (result or {}).items()}, agent.run_dir / "model")


def save_checkpoint(agent: PPO) -> Path:
    """A resumable checkpoint of the agent's run; keeps the newest ``keep_checkpoints``."""
    assert agent.run_dir is not None and agent.collector is not None and agent.env is not None
    env_state, why = capture_torch_env_state(agent.env) if agent.torch_env else capture_env_state(agent.env)
    # What each process of a data-parallel run holds of its own (gathered to rank 0, which writes).
    own = {"rng": rng_state(), "collector": encode(agent.collector.state_dict()), "env": env_state, "env_not_saved": why}
    per_rank = gather_rank_states(agent.collective, own)
    path = checkpoint_path(agent.run_dir, agent.num_updates)
    if not agent.collective.is_main:
        return path
    resume_state = {
        "format": RESUME_FORMAT,
        "kind": KIND,
        "global_step": agent.global_step,
        "num_updates": agent.num_updates,
        "total_steps": agent.total_steps,
        "best_eval_return": agent.best_eval_return,
        "health": agent.health.state_dict(),
        **per_rank,
    }

    def write_resume(tmp: Path) -> None:
        # Written last: its presence marks the checkpoint complete (see io.checkpoints).
        (tmp / RESUME_FILE).write_text(json.dumps(resume_state) + "\n", encoding="utf-8")

    save_model(agent, path, include_optimizer=True, extra=write_resume)
    prune_checkpoints(agent.run_dir, agent.config.keep_checkpoints)
    return path


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


def saved_spaces(model_dir: Path, state: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """The policy's observation and action spaces, and the env's observation space, as saved."""
    try:
        observation_space = space_from_json(state["observation_space"])
        action_space = space_from_json(state["action_space"])
        saved_env_space = state.get("env_observation_space")
        env_space = space_from_json(saved_env_space) if saved_env_space else observation_space
    except (KeyError, TypeError, ValueError, CheckpointError) as err:
        raise CheckpointError(f"{model_dir / STATE_FILE}: bad saved spaces ({err})") from None
    return observation_space, action_space, env_space


def saved_config(model_dir: Path, state: Mapping[str, Any], overrides: Mapping[str, Any]) -> ControlConfig:
    try:
        return from_mapping(ControlConfig, {**state["config"], **overrides}, f"{model_dir / STATE_FILE}")
    except ConfigError as err:
        raise CheckpointError(f"{model_dir}: saved config is not valid for this ppokit: {err}") from None


def load_weights(agent: PPO, model_dir: Path, state: Mapping[str, Any]) -> None:
    """Weights, normaliser statistics, counters, controllers and (if saved) optimizer state."""
    _load_tensors(agent, model_dir)
    try:
        agent.global_step = int(state.get("global_step", 0))
        agent.num_updates = int(state.get("num_updates", 0))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{model_dir / STATE_FILE}: bad counters ({err})") from None
    agent.algorithm.load_state_dict(dict(state), str(model_dir / STATE_FILE))
    optimizer_path = model_dir / OPTIMIZER_FILE
    if optimizer_path.exists():
        try:
            agent.algorithm.optimizer.load_state_dict(load_torch_state(optimizer_path, agent.device))
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"{optimizer_path}: optimizer state does not fit this network ({err})") from None


def _load_tensors(agent: PPO, model_dir: Path) -> None:
    file = model_dir / MODEL_FILE
    tensors = load_safetensors(file)
    refuse_non_finite(file, tensors.items(), "refusing to load weights that cannot act")
    policy_state = {k[len("policy."):]: v for k, v in tensors.items() if k.startswith("policy.")}
    try:
        agent.policy.load_state_dict(policy_state)
    except RuntimeError as err:
        raise CheckpointError(f"{file}: weights do not fit the configured network: {err}") from None
    for name, rms in (("obs_rms", agent.obs_rms), ("ret_rms", agent.ret_rms)):
        if rms is not None:
            try:
                rms.load_state_dict({k: tensors[f"{name}.{k}"] for k in ("mean", "var", "count")})
            except (KeyError, ValueError) as err:
                raise CheckpointError(f"{file}: missing or bad {name} statistics ({err})") from None


def restore_latest(agent: PPO, run_dir: Path) -> bool:
    """``learn(resume=True)``: restore the run's latest checkpoint into a freshly built agent. A run
    stopped before its first checkpoint has nothing to continue from: returns True (start it over)."""
    from ppokit.io.checkpoints import latest_checkpoint
    from ppokit.io.run_dir import holds_run

    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None:
        restore_checkpoint(agent, checkpoint, run_dir)
        return False
    if holds_run(run_dir):
        log.warning("%s holds a run stopped before its first checkpoint; starting it over", run_dir)
        return True
    return False


def save_best(agent: PPO, path: Path, result: dict[str, Any]) -> None:
    """The policy with the best periodic evaluation so far, with that evaluation's eval.json."""

    def extra(tmp: Path) -> None:
        (tmp / "eval.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    save_model(agent, path, extra=extra)


def restore_checkpoint(agent: PPO, checkpoint: Path, run_dir: Path) -> None:
    """Load a checkpoint of this same run into a freshly built agent."""
    state = read_state(checkpoint)
    check_unchanged(saved_config(checkpoint, state, {}), agent.config, RESUMABLE_FIELDS, str(checkpoint))
    load_weights(agent, checkpoint, state)
    restore_training(agent, checkpoint, run_dir)
    agent.total_steps = agent.config.total_steps  # the budget given now, not the one saved



def restore_training(agent: PPO, checkpoint: Path, run_dir: Path) -> None:
    """The state beyond the weights: counters, health, envs, collector, RNGs (``resume.json``)."""
    file = checkpoint / RESUME_FILE
    resume = read_resume_state(checkpoint, KIND, RESUME_FORMAT)
    check_world_size(resume, agent.collective, file, "envs and random state")
    own = rank_state(resume, agent.collective)
    try:
        agent.total_steps = resume["total_steps"]
        agent.best_eval_return = resume["best_eval_return"]
        agent.health.load_state_dict(resume["health"])
        # No reset when the env state is restored: a reset would feed its observations into
        # the restored normalisation statistics.
        agent.ensure_env(reset=own["env"] is None)
        assert agent.collector is not None
        if own["env"] is not None:
            (restore_torch_env_state if agent.torch_env else restore_env_state)(agent.env, own["env"])
            agent.collector.load_state_dict(decode(own["collector"]))
        else:
            # Envs whose state cannot be saved start fresh (seeded) episodes; the statistics of
            # finished episodes carry over.
            log.warning("resuming with fresh episodes, not bit-identically: %s", own["env_not_saved"])
            agent.collector.episodes.carry_over(decode(own["collector"]))
        set_rng_state(own["rng"])
    except CheckpointError as err:
        raise CheckpointError(f"{file}: {err}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{file}: bad or incompatible resume state ({type(err).__name__}: {err})") from None
    agent.run_dir = run_dir
    agent.resume_from = checkpoint
