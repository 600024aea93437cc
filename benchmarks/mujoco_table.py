"""Summarise benchmarks/mujoco_1m.sh's runs against CleanRL's and the RL Zoo's published figures.

    .venv/bin/python benchmarks/mujoco_table.py [OUT_DIR]

"training return" is the mean undiscounted return of the last 100 training episodes when the run
ended (what CleanRL's charts report); "eval" is the run's deterministic 20-episode evaluation of the
final policy (eval.json).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: CleanRL ppo_continuous_action at 1M steps, and the RL Zoo's PPO, as issue 4 quotes them.
PUBLISHED = {"HalfCheetah-v5": (1443, 5819), "Hopper-v5": (2383, 2410), "Walker2d-v5": (2288, 3479)}


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench-runs" / "mujoco-1m"
    print("| task | seed | steps | training return | eval (deterministic) | steps/s |")
    print("|---|---|---|---|---|---|")
    summary = []
    for env, (cleanrl, zoo) in PUBLISHED.items():
        train, evals = [], []
        for run in sorted(out.glob(f"{env}__s*")):
            if not (run / "eval.json").exists():
                continue
            last = json.loads((run / "metrics.jsonl").read_text().strip().splitlines()[-1])
            ev = json.loads((run / "eval.json").read_text())["mean_return"]
            train.append(last["episodic_return"])
            evals.append(ev)
            print(f"| {env} | {run.name.rsplit('__s', 1)[1]} | {last['global_step']} | {last['episodic_return']:.0f} | "
                  f"{ev:.0f} | {last['sps']:.0f} |")
        if train:
            summary.append((env, train, evals, cleanrl, zoo))
    print()
    print("| task | seeds | training return, mean (min) | eval, mean | CleanRL | RL Zoo |")
    print("|---|---|---|---|---|---|")
    for env, train, evals, cleanrl, zoo in summary:
        print(f"| {env} | {len(train)} | {statistics.mean(train):.0f} ({min(train):.0f}) | {statistics.mean(evals):.0f} | "
              f"{cleanrl} | {zoo} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
