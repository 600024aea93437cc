"""Per-step cost of vector envs: ppokit's CartPole against Gymnasium's, and Gymnasium's in-process
vectorisation against the bare envs it wraps.

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/env_step.py

(a) ``CartPoleVectorEnv.step`` of Gymnasium and of :mod:`ppokit.envs.cartpole_vector`, at several env
counts, with the action-space check off on both (ppokit's collector skips it for its own actions;
``control/envs.TrustsOwnActions``) and ppokit's per-env path forced on at every count, to show where
it stops paying. (b) For envs without a batched implementation, ``SyncVectorEnv.step`` of 4 envs as
ppokit makes it against 4 bare ``env.unwrapped.step`` calls: what vectorisation adds.

Each figure is the best of 3 timings of ``--steps`` steps, in µs per vector step. Prints a markdown
table, then the JSON of every figure as the last line.
"""

from __future__ import annotations

import argparse
import json
import timeit
from collections.abc import Callable
from typing import Any

import numpy as np
from gymnasium.envs.classic_control import cartpole

from ppokit.control.envs.make import make_single_env, make_vector_env
from ppokit.envs import cartpole_vector


def per_step(step: Callable[[Any], Any], action: Any, steps: int) -> float:
    return min(timeit.repeat(lambda: step(action), number=steps, repeat=3)) / steps * 1e6


def cartpole_rows(counts: list[int], steps: int) -> list[dict[str, Any]]:
    rows = []
    cartpole_vector.MOST_ENVS = max(counts)  # the per-env path at every count
    for n in counts:
        theirs, ours = cartpole.CartPoleVectorEnv(num_envs=n), cartpole_vector.CartPoleVectorEnv(num_envs=n)
        for env in (theirs, ours):
            env.reset(seed=0)
            env.action_space.contains = lambda x: True  # type: ignore[method-assign]
        action = np.arange(n) % 2
        rows.append({"envs": n, "gymnasium_us": per_step(theirs.step, action, steps),
                     "ppokit_us": per_step(ours.step, action, steps)})
    return rows


def _stepper(envs: list[Any]) -> Callable[[Any], None]:
    def step_all(actions: Any) -> None:
        for env, a in zip(envs, actions):
            env.step(a)
    return step_all


def sync_rows(env_ids: list[str], steps: int) -> list[dict[str, Any]]:
    rows = []
    for env_id in env_ids:
        vector = make_vector_env(env_id, 4, vectorization="sync")
        vector.reset(seed=0)
        action = vector.action_space.sample()
        bare = [make_single_env(env_id, {}).unwrapped for _ in range(4)]
        for i, env in enumerate(bare):
            env.reset(seed=i)

        rows.append({"env": env_id, "sync_vector_us": per_step(vector.step, action, steps),
                     "bare_us": per_step(_stepper(bare), action, steps)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--counts", default="1,4,8,16,24,32")
    parser.add_argument("--sync-envs", default="Pendulum-v1,Acrobot-v1,MountainCar-v0")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    carts = cartpole_rows(counts, args.steps)
    syncs = sync_rows([e for e in args.sync_envs.split(",") if e], max(args.steps // 4, 1))
    print("| CartPole envs | Gymnasium, µs/step | ppokit, µs/step |\n|---|---|---|")
    for r in carts:
        print(f"| {r['envs']} | {r['gymnasium_us']:.1f} | {r['ppokit_us']:.1f} |")
    print("\n| env (4 copies) | SyncVectorEnv.step, µs | 4 bare env.step, µs |\n|---|---|---|")
    for r in syncs:
        print(f"| {r['env']} | {r['sync_vector_us']:.1f} | {r['bare_us']:.1f} |")
    print(json.dumps({"cartpole": carts, "sync": syncs}))


if __name__ == "__main__":
    main()
