"""One process against two (``--nproc 2``, gloo) on the same global batch, alternated side by side.

    PYTHONPATH=. .venv/bin/python benchmarks/distributed.py --repeats 3
    PYTHONPATH=. .venv/bin/python benchmarks/distributed.py --repeats 3 --variants 1 2 1-async

Each task trains from the ``ppokit train`` command line with ``num_envs_scope: global``, so one process
runs all the envs and two processes run half each: the same batch, minibatch size and update count.
A variant is the number of processes, with ``-async`` for envs stepped in subprocesses
(``vectorization: async``) or ``-envpool`` for EnvPool's C++ thread pool: one learner fed by env
workers, the other way to use more cores.
Prints, per task and variant, the median over repeats of the whole command's wall time (start-up
included) and of the training throughput the run logged (``sps`` of its last metrics row: env steps
per second of ``learn()``, start-up excluded), and each variant's ratio to one process.
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


def run(task: str, variant: str, root: Path, i: int, steps: int | None = None) -> tuple[float, float]:
    env_id, task_steps, sets = TASKS[task]
    steps = steps or task_steps
    nproc = int(variant.split("-")[0])
    run_dir = root / f"{task}-{variant}-{i}"
    args = [sys.executable, "-m", "ppokit", "train", env_id, "--total-steps", str(steps), "--run-dir", str(run_dir),
            "--no-progress", "--set", "eval_episodes=0", "--set", "tensorboard=false",
            "--set", "num_envs_scope=global", "--set", "checkpoint_minutes=0"]
    for s in sets:
        args += ["--set", s]
    if "-" in variant:
        args += ["--set", f"vectorization={variant.split('-', 1)[1]}"]
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
    parser.add_argument("--variants", nargs="+", default=["1", "2"], type=variant_name,
                        help="processes, with -async (envs in subprocesses) or -envpool (EnvPool's C++ threads): "
                             "1 2 1-async 1-envpool (1 always runs)")
    args = parser.parse_args()
    variants = ["1", *(v for v in dict.fromkeys(args.variants) if v != "1")]
    root = Path(tempfile.mkdtemp(prefix="ppokit-distributed-"))
    results: dict[str, dict[str, list[tuple[float, float]]]] = {t: {v: [] for v in variants} for t in args.tasks}
    for i in range(args.repeats):
        for task in args.tasks:
            for variant in variants:
                results[task][variant].append(run(task, variant, root, i, args.steps))
    summary = {}
    for task, by_variant in results.items():
        wall = {v: statistics.median(w for w, _ in rows) for v, rows in by_variant.items()}
        sps = {v: statistics.median(s for _, s in rows) for v, rows in by_variant.items()}
        summary[task] = {"wall_s": wall, "sps": sps, **{f"sps_ratio_{v}_over_1": sps[v] / sps["1"] for v in variants[1:]}}
        print(f"{task}: " + ", ".join(f"{v}: {sps[v]:.0f} steps/s ({wall[v]:.1f} s, {sps[v] / sps['1']:.2f}x)"
                                      for v in variants), file=sys.stderr)
    print(json.dumps(summary))


def variant_name(text: str) -> str:
    count, _, mode = text.partition("-")
    if not count.isdigit() or int(count) < 1 or mode not in ("", "async", "envpool"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a variant: a number of processes, optionally with -async "
                                         "or -envpool")
    return text


if __name__ == "__main__":
    main()
