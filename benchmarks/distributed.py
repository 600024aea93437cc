"""One process against two (``--nproc 2``, gloo) on the same global batch, alternated side by side.

    PYTHONPATH=. .venv/bin/python benchmarks/distributed.py --repeats 3

Each task trains from the ``ppokit train`` command line with ``num_envs_scope: global``, so one process
runs all the envs and two processes run half each: the same batch, minibatch size and update count.
Prints, per task and process count, the median over repeats of the whole command's wall time
(start-up included) and of the training throughput the run logged (``sps`` of its last metrics row:
env steps per second of ``learn()``, start-up excluded), and the ratio of two processes to one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: name -> (env id, total steps, --set overrides): each a preset's settings with an even env count.
TASKS: dict[str, tuple[str, int, list[str]]] = {
    "cartpole": ("CartPole-v1", 100_000, []),
    "halfcheetah": ("HalfCheetah-v5", 40_960, ["num_envs=2", "num_steps=1024"]),
}


def run(task: str, nproc: int, root: Path, i: int, steps: int | None = None) -> tuple[float, float]:
    env_id, task_steps, sets = TASKS[task]
    steps = steps or task_steps
    run_dir = root / f"{task}-{nproc}-{i}"
    args = [sys.executable, "-m", "ppokit", "train", env_id, "--total-steps", str(steps), "--run-dir", str(run_dir),
            "--no-progress", "--set", "eval_episodes=0", "--set", "tensorboard=false",
            "--set", "num_envs_scope=global", "--set", "checkpoint_minutes=0"]
    for s in sets:
        args += ["--set", s]
    if nproc > 1:
        args += ["--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run(args, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    return wall, float(last["sps"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--steps", type=int, default=None, help="env steps per run instead of the task's")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ppokit-distributed-"))
    results: dict[str, dict[int, list[tuple[float, float]]]] = {t: {1: [], 2: []} for t in args.tasks}
    for i in range(args.repeats):
        for task in args.tasks:
            for nproc in (1, 2):
                results[task][nproc].append(run(task, nproc, root, i, args.steps))
    summary = {}
    for task, by_n in results.items():
        wall = {n: statistics.median(w for w, _ in rows) for n, rows in by_n.items()}
        sps = {n: statistics.median(s for _, s in rows) for n, rows in by_n.items()}
        summary[task] = {"wall_s": wall, "sps": sps, "sps_ratio_2_over_1": sps[2] / sps[1]}
        print(f"{task}: 1 process {sps[1]:.0f} steps/s ({wall[1]:.1f} s), 2 processes {sps[2]:.0f} steps/s "
              f"({wall[2]:.1f} s): {sps[2] / sps[1]:.2f}x", file=sys.stderr)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
