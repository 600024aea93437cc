"""Stable-Baselines3 side of the time-to-solve benchmark, set up as the RL Zoo trains (runs in .venv-bench).

    OMP_NUM_THREADS=1 .venv-bench/bin/python benchmarks/solve_sb3_anchor.py --task cartpole --seed 1 --out DIR

The RL Zoo's tuned hyperparameters for the env (solve_tasks.py), VecNormalize where the Zoo
normalises, and the Zoo's evaluation: an ``EvalCallback`` on a separate one-env eval env every
25,000 steps (divided among the training envs), deterministic, saving the best model, with
``StopTrainingOnRewardThreshold`` as its new-best callback (20 episodes, the issue's definition). The
final model is saved too, as the Zoo does. The caller times the whole process.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from solve_tasks import EVAL_EPISODES, RL_ZOO_EVAL_FREQ, TASKS  # noqa: E402


def _schedule(value):
    if isinstance(value, (tuple, list)) and value[0] == "linear":
        start = float(value[1])
        return lambda remaining: remaining * start
    return value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=sorted(TASKS), required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import EvalCallback, StopTrainingOnRewardThreshold
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    torch.set_num_threads(1)
    task = TASKS[args.task]
    hp = dict(task["rl_zoo"])
    normalize = hp.pop("normalize", False)
    n_envs, n_timesteps = hp.pop("n_envs"), hp.pop("n_timesteps")
    env = make_vec_env(task["env_id"], n_envs=n_envs, seed=args.seed)
    eval_env = make_vec_env(task["env_id"], n_envs=1, seed=args.seed + 10_000)
    if normalize:
        env = VecNormalize(env, gamma=hp.get("gamma", 0.99))
        # EvalCallback copies the training statistics into it before every evaluation.
        eval_env = VecNormalize(eval_env, training=False, norm_reward=False)
    hp = {k: _schedule(v) for k, v in hp.items()}
    model = PPO("MlpPolicy", env, seed=args.seed, device="cpu", verbose=0, **hp)
    out = Path(args.out)
    callback = EvalCallback(
        eval_env, n_eval_episodes=EVAL_EPISODES, eval_freq=max(RL_ZOO_EVAL_FREQ // n_envs, 1), deterministic=True,
        best_model_save_path=str(out), log_path=str(out),
        callback_on_new_best=StopTrainingOnRewardThreshold(reward_threshold=task["threshold"], verbose=0),
    )
    model.learn(total_timesteps=n_timesteps, callback=callback)
    model.save(out / "final_model")
    if normalize:
        env.save(str(out / "vecnormalize.pkl"))
    print(json.dumps({"library": "sb3 (RL Zoo settings)", "task": args.task, "seed": args.seed,
                      "steps": int(model.num_timesteps), "best_mean_return": float(callback.best_mean_reward),
                      "solved": bool(callback.best_mean_reward >= task["threshold"])}))


if __name__ == "__main__":
    main()
