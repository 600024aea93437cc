"""Atari training throughput (Breakout, env steps/s): ppokit on Gymnasium's wrappers and on EnvPool,
against Stable-Baselines3 at the settings of CleanRL's ppo_atari_envpool.py, run alternately.

    bash benchmarks/make_bench_venv.sh                                    # once: .venv-bench with SB3 and ale-py
    .venv/bin/python benchmarks/atari_throughput.py --rounds 3 --steps 50176
    .venv/bin/python benchmarks/atari_throughput.py --quick              # smoke run: 1 round of 2,048 steps

Every side trains BreakoutNoFrameskip-v4 with the same numbers (CleanRL ppo_atari_envpool.py, the PPO
paper's Atari settings): 8 envs x 128 steps, 4 epochs of 4 minibatches (256 samples), Adam at 2.5e-4
annealed linearly, clip 0.1 (the value's too), entropy 0.01, value 0.5, gradient norm 0.5, γ 0.99,
λ 0.95, the Nature CNN, and the standard preprocessing (30 no-ops, 4-frame skip with max-pool, episodic
life, FIRE reset, sign-clipped rewards, 84x84 grey, 4 frames stacked):

* ``ppokit-gym``: ppokit, ``vectorization: sync`` over Gymnasium's Atari wrappers (ppokit.control.envs.atari);
* ``ppokit-envpool``: ppokit, ``vectorization: envpool`` (EnvPool's C++ preprocessing);
* ``sb3``: SB3's ``make_atari_env`` (its AtariWrapper, in-process DummyVecEnv) + ``VecFrameStack(4)`` and
  ``PPO('CnnPolicy')``, in .venv-bench (never imports ppokit);
* ``env-gym`` / ``env-envpool``: the bare vector env with random actions, what stepping alone costs.

Each run is a fresh process with ``--threads`` torch threads (and OpenMP's), timed over the whole
``learn()`` call (rollouts and updates; process start, imports and env construction left out). The
table gives the median over rounds. At the default 50,176 steps (49 updates) a training side takes a few
minutes on a 2-core CPU, most of it in the CNN's update.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

ENV_ID = "BreakoutNoFrameskip-v4"
#: CleanRL ppo_atari_envpool.py's settings.
SETTINGS = {"num_envs": 8, "num_steps": 128, "num_epochs": 4, "num_minibatches": 4, "learning_rate": 2.5e-4,
            "clip_range": 0.1, "ent_coef": 0.01, "vf_coef": 0.5, "max_grad_norm": 0.5, "gamma": 0.99,
            "gae_lambda": 0.95}
BATCH = SETTINGS["num_envs"] * SETTINGS["num_steps"]
SIDES = ("ppokit-gym", "ppokit-envpool", "sb3", "env-gym", "env-envpool")


def run_ppokit(vectorization: str, steps: int, seed: int, threads: int, device: str = "cpu") -> dict:
    from ppokit import PPO, ControlConfig

    config = ControlConfig(
        env_id=ENV_ID, vectorization=vectorization, total_steps=steps, seed=seed, lr_schedule="linear",
        clip_range_vf=SETTINGS["clip_range"], normalize_obs=False, normalize_reward=False, network="cnn",
        torch_threads=threads, device=device, progress=False, tensorboard=False, eval_episodes=0, checkpoint_minutes=0,
        **SETTINGS,
    )
    with tempfile.TemporaryDirectory() as tmp:
        agent = PPO(config)
        start = time.perf_counter()
        agent.learn(run_dir=Path(tmp) / "run")
        seconds = time.perf_counter() - start
        returns = list(agent.collector.episodes.returns) if agent.collector is not None else []
        agent.close()
    return {"side": f"ppokit-{'envpool' if vectorization == 'envpool' else 'gym'}", "steps": agent.global_step,
            "seconds": seconds, "sps": agent.global_step / seconds,
            "mean_game_score": statistics.fmean(returns) if returns else None}


def run_sb3(steps: int, seed: int, threads: int) -> dict:
    import ale_py
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    torch.set_num_threads(threads)
    env = VecFrameStack(make_atari_env(ENV_ID, n_envs=SETTINGS["num_envs"], seed=seed), n_stack=4)
    lr = SETTINGS["learning_rate"]
    model = PPO(
        "CnnPolicy", env, n_steps=SETTINGS["num_steps"], batch_size=BATCH // SETTINGS["num_minibatches"],
        n_epochs=SETTINGS["num_epochs"], learning_rate=lambda remaining: lr * remaining, gamma=SETTINGS["gamma"],
        gae_lambda=SETTINGS["gae_lambda"], clip_range=SETTINGS["clip_range"], clip_range_vf=SETTINGS["clip_range"],
        ent_coef=SETTINGS["ent_coef"], vf_coef=SETTINGS["vf_coef"], max_grad_norm=SETTINGS["max_grad_norm"],
        seed=seed, device="cpu", verbose=0,
    )
    start = time.perf_counter()
    model.learn(total_timesteps=steps)
    seconds = time.perf_counter() - start
    returns = [info["r"] for info in model.ep_info_buffer]  # Monitor sits under AtariWrapper: game scores
    return {"side": "sb3", "steps": int(model.num_timesteps), "seconds": seconds, "sps": model.num_timesteps / seconds,
            "mean_game_score": statistics.fmean(returns) if returns else None}


def run_env(vectorization: str, steps: int, seed: int) -> dict:
    import numpy as np

    from ppokit.control.envs.make import make_vector_env

    env = make_vector_env(ENV_ID, SETTINGS["num_envs"], vectorization="envpool" if vectorization == "envpool" else "sync")
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    n = steps // env.num_envs
    actions = rng.integers(0, env.single_action_space.n, size=(n, env.num_envs))
    start = time.perf_counter()
    for action in actions:
        env.step(action)
    seconds = time.perf_counter() - start
    env.close()
    return {"side": f"env-{vectorization}", "steps": n * env.num_envs, "seconds": seconds,
            "sps": n * env.num_envs / seconds, "mean_game_score": None}


def one_side(side: str, steps: int, seed: int, threads: int, device: str = "cpu") -> dict:
    if side == "sb3":
        return run_sb3(steps, seed, threads)
    if side.startswith("env-"):
        return run_env(side.removeprefix("env-"), steps, seed)
    return run_ppokit("envpool" if side == "ppokit-envpool" else "sync", steps, seed, threads, device)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", choices=SIDES, help="run one side in this process and print its JSON (what the driver calls)")
    p.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=49 * BATCH, help=f"env steps per run, rounded down to whole rollouts of {BATCH}")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch (and OpenMP) threads on every side")
    p.add_argument("--device", default="cpu", help="ppokit's device (cpu, cuda); SB3 trains on the CPU")
    p.add_argument("--quick", action="store_true", help="a smoke run: 1 round of 2,048 steps")
    p.add_argument("--json", help="write every run's result here")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.steps = 1, 2 * BATCH
    steps = max(BATCH, args.steps // BATCH * BATCH)
    if args.side:
        print(json.dumps(one_side(args.side, steps, args.seed, args.threads, args.device)))
        return 0

    from bench_run import pythons, run

    ppokit_py, bench_py = pythons("SB3 and ale-py")
    threads = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    results: dict[str, list[dict]] = {}
    for r in range(args.rounds):
        for side in args.sides:
            py = bench_py if side == "sb3" else ppokit_py
            result = run(py, "atari_throughput.py", ["--side", side, "--steps", str(steps), "--seed", str(args.seed),
                                                     "--threads", str(args.threads), "--device", args.device], threads)
            results.setdefault(side, []).append(result)
            print(f"round {r + 1} {side:<15} {result['sps']:8.0f} steps/s", file=sys.stderr)
    med = {side: statistics.median(x["sps"] for x in runs) for side, runs in results.items()}
    print(f"Breakout ({ENV_ID}), {steps} env steps per run, {args.rounds} round(s), {args.threads} thread(s), median:")
    print("| side | steps/s | × SB3 |")
    print("|---|---|---|")
    for side in args.sides:
        ratio = f"{med[side] / med['sb3']:.2f}×" if "sb3" in med and not side.startswith("env-") else "—"
        print(f"| {side} | {med[side]:.0f} | {ratio} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
