"""ppokit against sb3-contrib's MaskablePPO on sb3-contrib's own maskable envs, with no wrapper.

    OMP_NUM_THREADS=1 /work/main/.venv/bin/python benchmarks/maskable.py --steps 20480 --seeds 0 1 2

Both libraries train on ``InvalidActionEnvDiscrete(dim=80, n_invalid_actions=60)`` and
``InvalidActionEnvMultiDiscrete(dims=[20, 20], n_invalid_actions=30)`` (episodes of 100 steps, reward
1 for the action equal to the observed state), which give their masks only through an
``action_masks()`` method: ppokit reads it by itself, MaskablePPO by its convention. The same step
budget and hyper-parameters (:data:`HYPER`): 4 envs × 256 steps per rollout, 4 minibatches (of 256),
4 epochs, Adam 3e-4 constant, γ 0.99, λ 0.95, clip 0.2, no entropy bonus, value coefficient 0.5,
gradient norm 0.5, separate tanh MLPs [64, 64] with orthogonal init, no observation or reward
normalisation. Each trained policy is evaluated deterministically on ``--eval-episodes`` episodes by
its own library's evaluation (ppokit's ``evaluate``, sb3-contrib's masked ``evaluate_policy``);
invalid actions are counted inside the envs, in training and in evaluation.

The envs draw their states and invalid actions from NumPy's global generator and an unseeded space,
so a seed fixes the policies' initialisation and sampling, not the episodes. Needs sb3-contrib (the
``interop`` extra); ppokit itself never imports it. Prints a Markdown table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

TASKS: dict[str, tuple[str, dict[str, Any]]] = {
    "discrete": ("InvalidActionEnvDiscrete", {"dim": 80, "n_invalid_actions": 60}),
    "multidiscrete": ("InvalidActionEnvMultiDiscrete", {"dims": [20, 20], "n_invalid_actions": 30}),
}
HYPER = {"num_envs": 4, "num_steps": 256, "num_minibatches": 4, "num_epochs": 4, "learning_rate": 3e-4,
         "gamma": 0.99, "gae_lambda": 0.95, "clip_range": 0.2, "ent_coef": 0.0, "vf_coef": 0.5, "max_grad_norm": 0.5}


def counted(name: str) -> type:
    """sb3-contrib's env ``name``, counting the actions it is given and the masked ones among them
    (both libraries step these envs in this process: DummyVecEnv, SyncVectorEnv)."""
    from sb3_contrib.common import envs

    base = getattr(envs, name)

    class Counted(base):  # type: ignore[misc, valid-type]
        taken = 0
        invalid = 0

        def step(self, action: Any) -> Any:
            flat = np.atleast_1d(np.asarray(action)).astype(int)
            offsets = np.concatenate([[0], np.cumsum(np.atleast_1d(getattr(self.action_space, "nvec", 0)))[:-1]])
            Counted.taken += 1
            Counted.invalid += int(any(int(o + a) in self.invalid_actions for o, a in zip(offsets, flat)))
            return super().step(action)

    Counted.__qualname__ = Counted.__name__ = f"Counted{name}"
    return Counted


def run_ppokit(task: str, steps: int, seed: int, episodes: int) -> dict[str, Any]:
    from ppokit import PPO, ControlConfig

    name, kwargs = TASKS[task]
    env = counted(name)
    np.random.seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        config = ControlConfig(env_kwargs=kwargs, total_steps=steps, seed=seed, lr_schedule="constant",
                               normalize_obs=False, normalize_reward=False, hidden_sizes=[64, 64], activation="tanh",
                               shared_trunk=False, ortho_init=True, progress=False, tensorboard=False, eval_episodes=0,
                               run_dir=str(Path(tmp) / "run"), **HYPER)
        agent = PPO(config, env=env)
        agent.learn()
        train = (env.invalid, env.taken)
        env.invalid = env.taken = 0
        result = agent.evaluate(episodes=episodes, deterministic=True, seed=10_000 + seed)
        agent.close()
    return {"library": "ppokit", "task": task, "seed": seed, "steps": agent.global_step,
            "eval_return": result["mean_return"], "train_invalid": train[0], "train_actions": train[1],
            "eval_invalid": env.invalid, "eval_actions": env.taken}


def run_maskable_ppo(task: str, steps: int, seed: int, episodes: int) -> dict[str, Any]:
    import torch
    from sb3_contrib import MaskablePPO
    from sb3_contrib.common.maskable.evaluation import evaluate_policy
    from stable_baselines3.common.env_util import make_vec_env

    name, kwargs = TASKS[task]
    env = counted(name)
    np.random.seed(seed)
    vec = make_vec_env(env, n_envs=HYPER["num_envs"], seed=seed, env_kwargs=kwargs)
    h = HYPER
    model = MaskablePPO("MlpPolicy", vec, n_steps=h["num_steps"], batch_size=h["num_envs"] * h["num_steps"] // h["num_minibatches"],
                        n_epochs=h["num_epochs"], learning_rate=h["learning_rate"], gamma=h["gamma"],
                        gae_lambda=h["gae_lambda"], clip_range=h["clip_range"], ent_coef=h["ent_coef"],
                        vf_coef=h["vf_coef"], max_grad_norm=h["max_grad_norm"], seed=seed, device="cpu",
                        policy_kwargs={"net_arch": [64, 64], "activation_fn": torch.nn.Tanh, "ortho_init": True})
    model.learn(total_timesteps=steps)
    train = (env.invalid, env.taken)
    env.invalid = env.taken = 0
    mean, _ = evaluate_policy(model, env(**kwargs), n_eval_episodes=episodes, deterministic=True, warn=False)
    vec.close()
    return {"library": "sb3-contrib MaskablePPO", "task": task, "seed": seed, "steps": int(model.num_timesteps),
            "eval_return": float(mean), "train_invalid": train[0], "train_actions": train[1],
            "eval_invalid": env.invalid, "eval_actions": env.taken}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| task | library | steps | seeds | eval return (mean ± std over seeds) | invalid actions, training | "
             "invalid actions, evaluation |", "|---|---|---|---|---|---|---|"]
    for task in TASKS:
        for library in dict.fromkeys(r["library"] for r in rows):
            group = [r for r in rows if r["task"] == task and r["library"] == library]
            if not group:
                continue
            returns = np.array([r["eval_return"] for r in group])
            lines.append(f"| {task} | {library} | {group[0]['steps']:,} | {len(group)} | {returns.mean():.1f} ± "
                         f"{returns.std():.1f} | {sum(r['train_invalid'] for r in group):,} of "
                         f"{sum(r['train_actions'] for r in group):,} | {sum(r['eval_invalid'] for r in group):,} of "
                         f"{sum(r['eval_actions'] for r in group):,} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20_480)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=list(TASKS))
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--libraries", nargs="+", choices=["ppokit", "sb3-contrib"], default=["ppokit", "sb3-contrib"])
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    rows = []
    for task in args.tasks:
        for seed in args.seeds:
            if "ppokit" in args.libraries:
                rows.append(run_ppokit(task, args.steps, seed, args.eval_episodes))
            if "sb3-contrib" in args.libraries:
                rows.append(run_maskable_ppo(task, args.steps, seed, args.eval_episodes))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(table(rows))
    print(json.dumps({"rows": rows, "hyper": HYPER, "steps": args.steps, "seeds": args.seeds}))


if __name__ == "__main__":
    main()
