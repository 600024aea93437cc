"""The env copies alone: mpe2 simple_spread_v3 parallel envs stepped one after another with random
actions, each reset in the step its episode ends: the ceiling a trainer's env steps/s can reach here.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/marl_env_limit.py --num-envs 16 --steps 20480
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--steps", type=int, default=20_480)
    args = p.parse_args()
    from mpe2 import simple_spread_v3

    envs = [simple_spread_v3.parallel_env(max_cycles=25) for _ in range(args.num_envs)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    rng = np.random.default_rng(0)
    start, done = time.perf_counter(), 0
    while done < args.steps:
        for env in envs:
            env.step({a: int(rng.integers(5)) for a in env.agents})
            if not env.agents:
                env.reset()
            done += 1
    print(json.dumps({"library": "env only", "sps": done / (time.perf_counter() - start), "steps": done}))


if __name__ == "__main__":
    main()
