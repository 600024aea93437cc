"""The ``ppokit`` command. Thin: it parses arguments and calls the library.

Every error the library raises on purpose (:class:`~ppokit.errors.PPOKitError`) is printed as one
line, ``ppokit: error: ...``, with exit code 2 and no traceback.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ppokit._version import __version__
from ppokit.cli.exit_codes import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_USAGE
from ppokit.cli.train_config import config_fields_help, resolve_train_config
from ppokit.control.config import STOP_EVAL_MIN_STEPS
from ppokit.errors import PPOKitError, TrainingInterrupted
from ppokit.launch import (
    EXIT_LOST_CONTACT,
    add_nproc_flag,
    check_nproc,
    in_worker,
    leave_processes,
    lost_contact,
    relaunch,
)
from ppokit.lifetime import die_with_parent, parent_from_environment

if TYPE_CHECKING:
    from ppokit.control.config import ControlConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ppokit", description="Proximal Policy Optimization for Gymnasium environments and causal language models."
    )
    parser.add_argument("--version", action="version", version=f"ppokit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser(
        "train", help="train an agent on a Gymnasium env (or agents on a PettingZoo env)",
        description="Train with PPO. Settings come from, in increasing priority: ppokit's defaults, "
        "the preset (the one named after ENV_ID when there is one), --config, the flags, --set.",
        epilog=config_fields_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("env_id", nargs="?", help="Gymnasium env id, or module:EnvClass; or a PettingZoo env module "
                       "(mpe2.simple_spread_v3) for a multi-agent run (default: from the preset/config)")
    train.add_argument("--preset", help="named preset (see `ppokit presets`); default: the one for ENV_ID if any")
    train.add_argument("--no-preset", action="store_true", help="ignore the env's default preset")
    train.add_argument("--config", help="YAML file of config fields")
    train.add_argument("--total-steps", type=int, help="environment steps to train for")
    train.add_argument("--seed", type=int, help="random seed")
    train.add_argument("--run-dir", help="where to write the run (default: runs/<env>__seed<N>__<time>)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override any config field (repeatable), e.g. --set learning_rate=1e-3")
    train.add_argument("--overwrite", action="store_true", help="start over in a run directory that holds a run")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --run-dir from its latest checkpoint (start it if there is none)")
    train.add_argument("--stop-at-return", type=float, metavar="R",
                       help="evaluate during training and stop once the mean return reaches R (every update, "
                            f"or every few when updates are under {STOP_EVAL_MIN_STEPS} env steps; "
                            "--set eval_every=N to choose)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--seeds", metavar="LIST", help="train these seeds together in one process (1-8, 1,3,5; in N "
                       "with --jobs N), each written to RUN_DIR/seed_<k> and equal to a run of that --seed alone (unless "
                       "--stack-updates); see docs/how-to/many-seeds.md")
    train.add_argument("--stack-updates", action="store_true",
                       help="with --seeds: run all the seeds' minibatch steps as one batched computation (faster; each "
                       "seed is then no longer bit-identical to its solo run, only equal up to float rounding at each "
                       "step). MLP policies on the NumPy fast path only; resume continues a group as it was trained")
    _add_jobs_flag(train, "with --seeds: train the seeds in N processes at once, each a share of them (one process "
                   "runs on one core; each seed is still its solo run, bit for bit)")
    add_nproc_flag(train)

    rs = sub.add_parser("resume", help="continue an interrupted run (control, RLHF PPO, SFT or reward training) from "
                        "its latest checkpoint",
                        description="Continue a run exactly where its latest checkpoint left it: weights, "
                        "optimizer, schedules, normalisation, RNGs, environments (or, for RLHF, the prompt order; for "
                        "SFT and reward training, the data order).")
    rs.add_argument("run_dir", help="the run directory")
    _add_trust_flags(rs, "resuming")
    budget = rs.add_mutually_exclusive_group()
    budget.add_argument("--total-steps", type=int, help="control and multi-agent runs: train to this many env steps "
                        "instead of the run's own total")
    budget.add_argument("--total-updates", type=int, help="RLHF runs: train to this many PPO updates instead of the run's own total")
    rs.add_argument("--data", metavar="FILE", help="RLHF runs: the data file the run names, given again to allow "
                    "reading it (else --trust)")
    rs.add_argument("--eval-data", metavar="FILE", help="SFT and reward runs: the held-out file the run names, given "
                    "again to allow reading it (else --trust)")
    rs.add_argument("--reward", dest="rewards", action="append", metavar="SOURCE",
                    help="RLHF PPO runs: the reward sources the run names, given again (repeatable, in order) to "
                    "allow calling them (else --trust)")
    rs.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_jobs_flag(rs, "a group of seeds (train --seeds): continue them in N processes at once")
    add_nproc_flag(rs)

    ev = sub.add_parser("eval", help="evaluate a saved policy and write eval.json into its run directory")
    ev.add_argument("run_dir", help="a run directory (or a model/checkpoint directory)")
    ev.add_argument("--episodes", type=int, default=20, help="episodes to play (default 20)")
    mode = ev.add_mutually_exclusive_group()
    mode.add_argument("--deterministic", dest="deterministic", action="store_true", default=True,
                      help="act with the policy's mode (default)")
    mode.add_argument("--stochastic", dest="deterministic", action="store_false", help="sample actions")
    ev.add_argument("--seed", type=int, default=None, help="seed of the evaluation envs")
    ev.add_argument("--video", metavar="DIR", help="record the episodes as videos into DIR (needs ppokit[video]; "
                    "a DIR that holds files needs --overwrite)")
    ev.add_argument("--out", metavar="FILE", help="write the result here (default: a new evals/eval_<time>.json in the "
                    "run directory, so the run's own eval.json is never replaced); never a device, FIFO, link, or "
                    "a path inside the run's model, checkpoints or tensorboard")
    ev.add_argument("--overwrite", action="store_true",
                    help="replace an existing --out file, or record into a --video DIR that holds files")
    _add_trust_flags(ev, "evaluating")

    ex = sub.add_parser("export", help="write a trained policy as an ONNX or TorchScript file that runs without ppokit",
                        description="The deterministic policy of `predict`, with the observation normalisation "
                        "and the action bounds inside (docs/how-to/export.md).")
    ex.add_argument("run_dir", help="a run directory (or a model/checkpoint directory)")
    ex.add_argument("--format", choices=["onnx", "torchscript"], default="onnx", help="file format (default onnx)")
    ex.add_argument("-o", "--output", required=True, metavar="FILE",
                    help="the file to write (not a device, FIFO, link or directory, nor inside a run's model, "
                    "checkpoints or tensorboard); a multi-agent run: a directory, given one file per policy group "
                    "(<group>.onnx or .pt) and policies.json")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing FILE (once the new one is complete)")
    ex.add_argument("--action-mask", action="store_true",
                    help="give the file an action_mask input (automatic when the policy reads masks from its observations)")

    pl = sub.add_parser("plot", help="learning curves and diagnostics of runs as a PNG (seeds of one config as a band)")
    pl.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="control or RLHF PPO run directories")
    pl.add_argument("-o", "--output", required=True, metavar="FILE.png",
                    help="the picture to write (not a device, FIFO, link or directory, nor inside a run's model, "
                    "checkpoints or tensorboard)")
    pl.add_argument("--overwrite", action="store_true", help="replace an existing FILE.png")
    pl.add_argument("--aggregate-by", action="append", metavar="FIELD",
                    help="runs on several tasks: compare groups by this config field (repeatable; default: the "
                    "fields that differ between runs of one task)")
    pl.add_argument("--score-range", action="append", default=[], metavar="TASK=LOW:HIGH",
                    help="runs on several tasks: normalise TASK's scores as (score - LOW) / (HIGH - LOW), e.g. "
                    "random and expert returns (default: the worst and best run of that task)")

    info = sub.add_parser("info", help="what a run directory holds: its task, progress, checkpoint, evaluation, state")
    info.add_argument("run_dir", help="a run directory (control or RLHF)")

    from ppokit.cli.package import add_parser as add_package_parser
    from ppokit.cli.rlhf import add_parser as add_rlhf_parser

    add_package_parser(sub)
    add_rlhf_parser(sub)

    from ppokit.cli.tune import add_parser as add_tune_parser

    add_tune_parser(sub)

    pr = sub.add_parser("presets", help="list the named presets, or show one")
    pr.add_argument("name", nargs="?", help="show this preset's settings")
    return parser


def _add_trust_flags(parser: argparse.ArgumentParser, doing: str) -> None:
    parser.add_argument("--env", metavar="ENV_ID", help=f"the env to use when {doing} (default: the one the saved run names; "
                        "a 'module:Env' id from a saved file is imported only when you give it here or pass --trust)")
    parser.add_argument("--trust", action="store_true",
                        help="allow what the saved files name to run: 'module:Env' env ids, 'module:function' "
                        "rewards and trust_remote_code (never on by default: a run directory may come from anyone)")


def _add_jobs_flag(parser: argparse.ArgumentParser, text: str) -> None:
    def count(value: str) -> int:
        if not value.isdigit() or int(value) < 1:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number of processes (1 or more)")
        return int(value)

    parser.add_argument("--jobs", type=count, default=1, metavar="N", help=text + "; see docs/how-to/many-seeds.md")


def cmd_train(args: argparse.Namespace) -> int:
    from ppokit.control.agent import PPO
    from ppokit.control.envs.make import check_env_id
    from ppokit.io.outputs import check_run_dir
    from ppokit.io.run_dir import check_resume_flags

    config, preset = resolve_train_config(args)
    multi = _is_multiagent_config(config)
    if not multi:
        check_env_id(config.env_id)
    check_resume_flags(args.resume, args.overwrite, config.run_dir)
    if config.run_dir is not None:  # before anything is made or said
        check_run_dir(config.run_dir, group=args.seeds is not None)
    if args.stack_updates and args.seeds is None:
        raise PPOKitError("--stack-updates stacks the updates of several seeds: give it with --seeds (1-4, 1,3,5)")
    if multi and args.stack_updates:
        raise PPOKitError("--stack-updates applies to control seed groups: a multi-agent group's seeds train one "
                          "after another; leave it out")
    from ppokit.control.seed_jobs import check_jobs

    check_jobs(args.jobs, args.seeds, args.stack_updates)
    if multi and args.jobs > 1:
        raise PPOKitError(f"--jobs {args.jobs} applies to control seed groups: a multi-agent group's seeds train one "
                          "after another in one process; leave it out")
    if multi:
        from ppokit.cli import multiagent

        return multiagent.train(args, config, preset, _run_learn, _eval_line)
    if args.seeds is not None:
        if in_worker():  # torchrun started this process: refuse before joining the job
            check_nproc(int(os.environ.get("WORLD_SIZE", "2")), args.seeds)
        return _train_seeds(args, config, preset)
    agent = PPO(config)
    world = agent.collective.world_size
    if agent.collective.is_main:
        print(f"ppokit: training {config.env_id} for {config.steps_trained(world_size=world)} steps"
              + (f" with preset {preset!r}" if preset else " with the general defaults")
              + (f" in {world} processes" if world > 1 else ""), file=sys.stderr)
    _run_learn(agent, overwrite=args.overwrite, resume=args.resume)
    return _report_run(agent)


def _is_multiagent_config(config: Any) -> bool:
    from ppokit.cli.multiagent import _is_multiagent_config as check

    return check(config)


def _train_seeds(args: argparse.Namespace, config: ControlConfig, preset: str | None) -> int:
    from ppokit.control.seeds import SeedGroup, parse_seeds

    seeds = parse_seeds(args.seeds)
    if args.seed is not None:
        raise PPOKitError("--seed and --seeds: give one of them")
    jobs = min(args.jobs, len(seeds))
    where = f"in {jobs} processes" if jobs > 1 else "in one process"
    print(f"ppokit: training {config.env_id} for {config.steps_trained()} steps under {len(seeds)} seeds {where}"
          + (", their updates stacked" if args.stack_updates else "")
          + (f" with preset {preset!r}" if preset else " with the general defaults"), file=sys.stderr)
    if jobs > 1:
        from ppokit.configuration import replace
        from ppokit.control.seed_jobs import SeedJob, check_group_dir, default_job_dir

        run_dir = default_job_dir(config, seeds)
        check_group_dir(run_dir, seeds)
        return _in_jobs(SeedJob(replace(config, progress=False), (), tuple(seeds), str(run_dir),
                                overwrite=args.overwrite, resume=args.resume), jobs)
    group = SeedGroup(config, seeds, stack_updates=args.stack_updates)
    _run_learn(group, overwrite=args.overwrite, resume=args.resume)
    return _report_group(group)


def _report_group(group: Any) -> int:
    return _report_seeds(group.run_dir, group.seeds)


def _report_seeds(run_dir: Path, seeds: Sequence[int]) -> int:
    print(f"run directory: {run_dir} (seeds {', '.join(map(str, seeds))}: seed_<k>)")
    for seed in seeds:
        eval_file = Path(run_dir) / f"seed_{seed}" / "eval.json"
        if eval_file.exists():
            print(f"seed {seed}: {_eval_line(json.loads(eval_file.read_text()))}")
    return 0


def _run_learn(agent: Any, **kwargs: Any) -> None:
    # What the imports and the set-up made (torch alone is ~200k objects) lives as long as the
    # process: out of the cyclic collector's sight, its passes during training and at exit are short.
    gc.freeze()
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm():  # warnings print above the bar, not through it
            agent.learn(**kwargs)
    finally:
        agent.close()


def _report_run(agent: Any) -> int:
    assert agent.run_dir is not None
    if not agent.collective.is_main:  # rank 0 reports for the job
        return 0
    print(f"run directory: {agent.run_dir}")
    eval_file = agent.run_dir / "eval.json"
    if eval_file.exists():
        result = json.loads(eval_file.read_text())
        print(_eval_line(result))
    return 0


def _eval_line(result: dict[str, Any]) -> str:
    kind = "deterministic" if result["deterministic"] else "stochastic"

    def number(value: Any) -> str:  # NaN and inf are written to JSON as null
        return "not finite (NaN/inf)" if value is None or not math.isfinite(value) else f"{value:.2f}"

    return (f"evaluation ({result['episodes']} episodes, {kind}): mean return "
            f"{number(result['mean_return'])} ± {number(result['std_return'])}")


def cmd_eval(args: argparse.Namespace) -> int:
    from ppokit.control.agent import PPO
    from ppokit.control.checkpointing import find_model_dir
    from ppokit.errors import ConfigError
    from ppokit.io.atomic import atomic_write_json
    from ppokit.io.outputs import check_output, holds_run
    from ppokit.io.run_info import refuse_group

    if args.episodes < 1:
        raise ConfigError(f"--episodes {args.episodes}: must be at least 1")
    refuse_group(args.run_dir, "eval")
    model_dir = find_model_dir(args.run_dir)
    # The default file goes to the run's own evals/ (made for it), never into a checkpoint or model
    # folder: a checkpoint is pruned, and a model folder is replaced whole on the next save.
    home = next((d for d in (model_dir, *model_dir.parents) if holds_run(d)), model_dir)
    # Both outputs are checked before the episodes are played: a bad path fails at once, not after them.
    if args.out:
        out = check_output(args.out, overwrite=args.overwrite, flag="--out")
    else:  # evals/ is made for these files; a second evaluation within the same second gets its own name
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = home / "evals" / f"eval_{stamp}.json"
        n = 1
        while out.exists() or out.is_symlink():
            n += 1
            out = home / "evals" / f"eval_{stamp}-{n}.json"
    if args.video:
        check_output(args.video, kind="dir", overwrite=args.overwrite, flag="--video")
    from ppokit.cli import multiagent

    if multiagent.is_multiagent_dir(model_dir):
        result = multiagent.load(args, model_dir).evaluate(args.episodes, deterministic=args.deterministic,
                                                           seed=args.seed)
    else:
        agent = PPO.load(model_dir, trust=args.trust, progress=False, **({"env_id": args.env} if args.env else {}))
        result = agent.evaluate(args.episodes, deterministic=args.deterministic, seed=args.seed,
                                video_dir=args.video)
    atomic_write_json(out, result)
    out = Path(args.out) if args.out else out
    print(_eval_line(result))
    if "agent_returns" in result:
        print(multiagent.agent_line(result))
    if args.video:
        print(f"videos: {args.video}")
    print(f"wrote {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ppokit.control.agent import PPO
    from ppokit.control.export import export_policy
    from ppokit.io.run_info import refuse_group

    refuse_group(args.run_dir, "export")
    from ppokit.cli import multiagent

    if multiagent.is_multiagent_dir(args.run_dir):
        return multiagent.export(args)
    # Loading makes no env, so nothing the saved files name is imported.
    agent = PPO.load(args.run_dir, progress=False)
    path = export_policy(agent, args.output, args.format, action_mask=args.action_mask or None,
                         overwrite=args.overwrite, flag="-o")
    print(f"wrote {path} ({args.format}; inputs and outputs: docs/how-to/export.md)")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from ppokit.analysis.plots import describe_estimates, draw, panels, parse_score_ranges, read_run
    from ppokit.io.outputs import check_output
    from ppokit.io.run_info import group_members

    check_output(args.output, overwrite=args.overwrite, flag="-o")
    run_dirs = [member for p in args.run_dirs for member in group_members(p) or [p]]  # a group: its seeds, a band
    figure = panels([read_run(p) for p in run_dirs], args.aggregate_by, parse_score_ranges(args.score_range))
    for line in describe_estimates(figure):
        print(line)
    print(f"wrote {draw(figure, args.output)}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ppokit.io.run_info import describe_run

    print("\n".join(describe_run(args.run_dir)))
    return 0


def _check_budget(run_dir: Path, saved: dict[str, Any], total_steps: int | None, total_updates: int | None) -> None:
    """Refuse a budget below what the run has done, before anything is loaded or written (the
    library refuses it too; here it comes before the "resuming" line and any model is read)."""
    from ppokit.errors import ConfigError

    for given, field, flag, unit in ((total_steps, "global_step", "--total-steps", "env steps"),
                                     (total_updates, "num_updates", "--total-updates", "PPO updates")):
        done = saved.get(field)
        if given is not None and isinstance(done, int) and given < done:
            raise ConfigError(f"resuming {run_dir}: {flag} {given:,} is below the {done:,} {unit} the run has "
                              f"already done; give {done:,} or more")


def _resume_in_jobs(args: argparse.Namespace, run_dir: Path) -> int:
    from ppokit.control.seed_jobs import SeedJob, check_cores
    from ppokit.control.seeds import group_stacks_updates, read_group

    check_cores(args.jobs)
    if group_stacks_updates(run_dir):
        raise PPOKitError(f"--jobs {args.jobs}: {run_dir} was trained with --stack-updates, whose seeds continue "
                          f"together in one process; leave --jobs out")
    seeds = read_group(run_dir) or []
    jobs = min(args.jobs, len(seeds))
    print(f"ppokit: continuing the {len(seeds)} seeds of {run_dir} in {jobs} processes", file=sys.stderr)
    return _in_jobs(SeedJob(None, (), tuple(seeds), str(run_dir), total_steps=args.total_steps, trust=args.trust,
                            overrides=(("progress", False),)), jobs)


def _in_jobs(job: Any, jobs: int) -> int:
    """Run a group's seeds in ``jobs`` processes (:func:`ppokit.control.seed_jobs.run_jobs`) and report them."""
    from ppokit.control.seed_jobs import run_jobs
    from ppokit.io.interrupt import EXIT_CODES
    from ppokit.lifetime import Terminated

    try:
        run_jobs(job, jobs)
    except KeyboardInterrupt as err:  # the jobs had it too: each saved a checkpoint after its update
        print(f"ppokit: interrupted; each job saved a checkpoint of its seeds after its current update: "
              f"`ppokit resume {job.run_dir} --jobs {jobs}` continues the group", file=sys.stderr)
        return EXIT_CODES["SIGTERM"] if isinstance(err, Terminated) else EXIT_INTERRUPTED
    return _report_seeds(Path(job.run_dir), job.seeds)


def cmd_resume(args: argparse.Namespace) -> int:
    from ppokit.errors import CheckpointError, ConfigError
    from ppokit.io.checkpoints import RESUME_FILE, find_resumable, read_resume_state

    run_dir = Path(args.run_dir)
    if (run_dir / "seeds.json").is_file():  # a group of seeds (train --seeds)
        from ppokit.cli import multiagent
        from ppokit.control.seeds import SeedGroup

        _refuse_rlhf_flags(args, run_dir)
        if multiagent.is_multiagent_dir(run_dir):
            if args.jobs > 1:
                raise ConfigError(f"--jobs {args.jobs}: {run_dir} is a multi-agent group, whose seeds train one after "
                                  "another in one process; leave it out")
            return multiagent.resume_group(args, _run_learn, _eval_line)
        if args.jobs > 1:
            return _resume_in_jobs(args, run_dir)
        quiet: dict[str, Any] = {"progress": False} if args.no_progress else {}
        group = SeedGroup.resume(run_dir, trust=args.trust, **quiet)
        _run_learn(group, total_steps=args.total_steps)
        return _report_group(group)
    if args.jobs > 1:
        raise ConfigError(f"--jobs {args.jobs} continues a group of seeds (train --seeds) in several processes; "
                          f"{run_dir} is one run (for one run in several processes: --nproc)")
    checkpoint = find_resumable(run_dir)
    saved = read_resume_state(checkpoint)
    kind = saved.get("kind")
    _check_budget(run_dir, saved, args.total_steps, args.total_updates)
    overrides: dict[str, Any] = {"progress": False} if args.no_progress else {}
    named_again = {"data": args.data, "eval_data": args.eval_data, "rewards": args.rewards}
    if kind not in ("ppokit.rlhf", "ppokit.rlhf.sft", "ppokit.rlhf.reward"):
        _refuse_rlhf_flags(args, run_dir)
    if kind in ("ppokit.rlhf.sft", "ppokit.rlhf.reward"):
        from ppokit.cli.rlhf import resume_supervised

        stage = "sft" if kind == "ppokit.rlhf.sft" else "reward"
        if args.total_steps is not None or args.total_updates is not None:
            raise ConfigError(f"{run_dir} is an {'SFT' if stage == 'sft' else 'reward-training'} run: it ends with its "
                              "epochs (the learning rate decays over them), so it takes no --total-steps or "
                              "--total-updates")
        if args.env is not None:
            raise ConfigError(f"{run_dir} is an RLHF run: --env applies to control runs")
        if args.rewards is not None:
            raise ConfigError(f"{run_dir} is an {'SFT' if stage == 'sft' else 'reward-training'} run: --reward "
                              "applies to RLHF PPO runs")
        overrides.update({k: v for k, v in named_again.items() if k != "rewards" and v is not None})
        return resume_supervised(run_dir, stage, overrides, trust=args.trust)
    if kind == "ppokit.rlhf":
        from ppokit.cli.rlhf import resume_ppo

        if args.total_steps is not None:
            raise ConfigError(f"{run_dir} is an RLHF run, counted in PPO updates: pass --total-updates, not --total-steps")
        if args.env is not None:
            raise ConfigError(f"{run_dir} is an RLHF run: --env applies to control runs")
        if args.eval_data is not None:
            raise ConfigError(f"{run_dir} is an RLHF PPO run: --eval-data applies to SFT and reward runs")
        if args.data is not None:
            overrides["data"] = args.data
        return resume_ppo(run_dir, args.total_updates, overrides, trust=args.trust, rewards=args.rewards)
    if kind == "ppokit.multiagent":
        from ppokit.cli import multiagent

        return multiagent.resume(args, run_dir, checkpoint, _run_learn, _eval_line)
    if kind != "ppokit.control":
        raise CheckpointError(f"{checkpoint / RESUME_FILE}: unknown run kind {kind!r}")
    if args.total_updates is not None:
        raise ConfigError(f"{run_dir} is a control run, counted in env steps: pass --total-steps, not --total-updates")
    from ppokit.control.agent import PPO

    if args.env is not None:
        overrides["env_id"] = args.env
    agent = PPO.resume(run_dir, trust=args.trust, **overrides)
    if agent.collective.is_main:
        print(f"ppokit: resuming {agent.config.env_id} at step {agent.global_step} from {checkpoint}", file=sys.stderr)
    _run_learn(agent, total_steps=args.total_steps)
    return _report_run(agent)


def _refuse_rlhf_flags(args: argparse.Namespace, run_dir: Path) -> None:
    from ppokit.errors import ConfigError

    flags = {"--data": args.data, "--eval-data": args.eval_data, "--reward": args.rewards}
    given = [flag for flag, value in flags.items() if value is not None]
    if given:
        raise ConfigError(f"{run_dir} is a control run: {', '.join(given)} apply to RLHF runs")


def cmd_presets(args: argparse.Namespace) -> int:
    from ppokit.control.presets import list_presets, preset_path

    if args.name:
        print(preset_path(args.name).read_text(encoding="utf-8"), end="")
        return 0
    presets = list_presets()
    width = max(len(n) for n in presets)
    for name, description in presets.items():
        print(f"{name:<{width}}  {description}")
    return 0


def cmd_package(args: argparse.Namespace) -> int:
    from ppokit.cli.package import run

    return run(args)


def cmd_tune(args: argparse.Namespace) -> int:
    from ppokit.cli.tune import run

    return run(args)


def cmd_rlhf(args: argparse.Namespace) -> int:
    from ppokit.cli.rlhf import run

    return run(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO, format="ppokit: %(levelname)s: %(message)s")
    if in_worker():
        die_with_parent(parent_from_environment())  # no worker outlives its launcher
    elif getattr(args, "nproc", 1) != 1:
        try:
            check_nproc(args.nproc, getattr(args, "seeds", None))
            from ppokit.cli.multiagent import refuse_processes

            refuse_processes(args)
        except PPOKitError as err:
            print(f"ppokit: error: {err}", file=sys.stderr)
            return EXIT_USAGE
        return relaunch(sys.argv[1:] if argv is None else argv, args.nproc)
    handlers = {"train": cmd_train, "eval": cmd_eval, "presets": cmd_presets, "export": cmd_export, "info": cmd_info,
                "plot": cmd_plot, "package": cmd_package, "rlhf": cmd_rlhf, "resume": cmd_resume,
                "tune": cmd_tune}
    try:
        code = handlers[args.command](args)
        leave_processes()  # a torchrun job's process: leave the job before the interpreter tears it down
        return code
    except TrainingInterrupted as err:
        from ppokit.io.interrupt import EXIT_CODES

        print(f"ppokit: {err}", file=sys.stderr)
        return EXIT_CODES.get(err.signal_name, EXIT_INTERRUPTED)
    except PPOKitError as err:
        print(f"ppokit: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # Whoever read our output stopped (`ppokit presets | head -3`): end quietly, as Unix tools do,
        # with stdout pointed away so the interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("ppokit: interrupted at once; the files written so far are intact (every save is atomic); "
              "`ppokit resume RUN_DIR` continues from the latest checkpoint, and `--resume` starts the run "
              "over if it stopped before its first one", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        message = lost_contact(err)
        if message is None:
            raise
        print(f"ppokit: error: {message}", file=sys.stderr)
        return EXIT_LOST_CONTACT


if __name__ == "__main__":
    sys.exit(main())
