"""ppokit against rsl_rl (rsl-rl-lib 5.x, Isaac Lab's default PPO) on the same torch env: steps/s.

    bash benchmarks/make_bench_venv.sh      # once (requirements-control.txt pins rsl-rl-lib), or only rsl_rl:
    .venv-bench/bin/pip install -c <(.venv-bench/bin/pip freeze | grep "^torch==") rsl-rl-lib==5.5.1
    .venv/bin/python benchmarks/torch_env_vs_rsl_rl.py --device cpu --rounds 3
    .venv/bin/python benchmarks/torch_env_vs_rsl_rl.py --device cuda --rounds 3 [--hidden 256 256 256]
    .venv/bin/python benchmarks/torch_env_vs_rsl_rl.py --quick          # 64 envs, 2 iterations: the script works

The env is ppokit's :class:`~ppokit.envs.torch_pendulum.TorchPendulum` (Gymnasium's Pendulum-v1 physics,
4,096 envs by default; rsl_rl's policies are Gaussian, so a continuous task), stepped on ``--device``
by both sides: ppokit takes it as it is, rsl_rl through the few-line ``VecEnv`` adapter below (a
TensorDict of the ``'policy'`` group, ``dones``, ``extras['time_outs']``), as Isaac Lab's wrapper does.

Both sides run rsl_rl's PPO defaults: 24 steps per env, 5 epochs of 4 minibatches, ε = 0.2 with the
value clipped alike, value coefficient 1, entropy coefficient 0.01, Adam at 1e-3 with a global
gradient-norm clip of 1, γ = 0.99, λ = 0.95, separate actor and critic MLPs (``--hidden``, ELU),
observation normalisation, a state-independent Gaussian starting at std 1. Three things are set
alike rather than left to each library: a fixed learning rate (rsl_rl's KL-adaptive one costs it a
host read per minibatch), no reward scaling (rsl_rl has none), and one torch thread (``--threads``).
rsl_rl runs without a log directory (no TensorBoard writer, no episode book-keeping: its fastest
setting) and with its per-step NaN check on (its default); ppokit writes its metrics.jsonl.

Each round runs both sides, each in a fresh process (ppokit in .venv, rsl_rl in .venv-bench), in
alternating order. A side trains one warm-up iteration, then times ``--iterations`` more (rollout
and update, with the device synchronised at the end): steps/s = iterations · envs · 24 / seconds.
The table gives the median over rounds and ppokit's throughput as a multiple of rsl_rl's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

STEPS_PER_ENV, EPOCHS, MINIBATCHES = 24, 5, 4


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_ppokit(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ppokit import PPO, ControlConfig
    from ppokit.envs.torch_pendulum import TorchPendulum

    batch = args.envs * STEPS_PER_ENV
    with tempfile.TemporaryDirectory() as tmp:
        config = ControlConfig(
            num_envs=args.envs, num_steps=STEPS_PER_ENV, num_epochs=EPOCHS, num_minibatches=MINIBATCHES,
            total_steps=batch * (1 + args.iterations), learning_rate=1e-3, lr_schedule="constant", clip_range=0.2,
            clip_range_vf=0.2, vf_coef=1.0, ent_coef=0.01, max_grad_norm=1.0, gamma=0.99, gae_lambda=0.95,
            hidden_sizes=list(args.hidden), activation="elu", normalize_obs=True, normalize_reward=False,
            log_std_init=0.0, device=args.device, torch_threads=args.threads, seed=args.seed, progress=False,
            tensorboard=False, eval_episodes=0, checkpoint_minutes=0, run_dir=str(Path(tmp) / "run"))
        agent = PPO(config, env=TorchPendulum)
        marks: list[float] = []

        def mark(_: dict[str, Any]) -> bool:
            _sync(args.device)
            marks.append(time.perf_counter())  # after each update; the first ends the warm-up
            return True

        agent.learn(callback=mark)
        returns = list(agent.collector.episodes.returns)
        agent.close()
    seconds = marks[-1] - marks[0]
    steps = batch * (len(marks) - 1)
    return {"library": "ppokit", "device": args.device, "envs": args.envs, "iterations": len(marks) - 1,
            "steps": steps, "seconds": seconds, "sps": steps / seconds, "threads": torch.get_num_threads(),
            "final_return": sum(returns) / len(returns) if returns else None}


def run_rsl_rl(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from rsl_rl.env import VecEnv
    from rsl_rl.runners import OnPolicyRunner
    from tensordict import TensorDict

    from ppokit.envs.torch_pendulum import TorchPendulum

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    class Pendulum(VecEnv):
        """The torch env as rsl_rl's VecEnv: the adapter Isaac Lab's RslRlVecEnvWrapper is."""

        def __init__(self) -> None:
            self.env = TorchPendulum(args.envs, args.device)
            self.num_envs, self.num_actions, self.device, self.cfg = args.envs, 1, args.device, {}
            self.max_episode_length = self.env.max_episode_steps
            self.obs, _ = self.env.reset(seed=args.seed)
            self.returns = torch.zeros(args.envs, device=args.device)
            self.ended: list[torch.Tensor] = []

        @property
        def episode_length_buf(self) -> torch.Tensor:
            return self.env.elapsed

        def get_observations(self) -> TensorDict:
            return TensorDict({"policy": self.obs}, batch_size=[self.num_envs])

        def step(self, actions: torch.Tensor) -> tuple[TensorDict, torch.Tensor, torch.Tensor, dict]:
            self.obs, reward, terminated, truncated, _ = self.env.step(actions)
            dones = terminated | truncated
            self.returns += reward
            self.ended.append(torch.where(dones, self.returns, torch.nan))  # read after training, not per step
            self.returns = torch.where(dones, 0.0, self.returns)
            return self.get_observations(), reward, dones.long(), {"time_outs": truncated}

    def mlp(distribution: bool) -> dict[str, Any]:
        cfg: dict[str, Any] = {"class_name": "MLPModel", "hidden_dims": list(args.hidden), "activation": "elu",
                               "obs_normalization": True}
        if distribution:
            cfg["distribution_cfg"] = {"class_name": "GaussianDistribution", "init_std": 1.0}
        return cfg

    train_cfg = {
        "num_steps_per_env": STEPS_PER_ENV, "save_interval": 10**9,
        "obs_groups": {"actor": ["policy"], "critic": ["policy"]},
        "algorithm": {"class_name": "PPO", "num_learning_epochs": EPOCHS, "num_mini_batches": MINIBATCHES,
                      "clip_param": 0.2, "gamma": 0.99, "lam": 0.95, "value_loss_coef": 1.0, "entropy_coef": 0.01,
                      "learning_rate": 1e-3, "max_grad_norm": 1.0, "use_clipped_value_loss": True,
                      "schedule": "fixed", "desired_kl": 0.01},
        "actor": mlp(distribution=True), "critic": mlp(distribution=False),
    }
    env = Pendulum()
    runner = OnPolicyRunner(env, train_cfg, log_dir=None, device=args.device)
    runner.learn(num_learning_iterations=1)  # warm-up
    _sync(args.device)
    start = time.perf_counter()
    runner.learn(num_learning_iterations=args.iterations)
    _sync(args.device)
    seconds = time.perf_counter() - start
    ended = torch.stack(env.ended[-100 * STEPS_PER_ENV:]).flatten()
    ended = ended[~torch.isnan(ended)][-100:]
    steps = args.envs * STEPS_PER_ENV * args.iterations
    return {"library": "rsl_rl", "device": args.device, "envs": args.envs, "iterations": args.iterations,
            "steps": steps, "seconds": seconds, "sps": steps / seconds, "threads": torch.get_num_threads(),
            "final_return": float(ended.mean()) if ended.numel() else None}


def compare(args: argparse.Namespace) -> None:
    from bench_run import pythons, run

    ppokit_py, bench_py = pythons("rsl_rl")
    side_args = ["--device", args.device, "--envs", str(args.envs), "--iterations", str(args.iterations),
                 "--threads", str(args.threads), "--seed", str(args.seed), "--hidden", *map(str, args.hidden)]
    threads = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    sides = [("ppokit", ppokit_py), ("rsl_rl", bench_py)]
    results: dict[str, list[dict[str, Any]]] = {"ppokit": [], "rsl_rl": []}
    for r in range(args.rounds):
        for name, python in sides if r % 2 == 0 else sides[::-1]:
            result = run(python, Path(__file__).name, ["--side", name, *side_args], threads)
            results[name].append(result)
            print(f"round {r + 1} {name:<7} {result['sps']:10.0f} steps/s  (mean return {result['final_return']})",
                  file=sys.stderr)
    ours, theirs = (statistics.median(x["sps"] for x in results[n]) for n in ("ppokit", "rsl_rl"))
    print("| device | envs | network | ppokit steps/s | rsl_rl steps/s | ppokit / rsl_rl |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.device} | {args.envs} | {'x'.join(map(str, args.hidden))} | {ours:.0f} | {theirs:.0f} | "
          f"{ours / theirs:.2f}× |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", choices=["ppokit", "rsl_rl"], help="run one side in this process (the runner's job)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (both sides and the env)")
    p.add_argument("--envs", type=int, default=4096)
    p.add_argument("--iterations", type=int, default=20, help="timed iterations (each 24 steps of every env + update)")
    p.add_argument("--hidden", type=int, nargs="+", default=[64, 64], help="hidden widths of actor and critic")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="64 envs, 2 iterations, 1 round: the script works")
    p.add_argument("--json", help="write every run's result here")
    args = p.parse_args()
    if args.quick:
        args.envs, args.iterations, args.rounds = 64, 2, 1
    if args.side is None:
        compare(args)
    else:
        print(json.dumps(run_ppokit(args) if args.side == "ppokit" else run_rsl_rl(args)))


if __name__ == "__main__":
    main()
