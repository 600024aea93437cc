"""What a run directory holds, in a few lines (``ppokit info``), read from its files alone.

Only YAML and JSON are read: nothing the files name is imported, and neither torch nor an env is
loaded, so it answers at once for any run, finished, interrupted or foreign.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from ppokit.errors import CheckpointError
from ppokit.io.checkpoints import CHECKPOINTS, PREFIX, latest_checkpoint
from ppokit.io.metrics import read_rows
from ppokit.urls import redact_text

log = logging.getLogger("ppokit")


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file a run wrote: None when it is absent or not an object; unreadable → CheckpointError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except RecursionError:
        raise CheckpointError(f"{path}: nested too deeply to be a run's file") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not a UTF-8 text file") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable ({err})") from None
    return data if isinstance(data, dict) else None


def metrics_rows(path: Path, key: str | None = None) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl, for every command that reads one (``info``, ``plot``, ``package``);
    [] if there is none yet. Damaged lines (:func:`ppokit.io.metrics.parse_row`; with ``key``, rows
    without that counter too) are skipped, with one warning naming the file, how many and the
    first; a torn final line, from a killed run, is skipped silently."""
    try:
        rows, skipped = read_rows(path, key)
    except FileNotFoundError:
        return []
    except OSError as err:
        raise CheckpointError(f"{path}: unreadable ({err.strerror or err})") from None
    if skipped:
        line, why = skipped[0]
        log.warning("%s: skipped %d damaged line%s (line %d: %s)", path, len(skipped), "s" * (len(skipped) > 1),
                    line, why)
    return rows


def _first_line(err: BaseException) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"line {mark.line + 1}: {problem}" if mark is not None else str(problem)


def run_kind(config: dict[str, Any]) -> str:
    """'control', 'rlhf ppo', 'reward' or 'sft', from the fields a run's config.yaml has. A multi-agent
    run is 'control' here (the same counters, curves and files; :func:`is_multiagent_config` tells it apart)."""
    if "env_id" in config:
        return "control"
    if "total_updates" in config:
        return "rlhf ppo"
    if "chosen_column" in config:
        return "reward"
    if "response_column" in config:
        return "sft"
    raise CheckpointError("config.yaml is not the config of a ppokit run (no env_id, total_updates or data columns)")


#: Fields only a multi-agent run's config has (``ppokit.multiagent.MultiAgentConfig``).
MULTIAGENT_FIELDS = ("critic", "policies")


def is_multiagent_config(config: dict[str, Any]) -> bool:
    """Whether a run's config.yaml is a multi-agent run's (PettingZoo env, ``ppokit.multiagent``)."""
    return "env_id" in config and all(field in config for field in MULTIAGENT_FIELDS)


def read_config(run_dir: Path) -> tuple[dict[str, Any], str]:
    """A run's config.yaml as plain data (nothing it names is imported) and the run's kind."""
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise CheckpointError(f"{run_dir}: not a ppokit run directory (no config.yaml)")
    try:
        config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{config_file}: not a UTF-8 text file") from None
    except RecursionError:
        raise CheckpointError(f"{config_file}: nested too deeply to be a run's config") from None
    except yaml.YAMLError as err:
        raise CheckpointError(f"{config_file}: invalid YAML ({_first_line(err)})") from None
    except OSError as err:
        raise CheckpointError(f"{config_file}: unreadable ({err.strerror or err})") from None
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
    if (run_dir / GROUP_FILE).is_file() and not (run_dir / "config.yaml").exists():
        return describe_group(run_dir)
    config, kind = read_config(run_dir)
    rows = metrics_rows(run_dir / "metrics.jsonl", {"control": "global_step", "rlhf ppo": "update"}.get(kind))
    last = rows[-1] if rows else None
    latest = latest_checkpoint(run_dir)
    checkpoint = (f"{CHECKPOINTS}/{latest.name}", int(latest.name[len(PREFIX):])) if latest else None
    launch: dict[str, Any] = config["launch"] if isinstance(config.get("launch"), dict) else {}
    world = _count(launch, "world_size", run_dir / "config.yaml", default=1)
    lines = [f"{run_dir}: {_what(kind, config)} (seed {config.get('seed')}"
             + (f", {world} processes)" if world > 1 else ")")]
    done = False
    if kind == "control":
        batch = (_count(launch, "global_batch_size", run_dir / "config.yaml", default=0)
                 or _count(config, "num_envs", run_dir / "config.yaml") * _count(config, "num_steps", run_dir / "config.yaml"))
        planned = _count(config, "total_steps", run_dir / "config.yaml") // max(batch, 1) * batch
        step = int(last["global_step"]) if last else 0
        lines.append(f"progress: {step:,} of {planned:,} env steps ({last.get('update', '?') if last else 0} updates)")
        state = read_json(run_dir / "model" / "state.json")
        done = state is not None and _count(state, "global_step", run_dir / "model", default=-1) >= planned
        if is_multiagent_config(config):
            lines.append(_groups(run_dir, state))
    elif kind == "rlhf ppo":
        update, total = int(last["update"]) if last else 0, _count(config, "total_updates", run_dir / "config.yaml")
        lines.append(f"progress: {update} of {total} PPO updates")
        summary = read_json(run_dir / "summary.json")
        done = summary is not None and _count(summary, "updates", run_dir / "summary.json", default=-1) >= total
    else:
        step = int(last["step"]) if last and isinstance(last.get("step"), int) else 0
        lines.append(f"progress: {step} optimiser steps")
        # Written once the model is saved: summary.json (and eval.json, by reward training), with the
        # steps done of all the run's steps (a run stopped early by a callback saved its model too).
        summary = read_json(run_dir / "summary.json") or read_json(run_dir / "eval.json")
        done = (run_dir / "model").is_dir() and summary is not None and (
            _count(summary, "steps", run_dir, default=0) >= _count(summary, "total_steps", run_dir, default=0))
    lines.append(f"latest checkpoint: {checkpoint[0]} (update {checkpoint[1]})" if checkpoint
                 else "latest checkpoint: none")
    try:
        lines.append(_evaluation(kind, run_dir))
    except (TypeError, ValueError):  # a value that is not a number: say so rather than guess
        lines.append("last evaluation: unreadable (its file holds values that are not numbers)")
    if done:
        lines.append("state: finished")
    elif checkpoint:
        nproc = f" --nproc {world}" if world > 1 else ""
        lines.append(f"state: stopped before the end; continue it with: ppokit resume {run_dir}{nproc}")
    else:
        lines.append("state: not finished, and no checkpoint to resume from")
    return lines


#: What ``train --seeds`` writes beside its ``seed_<k>`` run directories (ppokit.control.seeds).
GROUP_FILE = "seeds.json"


def describe_group(run_dir: Path) -> list[str]:
    """``ppokit info`` of a group of seeds trained together: the group, then each seed's progress
    and state in a line, then how to continue the group if it has not finished."""
    group = read_json(run_dir / GROUP_FILE)
    seeds = group.get("seeds") if group else None
    if not isinstance(seeds, list) or not seeds or not all(isinstance(k, int) and not isinstance(k, bool) for k in seeds):
        raise CheckpointError(f"{run_dir / GROUP_FILE}: not a seed group's file (no list of seeds)")
    multi = group is not None and group.get("front_end") == "multiagent"  # trained one after another
    together = "together, their updates stacked" if group is not None and group.get("stack_updates") is True else "together"
    lines = [f"{run_dir}: a group of {len(seeds)} seeds trained {'one after another' if multi else together} "
             f"({', '.join(map(str, seeds))}; {GROUP_FILE}), {'multi-agent' if multi else 'control'} PPO on "
             f"{group.get('env_id') if group else '?'}"]
    finished = True
    for seed in seeds:
        member = run_dir / f"seed_{seed}"
        if not (member / "config.yaml").is_file():
            lines.append(f"seed_{seed}: missing")
            finished = False
            continue
        described = describe_run(member)
        progress = next((line for line in described if line.startswith("progress: ")), "progress: ?")
        state = described[-1]
        finished = finished and state == "state: finished"
        lines.append(f"seed_{seed}: {progress[len('progress: '):]}; {state[len('state: '):].split(';')[0]}")
    lines.append("state: finished" if finished else
                 f"state: not finished; continue the group with: ppokit resume {run_dir}")
    return lines


def _count(data: dict[str, Any], field: str, where: Path, default: int | None = None) -> int:
    """A whole number a run's file records (``data[field]``), or ``default`` when absent; anything
    else is damage, named in one line."""
    value = data.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > 2**63:
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:37]}..."
        raise CheckpointError(f"{where}: {field} is {shown}, not a whole number (a damaged run file)")
    return value


def _what(kind: str, config: dict[str, Any]) -> str:
    if kind == "control" and is_multiagent_config(config):
        return f"multi-agent PPO ({str(config['critic']).upper()}) on {config['env_id']}"
    if kind == "control":
        return f"control PPO on {config['env_id']}"
    if kind == "rlhf ppo":
        rewards = ", ".join(redact_text(str(r)) for r in config.get("rewards") or []) or "none"
        return f"RLHF PPO of {config.get('policy')} on {config.get('data')} (rewards: {rewards})"
    return f"{'reward model' if kind == 'reward' else 'supervised fine-tuning'} of {config.get('model')} on {config.get('data')}"


def _groups(run_dir: Path, state: dict[str, Any] | None) -> str:
    """The policy groups and their agents, as the run's saved model (or its latest checkpoint) records them."""
    if state is None:
        latest = latest_checkpoint(run_dir)
        state = read_json(latest / "state.json") if latest is not None else None
    groups = state.get("groups") if state is not None else None
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        return "policies: not saved yet"
    return "policies: " + "; ".join(f"{g.get('name')} -> {', '.join(map(str, g.get('agents') or []))}" for g in groups)


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


def group_members(run_dir: str | Path) -> list[Path] | None:
    """The seed runs of a group of seeds (``train --seeds``: ``seeds.json`` and ``seed_<k>``), in its
    order, those that exist; None when ``run_dir`` is not a group."""
    group = Path(run_dir)
    if not (group / "seeds.json").is_file():
        return None
    data = read_json(group / "seeds.json")
    seeds = data.get("seeds") if isinstance(data, dict) else None
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise CheckpointError(f"{group / 'seeds.json'}: not a seed group's file (no list of seeds)")
    return [group / f"seed_{s}" for s in seeds if (group / f"seed_{s}").is_dir()]


def refuse_group(run_dir: str | Path, command: str) -> None:
    """``command`` takes one run: a group of seeds is refused in one line naming its members."""
    members = group_members(run_dir)
    if members is not None:
        names = ", ".join(m.name for m in members) or "no seed runs yet"
        example = members[0] if members else Path(run_dir) / "seed_<k>"
        raise CheckpointError(f"{run_dir}: is a group of seeds ({names}); `ppokit {command}` takes one run: give one "
                              f"of them, e.g. {example}")
