"""Control training throughput, ppokit against Stable-Baselines3 at identical hyperparameters, run
alternately, with the raw env stepping speed beside them.

    bash benchmarks/make_bench_venv.sh            # once: .venv-bench with SB3 (and TRL)
    .venv/bin/python benchmarks/control_vs_sb3.py --rounds 3 [--tasks cartpole halfcheetah]

Each round runs, one after another and each in a fresh process pinned to one thread: ppokit
(``control_ppokit.py`` in .venv), SB3 (``control_sb3_anchor.py`` in .venv-bench), and the bare vector
env with random actions (``env_limit.py``). steps/s is over the whole ``learn()`` call (rollout and
update; process start, imports and env construction left out, on both sides). The table gives the
median over rounds and ppokit's throughput as a multiple of SB3's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_run import pythons, run  # noqa: E402
from control_tasks import TASKS  # noqa: E402

#: Native libraries (OpenMP, MKL) one thread too, not only torch's intra-op pool.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tasks", nargs="+", default=sorted(TASKS), choices=sorted(TASKS))
    p.add_argument("--steps", type=int, help="env steps per run (default: the task's)")
    p.add_argument("--json", help="write every run's result here")
    args = p.parse_args()
    ppokit_py, bench_py = pythons("SB3")
    variants = [("ppokit", ppokit_py, "control_ppokit.py"), ("sb3", bench_py, "control_sb3_anchor.py"),
                ("env only", ppokit_py, "env_limit.py")]
    results: dict[tuple[str, str], list[dict]] = {}
    for task in args.tasks:
        steps = ["--steps", str(args.steps)] if args.steps else []
        for r in range(args.rounds):
            for name, py, script in variants:
                result = run(py, script, ["--task", task, *steps], ONE_THREAD)
                results.setdefault((task, name), []).append(result)
                print(f"round {r + 1} {task:<12} {name:<9} {result['sps']:9.0f} steps/s", file=sys.stderr)
    print("| task | ppokit steps/s | SB3 steps/s | ppokit / SB3 | env alone steps/s | ppokit / env alone |")
    print("|---|---|---|---|---|---|")
    for task in args.tasks:
        med = {name: statistics.median(r["sps"] for r in results[(task, name)]) for name, _, _ in variants}
        print(f"| {task} | {med['ppokit']:.0f} | {med['sb3']:.0f} | {med['ppokit'] / med['sb3']:.2f}× | "
              f"{med['env only']:.0f} | {med['ppokit'] / med['env only']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({f"{t}/{n}": v for (t, n), v in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
