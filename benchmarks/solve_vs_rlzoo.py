"""Time to solve, ppokit against Stable-Baselines3 with the RL Zoo's tuned settings, run alternately.

    bash benchmarks/make_bench_venv.sh            # once: .venv-bench with SB3
    .venv/bin/python benchmarks/solve_vs_rlzoo.py --seeds 1 2 3 [--tasks cartpole pendulum acrobot]

For every task and seed, one after the other, each in a fresh process pinned to one thread:

* ppokit: ``ppokit train ENV --stop-at-return R --seed S`` (the env's preset; a deterministic
  20-episode evaluation after every update, stopping once its mean reaches R and saving the policy
  and eval.json);
* SB3 with the RL Zoo's hyperparameters and evaluation (``solve_sb3_anchor.py``).

The time is the whole process, from spawn to exit (interpreter start, imports, env construction,
training, evaluation and saving). A run that ends without reaching R is marked unsolved.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_run import pythons  # noqa: E402
from solve_tasks import TASKS  # noqa: E402

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **ONE_THREAD})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def run_ppokit(task: str, seed: int, tmp: Path) -> dict:
    t = TASKS[task]
    run_dir = tmp / f"ppokit-{task}-{seed}"
    seconds, _ = timed([str(ROOT / ".venv" / "bin" / "ppokit"), "train", t["env_id"], "--stop-at-return",
                        str(t["threshold"]), "--seed", str(seed), "--run-dir", str(run_dir), "--overwrite",
                        "--no-progress", "--set", "tensorboard=false", "--set", "torch_threads=1"])
    result = json.loads((run_dir / "eval.json").read_text())
    return {"seconds": seconds, "steps": result["global_step"], "return": result["mean_return"],
            "solved": result["mean_return"] >= t["threshold"]}


def run_sb3(task: str, seed: int, tmp: Path) -> dict:
    seconds, out = timed([str(ROOT / ".venv-bench" / "bin" / "python"), str(ROOT / "benchmarks" / "solve_sb3_anchor.py"),
                          "--task", task, "--seed", str(seed), "--out", str(tmp / f"sb3-{task}-{seed}")])
    result = json.loads(out.strip().splitlines()[-1])
    return {"seconds": seconds, "steps": result["steps"], "return": result["best_mean_return"],
            "solved": result["solved"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--json", help="write every run's result here")
    args = p.parse_args()
    pythons("SB3")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            for seed in args.seeds:
                for name, fn in (("ppokit", run_ppokit), ("sb3", run_sb3)):
                    r = {"task": task, "seed": seed, "library": name, **fn(task, seed, Path(tmp))}
                    rows.append(r)
                    print(f"{task:<9} seed {seed} {name:<6} {r['seconds']:7.2f} s {r['steps']:>8} steps "
                          f"return {r['return']:8.2f} {'solved' if r['solved'] else 'NOT SOLVED'}", file=sys.stderr)
    print("| task | seed | ppokit s | ppokit steps | SB3 (RL Zoo) s | SB3 steps | ppokit / SB3 time |")
    print("|---|---|---|---|---|---|---|")
    for task in args.tasks:
        ratios = []
        for seed in args.seeds:
            a = next(r for r in rows if r["task"] == task and r["seed"] == seed and r["library"] == "ppokit")
            b = next(r for r in rows if r["task"] == task and r["seed"] == seed and r["library"] == "sb3")
            ratio = a["seconds"] / b["seconds"]
            ratios.append(ratio)
            mark = lambda r: "" if r["solved"] else " (not solved)"  # noqa: E731
            print(f"| {task} | {seed} | {a['seconds']:.2f}{mark(a)} | {a['steps']} | {b['seconds']:.2f}{mark(b)} | "
                  f"{b['steps']} | {ratio:.2f} |")
        print(f"| {task} | median | | | | | {statistics.median(ratios):.2f} (max {max(ratios):.2f}) |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
