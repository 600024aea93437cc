"""ppokit's general defaults (no preset) against Stable-Baselines3's defaults, over a public suite.

    bash benchmarks/make_bench_venv.sh            # once: .venv-bench with SB3
    .venv/bin/python benchmarks/defaults_vs_sb3.py --seeds 1 2 3 --jobs 2 --results defaults.jsonl
    # a sweep candidate beside them (named, with the config fields it changes):
    .venv/bin/python benchmarks/defaults_vs_sb3.py --candidate ent01 ent_coef=0.01 --results defaults.jsonl

Every run is a fresh process pinned to one thread: ``defaults_ppokit.py`` (in .venv) and
``defaults_sb3_anchor.py`` (in .venv-bench), each task at the suite's budget (``defaults_tasks.py``).
Results are appended to ``--results`` as JSON lines and runs already there are skipped, so an
interrupted sweep goes on where it stopped. The table gives, per task, the mean ± std over seeds of
the final policy's deterministic evaluation return (10 episodes on a fresh env) and of the training
return (the last 100 training episodes). These are returns, not timings: runs may go two at once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_run import pythons, run  # noqa: E402
from defaults_tasks import HELD_OUT, SUITE  # noqa: E402

SUITES = {"sweep": SUITE, "held-out": HELD_OUT}

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def spread(values: list[float]) -> str:
    if not values:
        return "—"
    mean = statistics.fmean(values)
    return f"{mean:.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--suite", choices=list(SUITES), default="sweep",
                   help="the tasks the defaults were chosen on, or the ones kept out of that choice")
    p.add_argument("--envs", nargs="+", choices=[*SUITE, *HELD_OUT], help="these tasks only (default: the suite's)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (returns only; keep 1 to read seconds)")
    p.add_argument("--results", default="defaults_vs_sb3.jsonl", help="JSON lines, one per run; appended to")
    p.add_argument("--candidate", nargs="+", metavar=("NAME", "KEY=VALUE"),
                   help="also run ppokit with these fields changed, under NAME")
    p.add_argument("--sides", nargs="*", default=["ppokit", "sb3"], choices=["ppokit", "sb3"],
                   help="which of ppokit's defaults and SB3's to run besides any candidate")
    p.add_argument("--report", action="store_true",
                   help="run nothing: print the table of every variant already in --results")
    args = p.parse_args()
    suite = {**SUITE, **HELD_OUT} if args.envs else SUITES[args.suite]
    args.envs = args.envs or list(suite)
    ppokit_py, bench_py = pythons("SB3")
    sides = {"ppokit": (ppokit_py, "defaults_ppokit.py", []), "sb3": (bench_py, "defaults_sb3_anchor.py", [])}
    variants: dict[str, tuple[Path, str, list[str]]] = {s: sides[s] for s in args.sides}
    if args.candidate:
        name, *fields = args.candidate
        variants[name] = (ppokit_py, "defaults_ppokit.py", fields)
    path = Path(args.results)
    done = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    have = {(r["variant"], r["env"], r["seed"]) for r in done}
    todo = [(v, env, seed) for env in args.envs for seed in args.seeds for v in variants
            if (v, env, seed) not in have]

    def one(job: tuple[str, str, int]) -> dict:
        variant, env, seed = job
        python, script, fields = variants[variant]
        extra = [a for f in fields for a in ("--set", f)]
        result = {"variant": variant, **run(python, script, ["--env", env, "--seed", str(seed), *extra], ONE_THREAD)}
        with path.open("a") as f:  # one short line per write: safe from two threads in practice
            f.write(json.dumps(result) + "\n")
        print(f"{variant:<10} {env:<26} seed {seed}: eval {result['eval_return']:9.1f}  "
              f"train {result['train_return'] or float('nan'):9.1f}  {result['seconds']:6.0f} s", file=sys.stderr)
        return result

    if args.report:
        todo, variants = [], {r["variant"]: variants.get(r["variant"], sides["ppokit"]) for r in done}
    with ThreadPoolExecutor(args.jobs) as pool:
        done += list(pool.map(one, todo))
    names = list(variants)
    print("| task | steps | " + " | ".join(f"{n} eval | {n} train" for n in names) + " |")
    print("|---|---|" + "---|---|" * len(names))
    for env in args.envs:
        cells = []
        for n in names:
            runs = [r for r in done if r["variant"] == n and r["env"] == env and r["seed"] in args.seeds]
            cells += [spread([r["eval_return"] for r in runs]),
                      spread([r["train_return"] for r in runs if r["train_return"] is not None])]
        print(f"| {env} | {suite[env] // 1000}k | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
