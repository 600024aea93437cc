"""ppokit against itself: the same control and RLHF runs from two checkouts, alternating, so a change
that should not change speed (a refactor) is measured side by side.

    git worktree add /tmp/before <commit>
    .venv/bin/python benchmarks/two_checkouts.py --before /tmp/before --after . --rounds 3

Each run is a fresh process on one thread, with that checkout first on PYTHONPATH and its own copy of
the benchmark script (``control_ppokit.py`` for CartPole and HalfCheetah at CleanRL's settings,
``rlhf_ppokit.py`` at 8 prompts × 24 tokens); the order of the two sides alternates by round. The
table gives the medians and the after/before ratio (steps/s: above 1 is faster; s per step: below 1).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

RUNS = [
    ("cartpole", "control_ppokit.py", ["--task", "cartpole"], "sps", "steps/s"),
    ("halfcheetah", "control_ppokit.py", ["--task", "halfcheetah"], "sps", "steps/s"),
    ("rlhf 8x24", "rlhf_ppokit.py", ["--batch", "8", "--response-length", "24", "--epochs", "4", "--steps", "6",
                                     "--threads", "1"], "s_per_step_median", "s per PPO step"),
]


def run(python: str, root: Path, script: str, args: list[str], key: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    proc = subprocess.run([python, str(root / "benchmarks" / script), *args], cwd=root, capture_output=True,
                          text=True, env=env)
    if proc.returncode:
        sys.exit(f"{root}/benchmarks/{script} failed:\n{proc.stderr[-2000:]}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1])[key])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", type=Path, required=True, help="the checkout before the change")
    p.add_argument("--after", type=Path, required=True, help="the checkout after it")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    sides = [("before", args.before.resolve()), ("after", args.after.resolve())]
    results: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for name, script, script_args, key, _unit in RUNS:
            for side, root in (sides if r % 2 == 0 else sides[::-1]):
                value = run(sys.executable, root, script, script_args, key)
                results.setdefault((name, side), []).append(value)
                print(f"round {r + 1} {name:12} {side:7} {value:.4f}", file=sys.stderr)
    print("| run | before | after | after / before |")
    print("|---|---|---|---|")
    for name, _script, _args, _key, unit in RUNS:
        before, after = statistics.median(results[(name, "before")]), statistics.median(results[(name, "after")])
        print(f"| {name} ({unit}) | {before:.4g} | {after:.4g} | {after / before:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
