"""Does the Atari preset learn? ppokit's Breakout at CleanRL's settings, against CleanRL's published curve.

    .venv/bin/python benchmarks/atari_learning.py --steps 1000000 --run-dir runs/atari-learning   # ~90 min, 1 core
    .venv/bin/python benchmarks/atari_learning.py --run-dir runs/atari-learning --summary-only     # the table again

Trains ``ppokit train BreakoutNoFrameskip-v4`` (its preset: CleanRL ``ppo_atari.py``'s settings, 8 envs
x 128 steps, 4 epochs x 4 minibatches, Adam 2.5e-4 annealed over the run, clip 0.1, entropy 0.01, the
Nature CNN, the standard Atari preprocessing) with ``vectorization: envpool`` (as CleanRL's
``ppo_atari_envpool.py``), one torch thread, pinned to ``--cpu``, for ``--steps`` agent steps (each
4 emulator frames), then reads its ``metrics.jsonl``: the mean game score of the last 100 games at each
checkpoint, and its final evaluation.

The learning rate anneals over ``--steps``, not over CleanRL's 10M, so a short run ends with a
smaller step size than CleanRL's run had at the same frame: its curve is close to, not the same as,
the first part of a 10M-step run.

``REFERENCE`` holds CleanRL's published curve, read off the plots of its documentation (3 seeds each;
no table of early points is published): ``docs/rl-algorithms/ppo/BreakoutNoFrameskip-v4.png``
(``ppo_atari.py``) and ``docs/rl-algorithms/ppo/Breakout.png`` (``ppo_atari_envpool.py``) in
github.com/vwxyzjn/cleanrl, and the curves of "The 37 Implementation Details of PPO" (ICLR blog
track 2022, ``ppo_atari.py`` against openai/baselines' ppo2, 3 seeds each). Read off a plot, each
value is good to about ±1-2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PPOKIT = Path(sys.executable).parent / "ppokit"
ENV_ID = "BreakoutNoFrameskip-v4"
#: Agent steps → CleanRL's published mean episodic return (whole games) at that point, per source.
REFERENCE: dict[str, dict[int, float]] = {
    "CleanRL ppo_atari.py (docs plot)": {250_000: 6, 500_000: 10, 1_000_000: 19, 1_250_000: 25, 2_500_000: 68,
                                         10_000_000: 412},
    "CleanRL ppo_atari_envpool.py (docs plot)": {1_000_000: 17, 1_250_000: 20, 2_500_000: 50, 10_000_000: 388},
    "ppo_atari.py, 37-details blog (plot)": {250_000: 6.5, 500_000: 10.7, 1_000_000: 18.3, 1_250_000: 22.9,
                                            2_500_000: 56.8},
    "openai/baselines ppo2, 37-details blog (plot)": {250_000: 6.4, 500_000: 10.8, 1_000_000: 17.4,
                                                     1_250_000: 20.2, 2_500_000: 58.3},
}
#: A random policy's Breakout score (the DQN papers' "random" column), for scale.
RANDOM_SCORE = 1.7


def train(steps: int, run_dir: Path, cpu: int, seed: int, eval_games: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    prefix = ["taskset", "-c", str(cpu)] if shutil.which("taskset") else []
    cmd = [*prefix, str(PPOKIT), "train", ENV_ID, "--set", "vectorization=envpool", "--total-steps", str(steps),
           "--seed", str(seed), "--run-dir", str(run_dir), "--no-progress", "--set", "torch_threads=1",
           "--set", f"eval_episodes={eval_games}"]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)


def summary(run_dir: Path) -> dict[str, Any]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if line]
    train_rows = [r for r in rows if "global_step" in r and r.get("episodic_return") is not None]
    last = max(r["global_step"] for r in train_rows)
    # A budget is trained in whole rollouts (1M steps of 8 x 128 is 999,424): a mark less than one
    # rollout past the last row counts as reached.
    rollout = train_rows[-1]["global_step"] - train_rows[-2]["global_step"] if len(train_rows) > 1 else 0
    marks = sorted({m for ref in REFERENCE.values() for m in ref if m < last + rollout})
    if not marks or marks[-1] < last - rollout:
        marks.append(last)
    curve: dict[int, float] = {}
    for mark in marks:  # the training row nearest each mark at or before it
        before = [r for r in train_rows if r["global_step"] <= mark]
        curve[mark] = before[-1]["episodic_return"]
    evaluation = None
    eval_file = run_dir / "eval.json"
    if eval_file.exists():
        evaluation = json.loads(eval_file.read_text(encoding="utf-8"))
    seconds = train_rows[-1].get("time_elapsed")
    return {"run_dir": str(run_dir), "steps": last, "frames": 4 * last, "curve": curve, "evaluation": evaluation,
            "train_seconds": seconds, "steps_per_second": last / seconds if seconds else None,
            "reference": REFERENCE, "random_score": RANDOM_SCORE}


def table(result: dict[str, Any]) -> str:
    names = list(REFERENCE)
    lines = ["| agent steps (frames) | ppokit, last 100 games | " + " | ".join(names) + " |",
             "|---|---|" + "---|" * len(names)]
    for mark, score in result["curve"].items():
        refs = [f"{REFERENCE[n][mark]:g}" if mark in REFERENCE[n] else "–" for n in names]
        lines.append(f"| {mark:,} ({4 * mark / 1e6:.3g}M) | {score:.1f} | " + " | ".join(refs) + " |")
    ev = result["evaluation"]
    if ev:
        returns = ev.get("returns") or []
        lines.append(f"\nFinal evaluation: {ev['mean_return']:.1f} ± {ev['std_return']:.1f} over {len(returns)} "
                     f"games (random play: {RANDOM_SCORE}).")
    if result["steps_per_second"]:
        lines.append(f"Training: {result['train_seconds'] / 60:.0f} min, {result['steps_per_second']:.0f} agent steps/s.")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1_000_000, help="agent steps (x4 frames)")
    p.add_argument("--run-dir", type=Path, required=True, help="where the run is written (or read, --summary-only)")
    p.add_argument("--cpu", type=int, default=0, help="the core the run is pinned to")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--eval-games", type=int, default=10, help="games of the final evaluation")
    p.add_argument("--summary-only", action="store_true", help="only read an existing run")
    p.add_argument("--json", help="also write the JSON here")
    args = p.parse_args()
    if not args.summary_only:
        train(args.steps, args.run_dir, args.cpu, args.seed, args.eval_games)
    result = summary(args.run_dir)
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
