"""The ``ppokit`` commands on multi-agent runs (PettingZoo envs, ``ppokit.multiagent``): train (one
seed, or ``--seeds`` one after another), eval, resume, export. The same shapes as control's; what
differs is said in one line each in docs/reference/cli.md.

Which front end a ``train`` is for is decided once, in :func:`ppokit.cli.train_config.is_multiagent`;
a saved run says it itself (``state.json``'s kind, :func:`ppokit.multiagent.checkpointing.is_multiagent`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ppokit.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from ppokit.control.export import Format
    from ppokit.multiagent import MultiAgentConfig, MultiAgentPPO

#: What ``seeds.json`` of a group of multi-agent seeds says its front end is (control's has none).
FRONT_END = "multiagent"


# ---------------------------------------------------------------------------------------- which runs

def is_multiagent_dir(path: str | Path) -> bool:
    """Whether ``path`` (a run, a model or checkpoint directory, or a group of seeds) is a multi-agent
    run's, from what it wrote (state.json's kind, seeds.json's front end); nothing is imported."""
    from ppokit.control.checkpointing import find_model_dir
    from ppokit.io.checkpoints import latest_checkpoint
    from ppokit.multiagent.checkpointing import is_multiagent

    path = Path(path)
    group = _read_group(path)
    if group is not None:
        return group.get("front_end") == FRONT_END
    candidates = [path, path / "model"]
    latest = latest_checkpoint(path) if path.is_dir() else None
    if latest is not None:
        candidates.append(latest)
    try:
        candidates.append(find_model_dir(path))
    except (CheckpointError, ConfigError, OSError):
        pass
    return any(is_multiagent(c) for c in candidates)


def refuse_processes(args: argparse.Namespace) -> None:
    """``resume GROUP --nproc N`` of a group of multi-agent seeds: refused in one line before any process
    starts, as ``train --seeds --nproc`` is (a group's seeds train in one process, one after another)."""
    if args.command == "resume" and (Path(args.run_dir) / "seeds.json").is_file() and is_multiagent_dir(args.run_dir):
        raise ConfigError(f"--nproc {args.nproc}: {args.run_dir} is a group of seeds, which trains in one process, "
                          "seed after seed; resume one seed's run with --nproc instead (RUN_DIR/seed_<k>)")


def _is_multiagent_config(config: Any) -> bool:
    from ppokit.multiagent import MultiAgentConfig

    return isinstance(config, MultiAgentConfig)


# ---------------------------------------------------------------------------------------- train

def train(args: argparse.Namespace, config: MultiAgentConfig, preset: str | None,
          run_learn: Callable[..., None], eval_line: Callable[[dict[str, Any]], str]) -> int:
    """``ppokit train`` of a multi-agent config: one run (in each process of ``--nproc``), or ``--seeds``
    one after another."""
    if args.seeds is not None:
        return _train_seeds(args, config, preset, run_learn, eval_line)
    from ppokit.multiagent import MultiAgentPPO

    agent = MultiAgentPPO(config)
    world = agent.collective.world_size
    if agent.collective.is_main:
        print(f"ppokit: training {config.env_id} (multi-agent, {config.critic.upper()}) for "
              f"{config.steps_trained(world_size=world)} env steps"
              + (f" with preset {preset!r}" if preset else " with the general defaults")
              + (f" in {world} processes" if world > 1 else ""), file=sys.stderr)
    run_learn(agent, overwrite=args.overwrite, resume=args.resume)
    return report_run(agent, eval_line)


def report_run(agent: MultiAgentPPO, eval_line: Callable[[dict[str, Any]], str]) -> int:
    assert agent.run_dir is not None
    if not agent.collective.is_main:  # rank 0 reports for the job
        return 0
    print(f"run directory: {agent.run_dir}")
    eval_file = agent.run_dir / "eval.json"
    if eval_file.exists():
        result = json.loads(eval_file.read_text(encoding="utf-8"))
        print(eval_line(result))
        print(agent_line(result))
    return 0


def agent_line(result: dict[str, Any]) -> str:
    """Each agent's mean return, as eval.json records it."""
    agents = result.get("agent_returns") or {}
    return "per agent: " + ", ".join(f"{a} {v:.2f}" for a, v in agents.items()) if agents else "per agent: none"


def _train_seeds(args: argparse.Namespace, config: MultiAgentConfig, preset: str | None,
                 run_learn: Callable[..., None], eval_line: Callable[[dict[str, Any]], str]) -> int:
    from ppokit.configuration import to_dict
    from ppokit.control.seeds import default_group_dir, parse_seeds

    seeds = parse_seeds(args.seeds)
    if args.seed is not None:
        raise ConfigError("--seed and --seeds: give one of them")
    root = Path(config.run_dir or default_group_dir(config.env_id.replace(":", "."), seeds))
    print(f"ppokit: training {config.env_id} (multi-agent, {config.critic.upper()}) for {config.steps_trained()} env "
          f"steps under {len(seeds)} seeds, one after another"
          + (f" with preset {preset!r}" if preset else " with the general defaults"), file=sys.stderr)
    _prepare_group(root, seeds, args.overwrite, args.resume)
    from ppokit.configuration import replace
    from ppokit.io.atomic import atomic_write_json
    from ppokit.io.run_info import GROUP_FILE

    saved = {k: v for k, v in to_dict(replace(config, run_dir=None)).items() if k != "seed"}
    atomic_write_json(root / GROUP_FILE, {"kind": "ppokit.seeds", "front_end": FRONT_END, "env_id": config.env_id,
                                          "seeds": seeds, "runs": [f"seed_{s}" for s in seeds], "config": saved})
    _run_members(root, seeds, lambda seed: _fresh(config, seed), run_learn, overwrite=args.overwrite,
                 resume=args.resume, total_steps=None)
    return _report_group(root, seeds, eval_line)


def _fresh(config: MultiAgentConfig, seed: int) -> MultiAgentPPO:
    from ppokit.configuration import replace
    from ppokit.multiagent import MultiAgentPPO

    return MultiAgentPPO(replace(config, seed=seed, run_dir=None))


def _prepare_group(root: Path, seeds: list[int], overwrite: bool, resume: bool) -> None:
    """Refuse, before any seed trains, a directory whose group or seed runs this one would mix with;
    with ``overwrite``, the old group's other seeds go."""
    from ppokit.control.seeds import lock_members, read_group, remove_member
    from ppokit.io.run_dir import holds_run

    old = read_group(root) if root.is_dir() else None
    if resume:
        if old is not None and old != seeds:
            raise ConfigError(f"{root} holds the seed group {old}, not {seeds}; resume it with `ppokit resume {root}`")
        return
    members = [root / f"seed_{s}" for s in seeds]
    stale = [p for p in sorted(root.glob("seed_*")) if p not in members and holds_run(p)] if root.is_dir() else []
    held = [m for m in members if holds_run(m)] + stale
    if held and not overwrite:
        raise CheckpointError(f"{root} holds {'the seed group ' + str(old) if old else 'seed runs'} ({held[0].name} ...); "
                              f"continue it with `ppokit resume {root}`, choose another --run-dir, or pass --overwrite "
                              f"to replace it by seeds {seeds}")
    for member, lock in zip(stale, lock_members(stale)):
        remove_member(member, lock)


def _run_members(root: Path, seeds: list[int], build: Callable[[int], MultiAgentPPO], run_learn: Callable[..., None],
                 *, overwrite: bool, resume: bool, total_steps: int | None) -> None:
    from ppokit.io.run_info import describe_run

    for seed in seeds:
        member = root / f"seed_{seed}"
        if (resume and total_steps is None and (member / "config.yaml").is_file()
                and describe_run(member)[-1] == "state: finished"):
            continue  # a finished seed of a resumed group stays as it is, unless given a larger budget
        print(f"ppokit: seed {seed} -> {member}", file=sys.stderr)
        run_learn(build(seed), total_steps=total_steps, run_dir=member, overwrite=overwrite, resume=resume)


def _report_group(root: Path, seeds: list[int], eval_line: Callable[[dict[str, Any]], str]) -> int:
    print(f"run directory: {root} (seeds {', '.join(map(str, seeds))}: seed_<k>)")
    for seed in seeds:
        eval_file = root / f"seed_{seed}" / "eval.json"
        if eval_file.exists():
            print(f"seed {seed}: {eval_line(json.loads(eval_file.read_text(encoding='utf-8')))}")
    return 0


def _read_group(path: Path) -> dict[str, Any] | None:
    from ppokit.io.run_info import GROUP_FILE, read_json

    return read_json(path / GROUP_FILE) if (path / GROUP_FILE).is_file() else None


# ---------------------------------------------------------------------------------------- resume

def resume_group(args: argparse.Namespace, run_learn: Callable[..., None],
                 eval_line: Callable[[dict[str, Any]], str]) -> int:
    """``ppokit resume GROUP`` of multi-agent seeds: each unfinished seed in turn, from its latest
    checkpoint (or from the start, for a seed the group had not reached)."""
    from ppokit.configuration import from_mapping
    from ppokit.control.seeds import read_group
    from ppokit.io.run_info import GROUP_FILE
    from ppokit.multiagent import MultiAgentConfig
    from ppokit.multiagent.envs import require_consent

    root = Path(args.run_dir)
    seeds = read_group(root) or []
    group = _read_group(root) or {}
    if args.total_updates is not None:
        raise ConfigError(f"{root} is a group of multi-agent runs, counted in env steps: pass --total-steps, not "
                          "--total-updates")
    saved = group.get("config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{root / GROUP_FILE}: no config of the group's runs")
    overrides: dict[str, Any] = {"progress": False} if args.no_progress else {}
    if args.env is not None:
        overrides["env_id"] = args.env
    config = from_mapping(MultiAgentConfig, {**saved, **overrides}, str(root / GROUP_FILE))
    if not args.trust and args.env is None:
        require_consent(config.env_id, str(root / GROUP_FILE))
    print(f"ppokit: resuming the group of seeds {', '.join(map(str, seeds))} in {root}, one after another",
          file=sys.stderr)
    _run_members(root, seeds, lambda seed: _fresh(config, seed), run_learn, overwrite=False, resume=True,
                 total_steps=args.total_steps)
    return _report_group(root, seeds, eval_line)


def resume(args: argparse.Namespace, run_dir: Path, checkpoint: Path, run_learn: Callable[..., None],
           eval_line: Callable[[dict[str, Any]], str]) -> int:
    """``ppokit resume RUN_DIR`` of a multi-agent run."""
    from ppokit.multiagent import MultiAgentPPO

    if args.total_updates is not None:
        raise ConfigError(f"{run_dir} is a multi-agent run, counted in env steps: pass --total-steps, not "
                          "--total-updates")
    overrides: dict[str, Any] = {"progress": False} if args.no_progress else {}
    if args.env is not None:
        overrides["env_id"] = args.env
    agent = MultiAgentPPO.resume(run_dir, trust=args.trust, **overrides)
    if agent.collective.is_main:
            print(f"ppokit: resuming {agent.config.env_id} (multi-agent) at step {agent.global_step} from {checkpoint}",
              file=sys.stderr)
    run_learn(agent, total_steps=args.total_steps)
    return report_run(agent, eval_line)


# ---------------------------------------------------------------------------------------- eval

def load(args: argparse.Namespace, model_dir: Path) -> MultiAgentPPO:
    """The saved multi-agent policy ``ppokit eval`` plays; ``--trust``/``--env`` as for control."""
    from ppokit.multiagent import MultiAgentPPO

    if args.video:
        raise ConfigError("--video: recording is not supported for multi-agent runs yet (PettingZoo envs render "
                          "through their own render_mode)")
    return MultiAgentPPO.load(model_dir, trust=args.trust, progress=False, **({"env_id": args.env} if args.env else {}))


# ---------------------------------------------------------------------------------------- export

def _file_name(group: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in group) or "group"


def export_targets(groups: list[str], out_dir: str | Path, fmt: Format, *, overwrite: bool = False,
                   flag: str = "-o") -> list[Path]:
    """The file of each of ``groups`` in ``out_dir``, the directory and every file in it (and
    policies.json) checked as outputs first: a directory that holds files needs ``overwrite``, which
    replaces the files of these names and leaves the others."""
    from ppokit.io.outputs import check_output

    # The directory as any directory output (one that holds files needs --overwrite), then each file
    # in it (never a link, FIFO or directory of that name, even with --overwrite).
    out = check_output(out_dir, kind="dir", overwrite=overwrite, flag=flag)
    names = [_file_name(g) for g in groups]
    if len(set(names)) != len(names):
        names = [f"{n}_{i}" for i, n in enumerate(names)]
    targets = [out / f"{n}{'.onnx' if fmt == 'onnx' else '.pt'}" for n in names]
    for target in [*targets, out / "policies.json"]:
        check_output(target, overwrite=True, flag=flag)
    return targets


def export_groups(agent: MultiAgentPPO, out_dir: str | Path, fmt: Format, action_mask: bool | None = None, *,
                  overwrite: bool = False, flag: str = "-o") -> list[tuple[Path, Any]]:
    """Write each policy group's deterministic policy to ``out_dir/<group>.onnx`` (``.pt`` for
    TorchScript), and ``out_dir/policies.json``: each group's file, agents (in the order of their
    ``agent_id`` one-hot) and inputs. Every path is checked before anything is written; returns
    ``(path, group)`` pairs."""
    from ppokit.control.export import PolicyParts, export_parts, input_names
    from ppokit.io.atomic import atomic_write_json

    out = Path(out_dir)
    targets = export_targets([g.group.name for g in agent.groups], out_dir, fmt, overwrite=overwrite, flag=flag)
    written = []
    listing = []
    for group, target in zip(agent.groups, targets):
        parts = PolicyParts(group.policy, group.reader.observation_space, group.group.action_space, group.obs_rms,
                            float(group.config.clip_obs), group.ids)
        mask = group.policy.spec.action_mask if action_mask is None else action_mask
        path = export_parts(parts, target, fmt, mask, overwrite=True, flag=flag)
        listing.append({"group": group.group.name, "file": path.name, "agents": list(group.agents),
                        "inputs": input_names(mask, group.policy.core is not None, group.ids)})
        written.append((path, group))
    atomic_write_json(out / "policies.json", {"format": fmt, "groups": listing})
    return written


def export(args: argparse.Namespace) -> int:
    """``ppokit export RUN_DIR -o DIR`` of a multi-agent run: one file per policy group."""
    from ppokit.control.checkpointing import find_model_dir
    from ppokit.multiagent import MultiAgentPPO
    from ppokit.multiagent.checkpointing import read_state

    model_dir = find_model_dir(args.run_dir)
    # Every output is checked before the policy is loaded (state.json names the groups: JSON only).
    groups = [str(g.get("name")) for g in read_state(model_dir).get("groups") or [] if isinstance(g, dict)]
    export_targets(groups, args.output, args.format, overwrite=args.overwrite)
    # Exporting makes no env, so nothing the saved files name is imported or called: the factory
    # given in place of the saved env id (which load would otherwise want consent for) is never called.
    agent = MultiAgentPPO.load(model_dir, env=_no_env)
    for path, group in export_groups(agent, args.output, args.format, action_mask=args.action_mask or None,
                                     overwrite=args.overwrite):
        print(f"wrote {path} ({args.format}; group {group.group.name!r}: {', '.join(group.agents)})")
    print(f"wrote {Path(args.output) / 'policies.json'} (each group's file, agents and inputs; docs/how-to/export.md)")
    return 0


def _no_env() -> Any:
    raise AssertionError("export makes no env")
