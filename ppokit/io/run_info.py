"""What a run directory holds, in a few lines (``ppokit info``), read from its files alone.

Only YAML and JSON are read: nothing the files name is imported, and neither torch nor an env is
loaded, so it answers at once for any run, finished, interrupted or foreign.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ppokit.errors import CheckpointError
from ppokit.io.checkpoints import CHECKPOINTS, PREFIX, latest_checkpoint
from ppokit.urls import redact_text


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file a run wrote: None when it is absent or not an object; unreadable → CheckpointError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable ({err})") from None
    return data if isinstance(data, dict) else None


def metrics_rows(path: Path) -> list[dict[str, Any]]:
    """The complete rows of a metrics.jsonl (a torn final line, from a killed run, is skipped); [] if
    there is none yet."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except OSError as err:
        raise CheckpointError(f"{path}: unreadable ({err})") from None
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def run_kind(config: dict[str, Any]) -> str:
    """'control', 'rlhf ppo', 'reward' or 'sft', from the fields a run's config.yaml has."""
    if "env_id" in config:
        return "control"
    if "total_updates" in config:
        return "rlhf ppo"
    if "chosen_column" in config:
        return "reward"
    if "response_column" in config:
        return "sft"
    raise CheckpointError("config.yaml is not the config of a ppokit run (no env_id, total_updates or data columns)")


def read_config(run_dir: Path) -> tuple[dict[str, Any], str]:
    """A run's config.yaml as plain data (nothing it names is imported) and the run's kind."""
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise CheckpointError(f"{run_dir}: not a ppokit run directory (no config.yaml)")
    try:
        config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise CheckpointError(f"{config_file}: unreadable ({err})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file}: not a mapping of config fields")
    try:
        return config, run_kind(config)
    except CheckpointError as err:
        raise CheckpointError(f"{config_file}: {err}") from None


def describe_run(run_dir: str | Path) -> list[str]:
    """A few lines: what the run trains, how far it got of how far, its latest checkpoint, its last
    evaluation, and whether it finished (with the command that continues it if not)."""
    run_dir = Path(run_dir)
    config, kind = read_config(run_dir)
    rows = metrics_rows(run_dir / "metrics.jsonl")
    last = rows[-1] if rows else None
    latest = latest_checkpoint(run_dir)
    checkpoint = (f"{CHECKPOINTS}/{latest.name}", int(latest.name[len(PREFIX):])) if latest else None
    launch: dict[str, Any] = config["launch"] if isinstance(config.get("launch"), dict) else {}
    world = int(launch.get("world_size", 1))
    lines = [f"{run_dir}: {_what(kind, config)} (seed {config.get('seed')}"
             + (f", {world} processes)" if world > 1 else ")")]
    done = False
    if kind == "control":
        batch = int(launch.get("global_batch_size") or int(config["num_envs"]) * int(config["num_steps"]))
        planned = int(config["total_steps"]) // batch * batch
        step = int(last["global_step"]) if last else 0
        lines.append(f"progress: {step:,} of {planned:,} env steps ({last['update'] if last else 0} updates)")
        state = read_json(run_dir / "model" / "state.json")
        done = state is not None and int(state.get("global_step", -1)) >= planned
    elif kind == "rlhf ppo":
        update, total = int(last["update"]) if last else 0, int(config["total_updates"])
        lines.append(f"progress: {update} of {total} PPO updates")
        summary = read_json(run_dir / "summary.json")
        done = summary is not None and int(summary.get("updates", -1)) >= total
    else:
        step = int(last["step"]) if last and "step" in last else 0
        lines.append(f"progress: {step} optimiser steps")
        # Written once the model is saved: summary.json (and eval.json, by reward training), with the
        # steps done of all the run's steps (a run stopped early by a callback saved its model too).
        summary = read_json(run_dir / "summary.json") or read_json(run_dir / "eval.json")
        done = (run_dir / "model").is_dir() and summary is not None and (
            int(summary.get("steps", 0)) >= int(summary.get("total_steps", 0)))
    lines.append(f"latest checkpoint: {checkpoint[0]} (update {checkpoint[1]})" if checkpoint
                 else "latest checkpoint: none")
    lines.append(_evaluation(kind, run_dir))
    if done:
        lines.append("state: finished")
    elif checkpoint:
        nproc = f" --nproc {world}" if world > 1 else ""
        lines.append(f"state: stopped before the end; continue it with: ppokit resume {run_dir}{nproc}")
    else:
        lines.append("state: not finished, and no checkpoint to resume from")
    return lines


def _what(kind: str, config: dict[str, Any]) -> str:
    if kind == "control":
        return f"control PPO on {config['env_id']}"
    if kind == "rlhf ppo":
        rewards = ", ".join(redact_text(str(r)) for r in config.get("rewards") or []) or "none"
        return f"RLHF PPO of {config.get('policy')} on {config.get('data')} (rewards: {rewards})"
    return f"{'reward model' if kind == 'reward' else 'supervised fine-tuning'} of {config.get('model')} on {config.get('data')}"


def _evaluation(kind: str, run_dir: Path) -> str:
    if kind == "rlhf ppo":
        summary = read_json(run_dir / "summary.json")
        if summary is None:
            return "last evaluation: none (summary.json is written at the end)"
        return (f"last evaluation: score {summary.get('score_first'):.4g} → {summary.get('score_last'):.4g}, "
                f"KL to the reference {summary.get('kl_last'):.4g} (summary.json)")
    result = read_json(run_dir / "eval.json")
    if result is None:
        return "last evaluation: none"
    if kind == "control":
        return (f"last evaluation: mean return {result.get('mean_return'):.4g} ± {result.get('std_return'):.3g} over "
                f"{result.get('episodes')} episodes at step {result.get('global_step'):,} (eval.json)")
    shown = ", ".join(f"{k} {v:.4g}" for k, v in result.items() if isinstance(v, (int, float)))
    return f"last evaluation: {shown} (eval.json)"
