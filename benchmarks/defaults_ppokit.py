"""ppokit side of the defaults sweep: one run with ppokit's general defaults (no preset), as JSON.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/defaults_ppokit.py --env Pendulum-v1 --seed 1 [--set ent_coef=0.01]

Everything not given with ``--set`` is the default of ``ControlConfig`` for the env's action space,
what ``ppokit train ENV --no-preset`` runs. The final policy is evaluated deterministically on a
fresh env (``EVAL_EPISODES`` episodes, seeds unseen in training).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from defaults_tasks import EVAL_EPISODES, parse_run_args  # noqa: E402


def main() -> None:
    args = parse_run_args(__doc__.split("\n\n")[0])
    from ppokit import PPO, ControlConfig
    from ppokit.configuration import from_mapping, parse_overrides

    overrides = parse_overrides(args.set)
    with tempfile.TemporaryDirectory() as tmp:
        data = {"env_id": args.env, "total_steps": args.steps, "seed": args.seed, "progress": False,
                "tensorboard": False, "eval_episodes": 0, "run_dir": str(Path(tmp) / "run"), **overrides}
        agent = PPO(from_mapping(ControlConfig, data, "--set"))
        start = time.perf_counter()
        agent.learn()
        seconds = time.perf_counter() - start
        returns = list(agent.collector.episodes.returns)
        evaluation = agent.evaluate(episodes=EVAL_EPISODES, seed=10_000 + args.seed)
        agent.close()
    print(json.dumps({"library": "ppokit", "env": args.env, "seed": args.seed, "set": args.set,
                      "steps": agent.global_step, "seconds": seconds,
                      "train_return": sum(returns) / len(returns) if returns else None,
                      "eval_return": evaluation["mean_return"]}))


if __name__ == "__main__":
    main()
