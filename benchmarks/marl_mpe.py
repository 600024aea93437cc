"""IPPO and MAPPO on mpe2's MPE tasks at published settings, several seeds: the multi-agent learning table.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/marl_mpe.py --task spread --algo mappo --seeds 1 2 3 \\
        --steps 300000 --out benchmarks/results/marl_spread_mappo.json

The settings are JaxMARL's IPPO feed-forward MPE config (``baselines/IPPO/config/ippo_ff_mpe.yaml``, the
published baseline that runs on this very env: JaxMARL's MPE equals mpe2's to 1e-4): 16 envs × 128
steps, 4 epochs of 4 minibatches, Adam 2.5e-4 annealed linearly, γ 0.99, λ 0.95, clip 0.2, entropy 0.01,
value coefficient 0.5, gradient norm 0.5, separate tanh MLPs [64, 64] with orthogonal init, one policy
shared by the agents, no observation or reward normalisation, the 25-step limit as the episode's end (no
bootstrap, as JaxMARL and the MAPPO paper's code treat it). MAPPO is the same with the critic on the
env's ``state()`` and value normalisation (the MAPPO paper's ``use_valuenorm``). Where agents differ
(speaker_listener), each kind has its own policy (``policies: auto``).

Returns are ppokit's ``episodic_return``: the mean over agents of each agent's 25-step return (PettingZoo
rewards). JaxMARL logs N times that (the sum over agents). Each run records the training curve
(the mean over the last 100 finished training episodes, after every update) and a final evaluation
of 100 episodes, sampling and deterministic.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TASKS = {
    "spread": ("mpe2.simple_spread_v3", {"max_cycles": 25}),
    "speaker_listener": ("mpe2.simple_speaker_listener_v4", {"max_cycles": 25}),
    "reference": ("mpe2.simple_reference_v3", {"max_cycles": 25}),
}
#: JaxMARL's ippo_ff_mpe.yaml, in ppokit's field names.
PUBLISHED = {
    "num_envs": 16, "num_steps": 128, "num_epochs": 4, "num_minibatches": 4, "learning_rate": 2.5e-4,
    "lr_schedule": "linear", "gamma": 0.99, "gae_lambda": 0.95, "clip_range": 0.2, "ent_coef": 0.01, "vf_coef": 0.5,
    "max_grad_norm": 0.5, "hidden_sizes": [64, 64], "activation": "tanh", "shared_trunk": False, "ortho_init": True,
    "normalize_obs": False, "normalize_reward": False, "bootstrap_truncation": False,
}


def run(task: str, algo: str, seed: int, steps: int, eval_episodes: int, policies: str) -> dict[str, Any]:
    from ppokit.multiagent import MultiAgentConfig, MultiAgentPPO

    env_id, kwargs = TASKS[task]
    config = MultiAgentConfig(env_id=env_id, env_kwargs=kwargs, critic=algo, normalize_value=algo == "mappo",
                              policies=policies, seed=seed, total_steps=steps, progress=False, tensorboard=False,
                              eval_episodes=0, **PUBLISHED)
    curve: list[tuple[int, float | None]] = []
    start = time.perf_counter()
    agent = MultiAgentPPO(config)
    with tempfile.TemporaryDirectory() as tmp:
        agent.learn(run_dir=Path(tmp) / "run",
                    callback=lambda row: curve.append((row["global_step"], row["episodic_return"])) or True)
    seconds = time.perf_counter() - start
    sampled = agent.evaluate(eval_episodes, deterministic=False, seed=10_000 + seed)
    mode = agent.evaluate(eval_episodes, deterministic=True, seed=10_000 + seed)
    return {"task": task, "env_id": env_id, "algo": algo, "seed": seed, "steps": steps, "policies": policies,
            "groups": {g.group.name: g.agents for g in agent.groups}, "seconds": seconds,
            "final_training_return": curve[-1][1], "curve": curve,
            "eval_sampled": sampled["mean_return"], "eval_deterministic": mode["mean_return"],
            "eval_episodes": eval_episodes, "settings": PUBLISHED}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="spread")
    parser.add_argument("--algo", choices=["ippo", "mappo"], default="mappo")
    parser.add_argument("--policies", default="auto", help="'auto', 'shared' or 'separate'")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=300_000)
    parser.add_argument("--eval-episodes", type=int, default=100)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    results = []
    for seed in args.seeds:
        result = run(args.task, args.algo, seed, args.steps, args.eval_episodes, args.policies)
        results.append(result)
        print(json.dumps({k: v for k, v in result.items() if k not in ("curve", "settings")}), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    finals = [r["final_training_return"] for r in results]
    print(f"{args.task} {args.algo}: final training return per seed {[round(f, 2) for f in finals]}, "
          f"sampled eval {[round(r['eval_sampled'], 2) for r in results]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
