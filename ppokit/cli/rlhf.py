"""``ppokit rlhf sft|reward|ppo|demo|serve-reward``: argument parsing for the language-model stages.

Settings come from, in increasing priority: the config dataclass's defaults, ``--config`` (YAML),
the flags, ``--set key=value``. ``--nproc N`` runs a stage as N data-parallel processes (``ppokit.cli.main``
relaunches the command with torchrun's launcher); only rank 0 prints.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ppokit.io.atomic import strict_json
from ppokit.launch import add_nproc_flag

STAGES = {
    "sft": ("SFTConfig", "supervised fine-tuning on prompt/response pairs (loss on the response)"),
    "reward": ("RewardConfig", "train a reward model from preference pairs, rankings or ratings"),
    "ppo": ("RLHFConfig", "PPO against a reward model or a Python reward function"),
}


def _config_class(stage: str) -> type:
    from ppokit.rlhf import config

    return getattr(config, STAGES[stage][0])


def _fields_help(stage: str) -> str:
    from ppokit.configuration import fields_help

    return fields_help(_config_class(stage))


def add_parser(sub: Any) -> None:
    rlhf = sub.add_parser("rlhf", help="tune a causal language model: sft, reward, ppo, demo, serve-reward",
                          description="RLHF for causal language models (needs ppokit[rlhf]).")
    stages = rlhf.add_subparsers(dest="stage", metavar="STAGE")
    for stage, (_cls, help_text) in STAGES.items():
        p = stages.add_parser(stage, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
                              epilog=_fields_help(stage), formatter_class=argparse.RawDescriptionHelpFormatter)
        if stage == "ppo":
            p.add_argument("--policy", help="hub id or directory of the policy (e.g. the SFT run's model/)")
            p.add_argument("--reward", dest="rewards", action="append", metavar="SOURCE",
                           help="reward-model directory, module:function or http(s):// reward server (repeatable; "
                                "combine with --set reward_weights=[...])")
            p.add_argument("--total-updates", type=int, help="PPO updates to run")
        else:
            p.add_argument("--model", help="hub id or directory of the model to start from")
        p.add_argument("--data", help="JSONL, JSON, CSV or Parquet file")
        if stage == "reward":
            p.add_argument("--eval-data", help="held-out preference file")
        p.add_argument("--config", help="YAML file of config fields")
        p.add_argument("--seed", type=int, help="random seed")
        p.add_argument("--run-dir", help="where to write the run (default: runs/rlhf-<stage>__seed<N>__<time>)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override any config field (repeatable)")
        p.add_argument("--overwrite", action="store_true", help="start over in a run directory that holds a run")
        p.add_argument("--resume", action="store_true",
                       help="continue the run in --run-dir from its latest checkpoint (start it if there is none)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        add_nproc_flag(p)
    demo = stages.add_parser("demo", help="the whole pipeline on a tiny model built from scratch, offline, in minutes",
                             description="Build a tokenizer and a tiny GPT-2, SFT it, train a reward model on "
                             "preferences from a hidden rule, PPO against it, and show the hidden rule's score rise.")
    demo.add_argument("--run-dir", default="runs/rlhf-demo", help="where to write the demo's runs (default runs/rlhf-demo)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--total-updates", type=int, default=60, help="PPO updates (default 60)")
    demo.add_argument("--overwrite", action="store_true", help="run again in an output directory that holds a demo")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    serve = stages.add_parser(
        "serve-reward", help="serve a reward model over HTTP, for --reward http://HOST:PORT/score",
        description="Serve a ppokit reward model (from `ppokit rlhf reward`) or a sequence-classification model "
        "with one label over HTTP: POST /score {\"prompts\": [...], \"completions\": [...]} answers "
        "{\"scores\": [...]}; GET /health answers {\"status\": \"ok\"}. Ctrl-C or SIGTERM stops it.")
    serve.add_argument("model_dir", metavar="MODEL_DIR", help="reward-model directory (or hub id)")
    serve.add_argument("--port", type=int, required=True, help="port to listen on (0 picks a free one)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for every interface)")
    serve.add_argument("--device", default="auto", help="'auto' (cuda when available), 'cpu', 'cuda' or 'cuda:N'")
    serve.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                       help="weights dtype (default auto: bfloat16 on a GPU that supports it, else float32)")
    serve.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default 64)")
    serve.add_argument("--trust-remote-code", action="store_true", help="allow the model's own Python code to run")
    from ppokit.rlhf.rewards.server import ServerLimits  # the standard library only: the parser stays fast

    limits = ServerLimits()
    serve.add_argument("--max-body-bytes", type=int, default=limits.max_body_bytes,
                       help=f"largest request body; larger gets 413 (default {limits.max_body_bytes})")
    serve.add_argument("--max-texts", type=int, default=limits.max_texts,
                       help=f"completions per request; more gets 413 (default {limits.max_texts})")
    serve.add_argument("--max-text-chars", type=int, default=limits.max_text_chars,
                       help=f"characters per prompt or completion; more gets 413 (default {limits.max_text_chars}; "
                       "tokens past the model's positions are cut off)")
    serve.add_argument("--max-requests", type=int, default=limits.max_requests,
                       help=f"requests in flight; more get 503 with Retry-After (default {limits.max_requests})")
    serve.add_argument("--max-connections", type=int, default=limits.max_connections,
                       help=f"open connections; more get 503 and are closed (default {limits.max_connections})")
    serve.add_argument("--idle-timeout", type=float, default=limits.idle_timeout,
                       help="seconds a connection may take to send a request's headers, and its body, or stay idle "
                       f"(default {limits.idle_timeout:g})")
    rlhf.set_defaults(rlhf_parser=rlhf)


def resolve_config(stage: str, args: argparse.Namespace) -> Any:
    from ppokit.configuration import from_mapping, load_yaml, merge_overrides

    cls = _config_class(stage)
    data: dict[str, Any] = load_yaml(args.config) if args.config else {}
    data.pop("launch", None)  # a run's config.yaml: how it was launched (world size), not a config field
    flags = {"model": "model", "policy": "policy", "data": "data", "eval_data": "eval_data", "seed": "seed",
             "run_dir": "run_dir", "rewards": "rewards", "total_updates": "total_updates"}
    for attr, field in flags.items():
        value = getattr(args, attr, None)
        if value is not None:
            data[field] = value
    if args.no_progress:
        data["progress"] = False
    merge_overrides(cls, data, args.overrides)
    return from_mapping(cls, data, f"config ({args.config})" if args.config else "config")


def run(args: argparse.Namespace) -> int:
    if args.stage is None:
        args.rlhf_parser.print_help()
        return 2
    _require_rlhf_extra()
    if args.stage == "serve-reward":
        from ppokit.rlhf.rewards.server import ServerLimits, serve_reward

        return serve_reward(args.model_dir, port=args.port, host=args.host, device=args.device, dtype=args.dtype,
                            batch_size=args.batch_size, trust_remote_code=args.trust_remote_code,
                            limits=ServerLimits(args.max_body_bytes, args.max_texts, args.max_text_chars,
                                                args.max_requests, args.max_connections, args.idle_timeout))
    from ppokit.io.outputs import check_output, check_run_dir

    if args.stage == "demo":
        from ppokit.analysis.plots import plot_runs
        from ppokit.errors import ConfigError
        from ppokit.rlhf.demo import run_demo

        if args.total_updates < 1:
            raise ConfigError(f"--total-updates {args.total_updates}: must be at least 1")
        check_output(args.run_dir, kind="dir", must_be_empty=False, flag="--run-dir")  # not a run or a group
        for stage in ("sft", "reward", "ppo"):  # the demo's runs; the folder holding them may hold others
            check_run_dir(os.path.join(args.run_dir, stage), "--run-dir")
        run_demo(args.run_dir, seed=args.seed, ppo_updates=args.total_updates, overwrite=args.overwrite,
                 progress=not args.no_progress, plot=plot_runs)
        return 0
    config = resolve_config(args.stage, args)
    from ppokit.io.run_dir import check_resume_flags

    check_resume_flags(args.resume, args.overwrite, config.run_dir)
    if config.run_dir is not None:  # before a model is loaded
        check_run_dir(config.run_dir)
    if args.stage in ("sft", "reward"):
        return _finish_supervised(args.stage, _supervised_trainer(args.stage)(config, overwrite=args.overwrite,
                                                                              resume=args.resume))
    from ppokit.rlhf.ppo.trainer import RLHFTrainer

    trainer = RLHFTrainer(config, overwrite=args.overwrite, resume=args.resume)
    return _finish_ppo(trainer)


def _supervised_trainer(stage: str) -> Any:
    if stage == "sft":
        from ppokit.rlhf.supervised.sft import SFTTrainer

        return SFTTrainer
    from ppokit.rlhf.supervised.reward_model import RewardTrainer

    return RewardTrainer


def _finish_supervised(stage: str, trainer: Any) -> int:
    summary = trainer.learn()
    if not _settled_main():
        return 0
    if stage == "sft":
        evaluated = f", held-out loss {summary['eval_loss']:.4f}" if summary["eval_rows"] else ""
        print(f"SFT done: final loss {summary['final_loss']:.4f}{evaluated}; model: {summary['model_dir']}")
    else:
        print(f"reward model: held-out pairwise accuracy {summary['eval_accuracy']:.3f} "
              f"({summary['eval_pairs']} pairs); model: {summary['model_dir']}")
    print(strict_json({k: v for k, v in summary.items() if not isinstance(v, list)}), file=sys.stderr)
    return 0


def resume_supervised(run_dir: Any, stage: str, overrides: dict[str, Any], trust: bool = False) -> int:
    """``ppokit resume`` for an SFT or reward-training run: rebuild it from its config.yaml and continue."""
    _require_rlhf_extra()
    from pathlib import Path

    from ppokit.rlhf.supervised.checkpoint import resume_config

    config = resume_config(stage, Path(run_dir), trust, overrides)
    trainer = _supervised_trainer(stage)(config, run_dir=run_dir, resume=True)
    if trainer.collective.is_main:
        what = "SFT" if stage == "sft" else "reward-model training"
        print(f"ppokit: resuming {what} at step {trainer.num_updates} of {trainer.batches.total} in {run_dir}",
              file=sys.stderr)
    return _finish_supervised(stage, trainer)


def _finish_ppo(trainer: Any) -> int:
    summary = trainer.learn()
    if not _settled_main():
        return 0
    print(f"PPO done: score {summary['score_first']:+.3f} -> {summary['score_last']:+.3f}, "
          f"KL {summary['kl_last']:.3f}; policy: {summary['policy_dir']}")
    print(strict_json({k: v for k, v in summary.items() if not isinstance(v, list)}), file=sys.stderr)
    return 0


def resume_ppo(run_dir: Any, total_updates: int | None, overrides: dict[str, Any], trust: bool = False,
               rewards: list[str] | None = None) -> int:
    """``ppokit resume`` for an RLHF PPO run: rebuild the trainer from its config.yaml and continue."""
    _require_rlhf_extra()
    from ppokit.rlhf.ppo.trainer import RLHFTrainer

    if total_updates is not None:
        overrides = {**overrides, "total_updates": total_updates}
    trainer = RLHFTrainer.resume(run_dir, rewards=rewards, trust=trust, **overrides)
    if trainer.collective.is_main:
        print(f"ppokit: resuming RLHF PPO at update {trainer.num_updates} in {run_dir}", file=sys.stderr)
    return _finish_ppo(trainer)


def _settled_main() -> bool:
    """Whether this process prints a stage's result (rank 0 of a data-parallel job, or the only one);
    the processes leave the job together afterwards (:func:`ppokit.launch.leave_processes`)."""
    from ppokit.core.collective import Collective

    return Collective().is_main


def _require_rlhf_extra() -> None:
    from ppokit.errors import ConfigError

    missing = [name for name in ("transformers", "datasets", "peft") if _missing(name)]
    if missing:
        raise ConfigError(f"`ppokit rlhf` needs {', '.join(missing)}: pip install 'ppokit[rlhf]'")


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None
