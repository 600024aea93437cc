"""Stable-Baselines3 side of the control throughput benchmark (runs in .venv-bench, never imports ppokit).

    OMP_NUM_THREADS=1 .venv-bench/bin/python benchmarks/control_sb3_anchor.py --task cartpole --steps 100000

SB3 is configured with the task's numbers from control_tasks.py: n_envs, n_steps, n_epochs,
batch_size = n_envs * n_steps / num_minibatches, a linearly annealed learning rate, value clipping,
and VecNormalize (observations and rewards) where the task normalises. Its default MlpPolicy is the
same network (64-64 tanh, separate actor and critic, orthogonal init).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from control_tasks import parse_task_args  # noqa: E402


def main() -> None:
    name, t, steps, seed = parse_task_args(__doc__.split("\n\n")[0])
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    torch.set_num_threads(1)
    env = make_vec_env(t["env_id"], n_envs=t["num_envs"], seed=seed)
    if t["normalize"]:
        env = VecNormalize(env, norm_obs=True, norm_reward=True, gamma=t["gamma"])
    lr = t["learning_rate"]
    model = PPO(
        "MlpPolicy", env, n_steps=t["num_steps"], batch_size=t["num_envs"] * t["num_steps"] // t["num_minibatches"],
        n_epochs=t["num_epochs"], learning_rate=lambda remaining: lr * remaining, gamma=t["gamma"],
        gae_lambda=t["gae_lambda"], clip_range=t["clip_range"], clip_range_vf=t["clip_range_vf"],
        ent_coef=t["ent_coef"], vf_coef=t["vf_coef"], max_grad_norm=t["max_grad_norm"], seed=seed,
        device="cpu", verbose=0,
    )
    start = time.perf_counter()
    model.learn(total_timesteps=steps)
    seconds = time.perf_counter() - start
    returns = [info["r"] for info in model.ep_info_buffer]
    print(json.dumps({"library": "sb3", "task": name, "steps": int(model.num_timesteps), "seconds": seconds,
                      "sps": model.num_timesteps / seconds,
                      "final_return": sum(returns) / len(returns) if returns else None}))


if __name__ == "__main__":
    main()
