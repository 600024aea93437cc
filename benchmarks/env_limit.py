"""The limit: raw stepping speed of the vector env ppokit trains on, with random actions and no learner.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/env_limit.py --task cartpole --steps 100000
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from control_tasks import parse_task_args  # noqa: E402


def main() -> None:
    name, t, steps, _ = parse_task_args(__doc__.split("\n\n")[0], seed=False)
    from ppokit.control.envs.make import make_vector_env

    env = make_vector_env(t["env_id"], t["num_envs"])
    env.reset(seed=0)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(64)]
    n = steps // t["num_envs"]
    start = time.perf_counter()
    for i in range(n):
        env.step(actions[i % 64])
    seconds = time.perf_counter() - start
    env.close()
    print(json.dumps({"library": "env", "task": name, "steps": n * t["num_envs"], "seconds": seconds,
                      "sps": n * t["num_envs"] / seconds}))


if __name__ == "__main__":
    main()
