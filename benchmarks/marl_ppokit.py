"""ppokit side of the multi-agent throughput benchmark (runs in .venv): MAPPO or IPPO on mpe2's
simple_spread_v3, the settings on the command line as ``marl_skrl_anchor.py`` takes them.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/marl_ppokit.py --algo mappo --num-envs 16 --rollout 128 \\
        --epochs 4 --minibatches 4 --hidden 64,64 --total-steps 20480 --warmup-steps 2048

Prints one JSON line: env steps per second after ``--warmup-steps`` (whole updates: rollout and
update, so start-up, the first reset and the first update are left out), and the settings.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algo", choices=["ippo", "mappo"], default="mappo")
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--rollout", type=int, default=128)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--minibatches", type=int, default=4)
    p.add_argument("--hidden", default="64,64")
    p.add_argument("--total-steps", type=int, default=20_480)
    p.add_argument("--warmup-steps", type=int, default=2_048)
    p.add_argument("--lr", type=float, default=7e-4)
    p.add_argument("--max-cycles", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    from ppokit.multiagent import MultiAgentConfig, MultiAgentPPO

    config = MultiAgentConfig(
        env_id="mpe2.simple_spread_v3", env_kwargs={"max_cycles": args.max_cycles}, critic=args.algo,
        num_envs=args.num_envs, num_steps=args.rollout, num_epochs=args.epochs, num_minibatches=args.minibatches,
        hidden_sizes=[int(h) for h in args.hidden.split(",")], learning_rate=args.lr, lr_schedule="constant",
        ent_coef=0.01, total_steps=args.total_steps, seed=args.seed, progress=False, tensorboard=False,
        eval_episodes=0, normalize_obs=False, normalize_reward=False, checkpoint_minutes=0)
    agent = MultiAgentPPO(config)
    marks: list[tuple[int, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        agent.learn(run_dir=Path(tmp) / "run",
                    callback=lambda row: marks.append((row["global_step"], time.perf_counter())) or True)
    start = next(m for m in marks if m[0] >= args.warmup_steps)
    steps, seconds = marks[-1][0] - start[0], marks[-1][1] - start[1]
    print(json.dumps({"library": "ppokit", "algo": args.algo, "sps": steps / seconds, "timed_steps": steps,
                      "num_envs": args.num_envs, "rollout": args.rollout, "epochs": args.epochs,
                      "minibatches": args.minibatches, "hidden": args.hidden}))


if __name__ == "__main__":
    main()
