"""skrl side of the multi-agent throughput benchmark (runs in .venv-bench, never imports ppokit).

    OMP_NUM_THREADS=1 .venv-bench/bin/python benchmarks/marl_skrl_anchor.py --algo mappo --num-envs 1 \\
        --rollout 128 --epochs 4 --minibatches 4 --hidden 64,64 --total-steps 20000 --warmup-steps 2560

skrl's IPPO or MAPPO (skrl.multi_agents.torch) on mpe2's simple_spread_v3 (parallel_env, N=3, local_ratio=0.5,
max_cycles=25, discrete actions) on the CPU, driven by skrl's own SequentialTrainer. Prints one JSON line:
env steps per second measured after --warmup-steps (so start-up, the first reset and the first update are
left out; both counts are rounded to whole rollouts so every timed window holds the same number of updates),
the settings, and the mean episode return per agent of the first and the last 100 training episodes (the
stochastic policy, PettingZoo's own rewards: a mean over agents of each agent's 25-step sum).

How skrl meets PettingZoo: skrl.envs.wrappers.torch.PettingZooWrapper wraps one ParallelEnv; its num_envs is
the env's own `num_envs` attribute, else 1, and with one env the trainer calls reset() when `env.agents` is
empty. skrl has no vector env for PettingZoo. With --num-envs N > 1 this script gives the wrapper a small
lock-step batch of N copies (BatchedParallelEnv below: per-agent arrays with a leading env axis, each copy
reset in the step that ends its episode, which is what skrl's trainer expects of any env with num_envs > 1).
skrl keeps one model, one optimiser and one memory per agent and loops over the agents in act() and update(),
so an update costs one pass per agent whatever --num-envs is.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np


class BatchedParallelEnv:
    """N copies of a PettingZoo ParallelEnv stepped in lock-step, as skrl's wrapper expects of num_envs > 1."""

    def __init__(self, make: Any, num_envs: int, seed: int) -> None:
        self.envs = [make() for _ in range(num_envs)]
        self.num_envs = num_envs
        self._seed = seed
        first = self.envs[0]
        self.possible_agents = list(first.possible_agents)
        self.observation_spaces = {a: first.observation_space(a) for a in self.possible_agents}
        self.action_spaces = {a: first.action_space(a) for a in self.possible_agents}
        self.state_space = first.state_space
        self.agents = list(self.possible_agents)
        self.unwrapped = self

    def observation_space(self, agent: str) -> Any:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> Any:
        return self.action_spaces[agent]

    def _stack(self, per_env: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        return {a: np.stack([np.asarray(d[a]) for d in per_env]) for a in self.possible_agents}

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        base = self._seed if seed is None else seed
        obs = [env.reset(seed=base + i)[0] for i, env in enumerate(self.envs)]
        return self._stack(obs), {a: {} for a in self.possible_agents}

    def step(self, actions: dict[str, np.ndarray]) -> tuple[dict, dict, dict, dict, dict]:
        obs, rew, term, trunc = [], [], [], []
        for i, env in enumerate(self.envs):
            o, r, te, tr, _ = env.step({a: int(np.asarray(actions[a]).reshape(-1)[i]) for a in env.agents})
            if not env.agents:  # every agent of this copy is done: start its next episode in the same step
                o, _ = env.reset()
            obs.append(o)
            rew.append(r)
            term.append(te)
            trunc.append(tr)
        return self._stack(obs), self._stack(rew), self._stack(term), self._stack(trunc), {}

    def state(self) -> np.ndarray:
        return np.stack([env.state() for env in self.envs])

    def render(self, *args: Any, **kwargs: Any) -> None:
        return None

    def close(self) -> None:
        for env in self.envs:
            env.close()


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algo", choices=["ippo", "mappo"], default="mappo")
    p.add_argument("--num-envs", type=int, default=1, help="env copies stepped together (skrl itself supports 1)")
    p.add_argument("--rollout", type=int, default=128, help="steps per env copy between updates (skrl's rollouts)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--minibatches", type=int, default=4)
    p.add_argument("--hidden", default="64,64", help="hidden layer sizes of actor and critic, comma separated")
    p.add_argument("--total-steps", type=int, default=20_000, help="env steps in all (each steps every agent)")
    p.add_argument("--warmup-steps", type=int, default=2_560, help="env steps left out of the timing")
    p.add_argument("--lr", type=float, default=7e-4)
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--gae-lambda", type=float, default=0.95)
    p.add_argument("--ent-coef", type=float, default=0.01)
    p.add_argument("--max-cycles", type=int, default=25)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--curve-every", type=int, default=0,
                   help="also report the mean episode return per agent of each window of this many env steps")
    args = p.parse_args()
    for name in ("num_envs", "rollout", "epochs", "minibatches", "total_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup_steps < 0 or args.warmup_steps >= args.total_steps:
        p.error("--warmup-steps must be at least 0 and less than --total-steps")
    return args


def main() -> None:
    args = parse_args()
    import torch
    import torch.nn as nn
    from mpe2 import simple_spread_v3
    from skrl.envs.wrappers.torch import wrap_env
    from skrl.memories.torch import RandomMemory
    from skrl.models.torch import CategoricalMixin, DeterministicMixin, Model
    from skrl.trainers.torch import SequentialTrainer
    from skrl.utils import set_seed

    torch.set_num_threads(args.threads)
    set_seed(args.seed)
    hidden = [int(h) for h in args.hidden.split(",") if h]

    def mlp(inputs: int, outputs: int, out_gain: float) -> nn.Sequential:
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(inputs, width), nn.Tanh()]
            inputs = width
        layers.append(nn.Linear(inputs, outputs))
        for layer in layers:
            if isinstance(layer, nn.Linear):
                nn.init.orthogonal_(layer.weight, gain=2**0.5)
                nn.init.zeros_(layer.bias)
        nn.init.orthogonal_(layers[-1].weight, gain=out_gain)
        return nn.Sequential(*layers)

    class Policy(CategoricalMixin, Model):
        def __init__(self, observation_space: Any, state_space: Any, action_space: Any, device: Any) -> None:
            Model.__init__(self, observation_space=observation_space, state_space=state_space,
                           action_space=action_space, device=device)
            CategoricalMixin.__init__(self, unnormalized_log_prob=True)
            self.net = mlp(self.num_observations, self.num_actions, 0.01)

        def compute(self, inputs: dict, role: str = "") -> tuple:
            return self.net(inputs["observations"]), {}

    class Value(DeterministicMixin, Model):
        def __init__(self, observation_space: Any, state_space: Any, action_space: Any, device: Any,
                     centralised: bool) -> None:
            Model.__init__(self, observation_space=observation_space, state_space=state_space,
                           action_space=action_space, device=device)
            DeterministicMixin.__init__(self)
            self.key = "states" if centralised else "observations"
            self.net = mlp(self.num_states if centralised else self.num_observations, 1, 1.0)

        def compute(self, inputs: dict, role: str = "") -> tuple:
            return self.net(inputs[self.key]), {}

    def make() -> Any:
        return simple_spread_v3.parallel_env(N=3, local_ratio=0.5, max_cycles=args.max_cycles,
                                             continuous_actions=False)

    raw = make() if args.num_envs == 1 else BatchedParallelEnv(make, args.num_envs, args.seed)
    env = wrap_env(raw, wrapper="pettingzoo")
    device = env.device

    models, memories = {}, {}
    for uid in env.possible_agents:
        spaces = dict(observation_space=env.observation_space(uid), state_space=env.state_space(uid),
                      action_space=env.action_space(uid), device=device)
        models[uid] = {"policy": Policy(**spaces), "value": Value(**spaces, centralised=args.algo == "mappo")}
        memories[uid] = RandomMemory(memory_size=args.rollout, num_envs=env.num_envs, device=device)

    cfg = dict(rollouts=args.rollout, learning_epochs=args.epochs, mini_batches=args.minibatches,
               discount_factor=args.gamma, gae_lambda=args.gae_lambda, learning_rate=args.lr,
               entropy_loss_scale=args.ent_coef, value_loss_scale=0.5, grad_norm_clip=0.5, ratio_clip=0.2,
               value_clip=0.2)
    # skrl 2.1.1's cfg.expand() refuses an empty dict (its own default for the *_kwargs fields) as "keys that do
    # not match the agents", so they are given per agent.
    for name in ("learning_rate_scheduler_kwargs", "observation_preprocessor_kwargs", "state_preprocessor_kwargs",
                 "value_preprocessor_kwargs"):
        cfg[name] = {uid: {} for uid in env.possible_agents}
    # skrl writes TensorBoard files and checkpoints unless told not to: the benchmark wants neither.
    cfg["experiment"] = {"write_interval": 0, "checkpoint_interval": 0, "directory": "", "experiment_name": ""}
    if args.algo == "mappo":
        from skrl.multi_agents.torch.mappo import MAPPO as Algo
    else:
        from skrl.multi_agents.torch.ippo import IPPO as Algo
    agent = Algo(possible_agents=env.possible_agents, models=models, memories=memories, cfg=cfg,
                 observation_spaces=env.observation_spaces, state_spaces=env.state_spaces,
                 action_spaces=env.action_spaces, device=device)

    per_copy = args.rollout * args.num_envs  # env steps per update
    timesteps = max(1, args.total_steps // per_copy) * args.rollout  # trainer steps (each steps every copy)
    warmup = (args.warmup_steps // per_copy) * args.rollout
    if warmup >= timesteps:
        raise SystemExit("--warmup-steps leaves no whole rollout to time: raise --total-steps")

    # Count steps and collect episode returns around skrl's wrapper, without touching its trainer.
    clock: dict[str, float] = {}
    calls = [0]
    running = np.zeros((args.num_envs, len(env.possible_agents)))
    finished: list[float] = []
    finished_at: list[int] = []  # env steps taken (all copies) when each episode ended
    inner_step = env.step

    def step(actions: dict) -> tuple:
        out = inner_step(actions)
        calls[0] += 1
        if calls[0] == warmup:
            clock["start"] = time.perf_counter()
        rewards, terminated, truncated = out[1], out[2], out[3]
        running[:] += np.stack([rewards[a].reshape(-1).cpu().numpy() for a in env.possible_agents], axis=1)
        done = np.stack([(terminated[a] | truncated[a]).reshape(-1).cpu().numpy() for a in env.possible_agents],
                        axis=1).all(axis=1)
        for i in np.flatnonzero(done):
            finished.append(float(running[i].mean()))
            finished_at.append(calls[0] * args.num_envs)
            running[i] = 0.0
        return out

    env.step = step  # type: ignore[method-assign]
    trainer = SequentialTrainer(env=env, agents=agent,
                                cfg={"timesteps": timesteps, "headless": True, "disable_progressbar": True})
    if warmup == 0:
        clock["start"] = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - clock["start"]
    timed_steps = (timesteps - warmup) * args.num_envs
    curve = []
    if args.curve_every > 0:
        for end in range(args.curve_every, timesteps * args.num_envs + 1, args.curve_every):
            window = [r for r, at in zip(finished, finished_at) if end - args.curve_every < at <= end]
            curve.append([end, float(np.mean(window)) if window else None])
    print(json.dumps({
        "library": "skrl", "skrl_version": __import__("skrl").__version__, "algo": args.algo,
        "env": "mpe2.simple_spread_v3", "num_envs": args.num_envs, "rollout": args.rollout,
        "batch_per_agent": per_copy, "epochs": args.epochs, "minibatches": args.minibatches, "hidden": hidden,
        "total_env_steps": timesteps * args.num_envs, "timed_env_steps": timed_steps, "seconds": seconds,
        "env_steps_per_s": timed_steps / seconds, "agent_steps_per_s": timed_steps * len(env.possible_agents) / seconds,
        "threads": args.threads, "seed": args.seed, "episodes": len(finished),
        "first100_mean_return_per_agent": float(np.mean(finished[:100])) if finished else None,
        "last100_mean_return_per_agent": float(np.mean(finished[-100:])) if finished else None,
        **({"curve": curve} if curve else {}),
    }))


if __name__ == "__main__":
    main()
