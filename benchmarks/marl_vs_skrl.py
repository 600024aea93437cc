"""Multi-agent training throughput, ppokit against skrl at identical settings on mpe2's simple_spread_v3,
run alternately, with the bare env copies stepped with random actions beside them.

    bash benchmarks/make_bench_venv.sh                 # once: .venv-bench with skrl, PettingZoo and mpe2
    .venv/bin/python benchmarks/marl_vs_skrl.py --rounds 3 [--algo mappo] [--num-envs 16]

Each round runs, one after another, each in a fresh process with one thread: ppokit
(``marl_ppokit.py`` in .venv), skrl (``marl_skrl_anchor.py`` in .venv-bench) and the env copies alone
(``marl_env_limit.py``). Both libraries train MAPPO (or IPPO) with 16 env copies × 128 steps per update,
4 epochs of 4 minibatches, MLPs [64, 64]; env steps/s is timed after a warm-up of whole updates. The
table gives the median over rounds and ppokit's throughput as a multiple of skrl's.
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

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--algo", choices=["ippo", "mappo"], default="mappo")
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--rollout", type=int, default=128)
    p.add_argument("--updates", type=int, default=8, help="timed updates per run (after one of warm-up)")
    p.add_argument("--json", help="write every run's result here")
    args = p.parse_args()
    ppokit_py, bench_py = pythons("skrl")
    batch = args.num_envs * args.rollout
    common = ["--algo", args.algo, "--num-envs", str(args.num_envs), "--rollout", str(args.rollout),
              "--epochs", "4", "--minibatches", "4", "--hidden", "64,64",
              "--total-steps", str(batch * (args.updates + 1)), "--warmup-steps", str(batch)]
    variants = [("ppokit", ppokit_py, "marl_ppokit.py", common), ("skrl", bench_py, "marl_skrl_anchor.py", common),
                ("env only", ppokit_py, "marl_env_limit.py",
                 ["--num-envs", str(args.num_envs), "--steps", str(batch * (args.updates + 1))])]
    results: dict[str, list[float]] = {name: [] for name, *_ in variants}
    every = []
    for r in range(args.rounds):
        for name, python, script, extra in variants:
            out = run(python, script, extra, env=ONE_THREAD)
            sps = float(out["sps"] if "sps" in out else out["env_steps_per_s"])  # skrl's anchor names it so
            results[name].append(sps)
            every.append({"round": r, "variant": name, **out})
            print(f"round {r + 1}: {name} {sps:.0f} env steps/s", file=sys.stderr, flush=True)
    med = {name: statistics.median(v) for name, v in results.items()}
    print(f"| {args.algo}, {args.num_envs} copies × {args.rollout} steps | ppokit | skrl | env only | ppokit / skrl |")
    print("|---|---|---|---|---|")
    print(f"| env steps/s (median of {args.rounds}) | {med['ppokit']:.0f} | {med['skrl']:.0f} | {med['env only']:.0f} "
          f"| {med['ppokit'] / med['skrl']:.2f}× |")
    if args.json:
        Path(args.json).write_text(json.dumps(every, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({"median_sps": med, "ratio": med["ppokit"] / med["skrl"], "rounds": args.rounds}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
