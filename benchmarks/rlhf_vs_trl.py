"""RLHF PPO step time, ppokit against TRL 1.12's ``trl.experimental.ppo``, run alternately.

    bash benchmarks/make_bench_venv.sh            # once: .venv-bench with TRL 1.12
    .venv/bin/python benchmarks/rlhf_vs_trl.py --rounds 3 [--shapes 8x24 16x32] [--lora] [--before DIR]

Each round runs, one after another and each in a fresh process pinned to one thread: ppokit
(``rlhf_ppokit.py`` in .venv) with its default recomputed old log-probs and with
``old_logprobs: sampling`` (TRL's way: from the sampling pass), TRL as released
(``rlhf_trl_anchor.py`` in .venv-bench, with its forced per-step ``gc.collect()``), and TRL with that
forced collection patched out; ``--lora`` adds the LoRA runs of each, ``--before DIR`` ppokit from
another checkout (``git worktree add DIR <commit>``) with the same script. The table gives the
median over rounds of each run's median seconds per PPO step (first step left out), tokens/s, peak
RSS, the per-phase split (generation, scoring, rollout forward passes, update), and ppokit's time as
a fraction of TRL's without the forced collection.
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
    p.add_argument("--before", help="also run ppokit from this checkout (PYTHONPATH) with the same script")
    p.add_argument("--json", help="write every run's result here")
    args = p.parse_args()
    ppokit_py, trl_py = pythons("TRL")
    before = {"PYTHONPATH": str(Path(args.before).resolve())} if args.before else None
    now = {"PYTHONPATH": str(ROOT)}
    variants = [("ppokit", ppokit_py, "rlhf_ppokit.py", [], now),
                ("ppokit-sampling", ppokit_py, "rlhf_ppokit.py", ["--old-logprobs", "sampling"], now),
                ("trl", trl_py, "rlhf_trl_anchor.py", [], None),
                ("trl-no-forced-gc", trl_py, "rlhf_trl_anchor.py", ["--no-forced-gc"], None)]
    if before:
        variants.insert(0, ("ppokit-before", ppokit_py, "rlhf_ppokit.py", [], before))
    if args.lora:
        variants += [("ppokit-lora", ppokit_py, "rlhf_ppokit.py", ["--lora"], now),
                     ("ppokit-lora-sampling", ppokit_py, "rlhf_ppokit.py", ["--lora", "--old-logprobs", "sampling"], now),
                     ("trl-lora-no-forced-gc", trl_py, "rlhf_trl_anchor.py", ["--lora", "--no-forced-gc"], None)]
        if before:
            variants.insert(5, ("ppokit-lora-before", ppokit_py, "rlhf_ppokit.py", ["--lora"], before))
    results: dict[tuple[str, str], list[dict]] = {}
    for shape in args.shapes:
        batch, length = shape.split("x")
        common = ["--batch", batch, "--response-length", length, "--epochs", str(args.epochs),
                  "--steps", str(args.steps), "--threads", "1"]
        for r in range(args.rounds):
            for name, py, script, extra, env in variants:
                result = run(py, script, common + extra, env=env)
                results.setdefault((shape, name), []).append(result)
                print(f"round {r + 1} {shape} {name}: {result['s_per_step_median']:.3f} s/step", file=sys.stderr, flush=True)

    phase_keys = [("generate_s", "generate_s"), ("score_s", "score_s"), ("forward_s", "forward_s"),
                  ("epochs_s", "update_s")]  # ppokit's key, TRL's key
    print(f"\n{'shape':<7} {'library':<22} {'s/step':>7} {'gen':>6} {'score':>6} {'fwd':>6} {'update':>7} "
          f"{'tok/s':>6} {'RSS MiB':>8}  runs")
    medians = {}
    for (shape, name), rows in results.items():
        s = statistics.median(r["s_per_step_median"] for r in rows)
        medians[(shape, name)] = s
        tok = statistics.median(r["tokens_per_s"] for r in rows)
        rss = max(r["peak_rss_mib"] for r in rows)
        split = []
        for ours, theirs in phase_keys:
            key = theirs if name.startswith("trl") else ours
            values = [r["phases_s"][key] for r in rows if key in (r.get("phases_s") or {})]
            split.append(f"{statistics.median(values):>6.3f}" if values else f"{'-':>6}")
        runs = " ".join(f"{r['s_per_step_median']:.3f}" for r in rows)
        print(f"{shape:<7} {name:<22} {s:>7.3f} {' '.join(split[:3])} {split[3]:>7} {tok:>6.0f} {rss:>8.0f}  {runs}")
    print()
    for shape in args.shapes:
        base = medians[(shape, "trl-no-forced-gc")]
        ratios = [f"{name}/trl-no-forced-gc = {medians[(shape, name)] / base:.2f}" for name in
                  ("ppokit-before", "ppokit", "ppokit-sampling") if (shape, name) in medians]
        if args.lora:
            lora_base = medians[(shape, "trl-lora-no-forced-gc")]
            ratios += [f"{name}/trl-lora-no-forced-gc = {medians[(shape, name)] / lora_base:.2f}" for name in
                       ("ppokit-lora-before", "ppokit-lora", "ppokit-lora-sampling") if (shape, name) in medians]
        print(f"{shape}: " + ", ".join(ratios))
    if args.json:
        Path(args.json).write_text(json.dumps({f"{k[0]} {k[1]}": v for k, v in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
