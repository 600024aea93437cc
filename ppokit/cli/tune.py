"""``ppokit tune``: argument parsing for the hyperparameter study (the work is in :mod:`ppokit.control.tune.sweep`).

The base config every trial starts from is resolved exactly as ``ppokit train`` resolves its config:
ppokit's defaults, the preset (the env's own unless ``--preset``/``--no-preset``), ``--config``,
the flags, ``--set``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

SPACE_HELP = """\
search space (--space FILE.yaml: entries replace or add to the default space; `default_space: false`
at the top starts from an empty one):
  learning_rate: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
  num_epochs: {type: int, low: 3, high: 10}
  hidden_sizes: {type: categorical, choices: [[64, 64], [128, 128]]}
  gamma: 0.99        # a plain value fixes the field
default space: learning_rate, num_steps, num_minibatches, num_epochs, gamma, gae_lambda, clip_range,
ent_coef (discrete actions only), hidden_sizes. A num_minibatches that does not divide the batch is
replaced by the nearest divisor that does.

Every trial trains with the base seed (--seed), so trials differ only in their hyperparameters and
best.yaml reproduces the best one; check the winner on other seeds."""


def add_parser(sub: Any) -> None:
    """Register ``tune`` on the ``ppokit`` command's subparsers."""
    p = sub.add_parser(
        "tune", help="search PPO hyperparameters with an Optuna study (needs ppokit[tune])",
        description="An Optuna study over PPO hyperparameters. Each trial trains a run in OUT/trial_NNNN, is\n"
        "evaluated every --eval-every steps (the pruner stops poor ones) and is worth its final deterministic\n"
        "mean return. Writes OUT/best.yaml (for `ppokit train --config`) and OUT/trials.jsonl. With --storage\n"
        "the study resumes: the same command runs only the missing trials. The base config every trial\n"
        "starts from comes from the defaults, the preset, --config, the flags and --set, as for `ppokit train`.",
        epilog=SPACE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("env_id", nargs="?", help="Gymnasium env id, or module:EnvClass (default: from --config)")
    p.add_argument("--trials", type=int, default=20,
                   help="trials the study should hold, complete or pruned (default 20); a resumed study runs the rest")
    p.add_argument("--study", help="study name (default: ppokit-<env>)")
    p.add_argument("--storage", metavar="URL",
                   help="Optuna storage, e.g. sqlite:///tune.db (default: in memory; OUT/study.db with --jobs > 1)")
    p.add_argument("--jobs", type=int, default=1, metavar="J", help="worker processes running trials at once (default 1)")
    p.add_argument("--space", metavar="FILE.yaml", help="search space entries over the default space (see below)")
    p.add_argument("--preset", help="named preset the base config starts from (default: the one for ENV_ID if any)")
    p.add_argument("--no-preset", action="store_true", help="ignore the env's default preset")
    p.add_argument("--config", help="YAML file of config fields for the base config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base config field (repeatable), e.g. --set num_envs=8")
    p.add_argument("--total-steps", type=int, help="environment steps per trial (default: the base config's)")
    p.add_argument("--eval-every", type=int, metavar="STEPS",
                   help="env steps between a trial's evaluations for the pruner (default: a fifth of the steps; 0: none)")
    p.add_argument("--eval-episodes", type=int, default=10, help="episodes per evaluation (default 10)")
    p.add_argument("--seed", type=int, help="seed of every trial and of the sampler (default: the base config's)")
    p.add_argument("--out", metavar="DIR", help="where trial runs and results go (default: runs/tune-<study>); "
                   "a directory, never inside a run's model, checkpoints or tensorboard")
    p.add_argument("--pruner", choices=["median", "none"], default="median",
                   help="median (default): from a trial's second evaluation on, once 5 trials have finished, stop it "
                        "when its return is below the median of the others' at the same step")


def run(args: argparse.Namespace) -> int:
    """Resolve the base config like ``ppokit train``, run the study, print the best trials."""
    from ppokit.cli.exit_codes import EXIT_INTERRUPTED
    from ppokit.cli.train_config import resolve_train_config
    from ppokit.control.envs.make import check_env_id
    from ppokit.control.tune.study import TuneSettings, require_optuna
    from ppokit.control.tune.sweep import summary, tune
    from ppokit.control.tune.workers import Terminated
    from ppokit.errors import TrainingError, TrainingInterrupted
    from ppokit.io.interrupt import EXIT_CODES

    require_optuna()  # before any work: the one thing a plain install lacks
    if args.out is not None:  # a study resumes into its --out, so one that holds files is expected
        from ppokit.io.outputs import check_output

        check_output(args.out, kind="dir", must_be_empty=False, flag="--out", study=True)
    train_args = argparse.Namespace(
        env_id=args.env_id, preset=args.preset, no_preset=args.no_preset, config=args.config,
        total_steps=args.total_steps, seed=args.seed, run_dir=None, no_progress=False, stop_at_return=None,
        overrides=args.overrides,
    )
    base, _preset = resolve_train_config(train_args)
    check_env_id(base.env_id)
    settings = TuneSettings(trials=args.trials, study=args.study, storage=args.storage, jobs=args.jobs, out=args.out,
                            eval_every=args.eval_every, eval_episodes=args.eval_episodes, pruner=args.pruner)
    try:
        result = tune(base, args.space, settings)
    except (KeyboardInterrupt, TrainingInterrupted) as err:
        kept = settings.resolved(base).storage
        print("ppokit: interrupted; " + (f"the study keeps its finished trials in {kept}: run the same command "
                                         "again to run the missing ones" if kept else
                                         "the study was in memory and is lost (--storage sqlite:///FILE keeps one)"),
              file=sys.stderr)
        sigterm = isinstance(err, Terminated) or getattr(err, "signal_name", None) == "SIGTERM"
        return EXIT_CODES["SIGTERM"] if sigterm else EXIT_INTERRUPTED
    print("\n".join(summary(result)))
    if result.best_file is None:
        raise TrainingError(f"no trial of study {result.settings.study!r} has completed (all pruned or failed), so "
                            "there is no best.yaml; run more trials (a larger --trials), or --pruner none")
    return 0
