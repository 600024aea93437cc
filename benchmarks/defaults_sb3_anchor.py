"""Stable-Baselines3 side of the defaults sweep (runs in .venv-bench, never imports ppokit).

    OMP_NUM_THREADS=1 .venv-bench/bin/python benchmarks/defaults_sb3_anchor.py --env Pendulum-v1 --seed 1

``PPO("MlpPolicy", env_id)`` with every SB3 default, as its documentation's first example: one env,
2048 steps per update, minibatches of 64, 10 epochs, learning rate 3e-4, no normalisation. The
final policy is evaluated deterministically on a fresh env (``EVAL_EPISODES`` episodes).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from defaults_tasks import EVAL_EPISODES, parse_run_args  # noqa: E402


def main() -> None:
    args = parse_run_args(__doc__.split("\n\n")[0])
    if args.set:
        sys.exit("--set is for ppokit candidates; the anchor runs SB3's defaults")
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor

    torch.set_num_threads(1)
    model = PPO("MlpPolicy", args.env, seed=args.seed, device="cpu", verbose=0)
    start = time.perf_counter()
    model.learn(total_timesteps=args.steps)
    seconds = time.perf_counter() - start
    returns = [info["r"] for info in model.ep_info_buffer]
    eval_env = Monitor(gym.make(args.env))
    eval_env.reset(seed=10_000 + args.seed)
    mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True)
    print(json.dumps({"library": "sb3", "env": args.env, "seed": args.seed, "set": [],
                      "steps": int(model.num_timesteps), "seconds": seconds,
                      "train_return": sum(returns) / len(returns) if returns else None,
                      "eval_return": float(mean)}))


if __name__ == "__main__":
    main()
