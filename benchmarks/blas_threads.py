"""A run as a user starts it (no thread variables, no pinning), from two checkouts: what NumPy's BLAS
threads cost when torch_threads does not hold them.

    git worktree add /tmp/before <commit>
    .venv/bin/python benchmarks/blas_threads.py --before /tmp/before --after . --rounds 2
    .venv/bin/python benchmarks/blas_threads.py --before /tmp/before --after . --rounds 2 --busy 1

Each run is ``ppokit train CartPole-v1 --preset CartPole-v1-cleanrl`` (the NumPy fast path) in a fresh
process with that checkout first on ``PYTHONPATH``, with ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``
and ``MKL_NUM_THREADS`` removed from its environment and no ``taskset``: what ``pip install ppokit``
and a terminal give. ``--busy N`` keeps N other processes spinning meanwhile (another job on the
machine, as on a shared server or beside a second run). The two sides alternate, their order
swapped every round; the table gives each side's median whole-process time.
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

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
SPIN = "import time\nwhile True:\n    time.perf_counter()\n"


def run(python: str, root: Path, steps: int, work: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES} | {"PYTHONPATH": str(root)}
    cmd = [python, "-m", "ppokit.cli.main", "train", "CartPole-v1", "--preset", "CartPole-v1-cleanrl",
           "--total-steps", str(steps), "--no-progress", "--set", "tensorboard=false", "--set", "eval_episodes=0",
           "--run-dir", str(work / f"run{time.monotonic_ns()}")]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{root}: ppokit train failed:\n{proc.stderr[-2000:]}")
    return seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", type=Path, required=True, help="a checkout of the commit before")
    p.add_argument("--after", type=Path, default=Path(__file__).resolve().parent.parent, help="this checkout")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=500_000)
    p.add_argument("--busy", type=int, default=0, help="processes kept spinning during the runs")
    args = p.parse_args()
    sides = {"before": args.before.resolve(), "after": args.after.resolve()}
    times: dict[str, list[float]] = {name: [] for name in sides}
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(args.busy)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                order = list(sides) if r % 2 == 0 else list(sides)[::-1]
                for name in order:
                    seconds = run(sys.executable, sides[name], args.steps, Path(tmp))
                    times[name].append(seconds)
                    print(f"round {r + 1}/{args.rounds}  {name:6s} {seconds:7.2f} s", flush=True)
    finally:
        for spinner in spinners:
            spinner.kill()
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"| side | whole process, s (median of {args.rounds}) | all runs, s |\n|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {medians[name]:.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    print(f"\nafter / before: {medians['after'] / medians['before']:.2f}x  ({args.steps} steps, {args.busy} busy "
          f"process(es), {os.cpu_count()} CPUs)")
    print(json.dumps({"steps": args.steps, "busy": args.busy, "times": times, "medians": medians}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
