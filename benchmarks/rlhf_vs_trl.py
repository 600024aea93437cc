"""RLHF PPO step time, ppokit against TRL 1.12's ``trl.experimental.ppo``, run alternately.

    bash benchmarks/make_bench_venv.sh            # once: .venv-bench with TRL 1.12
    .venv/bin/python benchmarks/rlhf_vs_trl.py --rounds 3 [--shapes 8x24 16x32] [--lora]

Each round runs, one after another and each in a fresh process pinned to one thread: ppokit
(``rlhf_ppokit.py`` in .venv), TRL as released (``rlhf_trl_anchor.py`` in .venv-bench, with its
forced per-step ``gc.collect()``), and TRL with that forced collection patched out. The table
gives the median over rounds of each run's median seconds per PPO step (first step left out),
tokens/s, peak RSS, and ppokit's time as a fraction of each TRL variant's.
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--shapes", nargs="+", default=["8x24", "16x32"], help="BATCHxRESPONSE_LENGTH")
    p.add_argument("--lora", action="store_true", help="also run both with LoRA (r=8 on c_attn)")
    p.add_argument("--json", help="write every run's result here")
    args = p.parse_args()
    ppokit_py, trl_py = pythons("TRL")
    variants = [("ppokit", ppokit_py, "rlhf_ppokit.py", []),
                ("trl", trl_py, "rlhf_trl_anchor.py", []),
                ("trl-no-forced-gc", trl_py, "rlhf_trl_anchor.py", ["--no-forced-gc"])]
    if args.lora:
        variants += [("ppokit-lora", ppokit_py, "rlhf_ppokit.py", ["--lora"]),
                     ("trl-lora", trl_py, "rlhf_trl_anchor.py", ["--lora"])]
    results: dict[tuple[str, str], list[dict]] = {}
    for shape in args.shapes:
        batch, length = shape.split("x")
        common = ["--batch", batch, "--response-length", length, "--epochs", str(args.epochs),
                  "--steps", str(args.steps), "--threads", "1"]
        for r in range(args.rounds):
            for name, py, script, extra in variants:
                result = run(py, script, common + extra)
                results.setdefault((shape, name), []).append(result)
                print(f"round {r + 1} {shape} {name}: {result['s_per_step_median']:.3f} s/step", file=sys.stderr, flush=True)

    print(f"\n{'shape':<7} {'library':<18} {'s/step':>8} {'tokens/s':>9} {'RSS MiB':>8}  runs")
    medians = {}
    for (shape, name), rows in results.items():
        s = statistics.median(r["s_per_step_median"] for r in rows)
        medians[(shape, name)] = s
        tok = statistics.median(r["tokens_per_s"] for r in rows)
        rss = max(r["peak_rss_mib"] for r in rows)
        runs = " ".join(f"{r['s_per_step_median']:.3f}" for r in rows)
        print(f"{shape:<7} {name:<18} {s:>8.3f} {tok:>9.0f} {rss:>8.0f}  {runs}")
    print()
    for shape in args.shapes:
        ours = medians[(shape, "ppokit")]
        print(f"{shape}: ppokit/trl = {ours / medians[(shape, 'trl')]:.2f}, "
              f"ppokit/trl-no-forced-gc = {ours / medians[(shape, 'trl-no-forced-gc')]:.2f}"
              + (f", ppokit-lora/trl-lora = {medians[(shape, 'ppokit-lora')] / medians[(shape, 'trl-lora')]:.2f}"
                 if args.lora else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({f"{k[0]} {k[1]}": v for k, v in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
