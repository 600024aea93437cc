"""ppokit against PureJaxRL on CartPole at CleanRL's settings, whole process, one CPU core, alternating.

    bash benchmarks/make_bench_venv.sh     # once: .venv-bench with JAX 0.6.0, flax, optax, gymnax, distrax
    .venv/bin/python benchmarks/vs_purejaxrl.py --repeats 5 --json benchmarks/results/vs_purejaxrl.json

Every run is a fresh process and its time is the parent's clock around ``subprocess.run``: interpreter
start, imports (JAX's, torch's), compiling, training, writing and exit, because that is what a user
waits for. Both sides are pinned to the same single core (``taskset -c CPU``; without taskset, XLA's
and OpenMP's thread pools are cut to one thread instead) and run one after another in each repeat
(A B A B ...), so drift on a shared machine reaches both alike. One short untimed run of each side
comes first (bytecode caches, the OS file cache); see ``Runner.timed`` for PYTHONDONTWRITEBYTECODE.

(a) one seed: ``benchmarks/purejaxrl_anchor.py`` (PureJaxRL's ``make_train`` at its CartPole config,
jitted whole) against ``ppokit train CartPole-v1 --preset CartPole-v1-cleanrl`` (4 envs x 128 steps,
4 epochs, 4 minibatches, 500k steps), with ``--no-progress`` and, as PureJaxRL writes no event files and
runs no evaluation, ``tensorboard=false eval_episodes=0``; ``--as-is`` adds a row with both left on.
(b) several seeds (``--num-seeds``, 8): PureJaxRL's ``jax.vmap`` over the seeds' keys, against
``ppokit train ... --seeds 1-8`` (skipped, with a note, while ppokit has no such flag), against the
same with ``--stack-updates`` (the seeds' minibatch steps as one batched computation; skipped while
ppokit has no such flag) and against 8 ppokit processes one after another (the time is the whole
sequence). ``--no-purejaxrl`` leaves PureJaxRL's rows out (no ``.venv-bench`` needed), e.g. the
issue-34 row, ``--seeds 1-4 --stack-updates`` against 4 solo processes at 50k steps each::

    .venv/bin/python benchmarks/vs_purejaxrl.py --parts many --num-seeds 4 --total-steps 50000 --repeats 3

``--jobs J`` adds ``--seeds 1-N --jobs J`` with its processes on J cores (``taskset -c CPU-CPU+J-1``): the
only row that uses more than one core.

Each row reports the median wall time, the final mean return (the last 100 training episodes, averaged
over seeds), so a fast but broken run shows, and PureJaxRL's own split (import, compile, run). The
markdown table goes to stdout, then the JSON of every run as the last line (and to ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: The ppokit command beside the Python running this script (.venv's, as the usage line runs it).
PPOKIT = Path(sys.executable).parent / "ppokit"
BENCH_PY = ROOT / ".venv-bench" / "bin" / "python"
ANCHOR = ROOT / "benchmarks" / "purejaxrl_anchor.py"
#: CleanRL's settings, the preset both sides are held to (the anchor hard-codes the same values).
PRESET = "CartPole-v1-cleanrl"
FULL_STEPS, QUICK_STEPS = 500_000, 2_048
#: ppokit's extras PureJaxRL has no counterpart for: event files and the final 20-episode evaluation.
LEAN = ["--set", "tensorboard=false", "--set", "eval_episodes=0"]


def pinning(cpu: int) -> tuple[list[str], dict[str, str], str]:
    """The command prefix, the environment and a description of how each process is held to one core."""
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if shutil.which("taskset"):
        return ["taskset", "-c", str(cpu)], env, f"taskset -c {cpu}, OMP_NUM_THREADS=1"
    # XLA reads the second flag as TensorFlow's name for its intra-op pool; both keep JAX to one thread.
    env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    return [], env, f"XLA_FLAGS={env['XLA_FLAGS']}, OMP_NUM_THREADS=1 (no taskset)"


class Runner:
    """Runs one side's command in a fresh, pinned process and times it from outside."""

    def __init__(self, cpu: int, total_steps: int, work: Path) -> None:
        self.prefix, self.env, self.pinned = pinning(cpu)
        self.total_steps = total_steps
        self.work = work
        self._n = 0

    def timed(self, cmd: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
        """Wall seconds of the whole process (start to exit) and its completed process.

        PYTHONDONTWRITEBYTECODE is dropped: where it is set (as on this project's machines), every
        ppokit process would compile its own sources again (~0.1 s), which an installed ppokit never
        does; JAX's packages were compiled when pip installed them. The warm-up run writes the cache."""
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"} | self.env
        start = time.perf_counter()
        proc = subprocess.run([*self.prefix, *cmd], cwd=ROOT, env=env, capture_output=True, text=True)
        return time.perf_counter() - start, proc

    def widened(self, cores: int) -> Runner:
        """A runner whose processes may use ``cores`` cores from this one's on (``--jobs``' row)."""
        wide = Runner(0, self.total_steps, self.work)
        wide.env, wide._n = dict(self.env), 1000
        if self.prefix:
            first = int(self.prefix[-1])
            wide.prefix = ["taskset", "-c", f"{first}-{first + cores - 1}"]
            wide.pinned = f"taskset -c {first}-{first + cores - 1}, OMP_NUM_THREADS=1"
        return wide

    def run_dir(self) -> Path:
        self._n += 1
        return self.work / f"run{self._n}"

    def purejaxrl(self, seeds: int) -> dict[str, Any]:
        wall, proc = self.timed([str(BENCH_PY), str(ANCHOR), "--seeds", str(seeds),
                                 "--total-steps", str(self.total_steps)])
        if proc.returncode != 0:
            return {"wall_s": wall, "error": _last_line(proc.stderr)}
        return {"wall_s": wall, **json.loads(proc.stdout.strip().splitlines()[-1])}

    def ppokit(self, seed_args: list[str], extra: list[str]) -> dict[str, Any]:
        """One ``ppokit train`` process; its return is read back from the metrics.jsonl it wrote (one per
        seed, wherever under its run directory a multi-seed run puts them)."""
        run_dir = self.run_dir()
        cmd = [str(PPOKIT), "train", "CartPole-v1", "--preset", PRESET, "--total-steps", str(self.total_steps),
               *seed_args, "--run-dir", str(run_dir), "--no-progress", *extra]
        wall, proc = self.timed(cmd)
        result: dict[str, Any] = {"wall_s": wall}
        if proc.returncode != 0:
            result["error"] = _last_line(proc.stderr or proc.stdout)
        finals = [_last_row(path) for path in sorted(run_dir.rglob("metrics.jsonl"))]
        shutil.rmtree(run_dir, ignore_errors=True)
        returns = [row.get("episodic_return") for row in finals]
        result.update(seeds=len(finals), steps_per_seed=[row.get("global_step") for row in finals],
                      final_return=returns, final_return_mean=_mean(returns))
        return result

    def ppokit_sequential(self, seeds: int, extra: list[str]) -> dict[str, Any]:
        """``seeds`` ppokit processes one after another; the time is the whole sequence's."""
        runs = [self.ppokit(["--seed", str(seed)], extra) for seed in range(1, seeds + 1)]
        errors = [r["error"] for r in runs if "error" in r]
        returns = [r["final_return"][0] if r["final_return"] else None for r in runs]
        result = {"wall_s": sum(r["wall_s"] for r in runs), "seeds": seeds, "final_return": returns,
                  "final_return_mean": _mean(returns), "wall_s_each": [r["wall_s"] for r in runs]}
        return {**result, "error": errors[0]} if errors else result


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _last_row(path: Path) -> dict[str, Any]:
    lines = path.read_text(encoding="utf-8").strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def _mean(values: list[Any]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None


def train_flags() -> str:
    """The help of this ppokit's ``train``: which of the flags built beside this benchmark it has."""
    return subprocess.run([str(PPOKIT), "train", "--help"], capture_output=True, text=True, cwd=ROOT).stdout


def has_seeds_flag() -> bool:
    """Whether this ppokit's ``train`` takes ``--seeds``."""
    return "--seeds" in train_flags()


def variants(args: argparse.Namespace, runner: Runner, seeds_flag: bool, stack_flag: bool = False) -> dict[str, Any]:
    """Row name → a function that runs it once, in the order each repeat runs them."""
    n = args.num_seeds
    anchor = not getattr(args, "no_purejaxrl", False)
    rows: dict[str, Any] = {}
    if "one" in args.parts:
        if anchor:
            rows["PureJaxRL, 1 seed"] = lambda: runner.purejaxrl(1)
        rows["ppokit, 1 seed"] = lambda: runner.ppokit(["--seed", "1"], LEAN)
        if args.as_is:
            rows["ppokit, 1 seed, tensorboard + final eval"] = lambda: runner.ppokit(["--seed", "1"], [])
    if "many" in args.parts:
        if anchor:
            rows[f"PureJaxRL, {n} seeds (vmap)"] = lambda: runner.purejaxrl(n)
        if seeds_flag:
            rows[f"ppokit, {n} seeds (--seeds 1-{n})"] = lambda: runner.ppokit(["--seeds", f"1-{n}"], LEAN)
        if stack_flag:
            rows[f"ppokit, {n} seeds (--seeds 1-{n} --stack-updates)"] = lambda: runner.ppokit(
                ["--seeds", f"1-{n}", "--stack-updates"], LEAN)
        rows[f"ppokit, {n} seeds (sequential processes)"] = lambda: runner.ppokit_sequential(n, LEAN)
        jobs = getattr(args, "jobs", 1)
        if jobs > 1 and seeds_flag:
            wide = runner.widened(jobs)
            rows[f"ppokit, {n} seeds (--seeds 1-{n} --jobs {jobs}, on {jobs} cores)"] = lambda: wide.ppokit(
                ["--seeds", f"1-{n}", "--jobs", str(jobs)], LEAN)
    return rows


def summarise(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per row: the median and spread of the wall time over repeats, the mean final return, and for
    PureJaxRL the median of its own split."""
    summary: dict[str, dict[str, Any]] = {}
    for name, runs in results.items():
        ok = [r for r in runs if "error" not in r]
        walls = [r["wall_s"] for r in ok]
        row: dict[str, Any] = {"runs": len(runs), "failed": len(runs) - len(ok),
                               "error": next((r["error"] for r in runs if "error" in r), None)}
        if walls:
            row.update(wall_s_median=statistics.median(walls), wall_s_min=min(walls), wall_s_max=max(walls),
                       final_return_mean=_mean([r.get("final_return_mean") for r in ok]))
        for part in ("time_import_s", "time_compile_s", "time_run_s"):
            if ok and part in ok[0]:
                row[part] = statistics.median(r[part] for r in ok)
        summary[name] = row
    return summary


def table(summary: dict[str, dict[str, Any]], num_seeds: int, notes: list[str]) -> str:
    """The markdown table: each row's time also as a multiple of PureJaxRL's at the same seed count,
    the several-seed rows as a multiple of the same side's one-seed time and ppokit's as a multiple
    of its seeds' processes one after another."""
    def wall(name: str) -> float | None:
        return summary.get(name, {}).get("wall_s_median")

    lines = ["| run | whole process, s (median) | min–max, s | / PureJaxRL | / one seed of the same side | "
             "/ sequential processes | final return (last 100 ep.) | PureJaxRL import / compile / run, s |",
             "|---|---|---|---|---|---|---|---|"]
    sequential = wall(f"ppokit, {num_seeds} seeds (sequential processes)")
    for name, row in summary.items():
        if "wall_s_median" not in row:
            lines.append(f"| {name} | failed: {row['error']} | | | | | | |")
            continue
        many = f"{num_seeds} seeds" in name
        anchor = wall(f"PureJaxRL, {num_seeds} seeds (vmap)" if many else "PureJaxRL, 1 seed")
        one = wall("PureJaxRL, 1 seed" if name.startswith("PureJaxRL") else "ppokit, 1 seed")
        ratio = f"{row['wall_s_median'] / anchor:.2f}×" if anchor else "–"
        per_one = f"{row['wall_s_median'] / one:.2f}×" if many and one else "–"
        per_seq = f"{row['wall_s_median'] / sequential:.2f}×" if many and sequential and name.startswith("ppokit") else "–"
        ret = "–" if row.get("final_return_mean") is None else f"{row['final_return_mean']:.1f}"
        split = (f"{row['time_import_s']:.2f} / {row['time_compile_s']:.2f} / {row['time_run_s']:.2f}"
                 if "time_compile_s" in row else "")
        lines.append(f"| {name} | {row['wall_s_median']:.2f} | {row['wall_s_min']:.2f}–{row['wall_s_max']:.2f} | "
                     f"{ratio} | {per_one} | {per_seq} | {ret} | {split} |")
    return "\n".join(lines + [""] + [f"- {note}" for note in notes])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="rounds; each runs every row once, in order")
    p.add_argument("--num-seeds", type=int, default=8, help="seeds of part (b)")
    p.add_argument("--parts", nargs="+", default=["one", "many"], choices=["one", "many"],
                   help="one: (a) one seed; many: (b) several seeds")
    p.add_argument("--total-steps", type=int, help=f"env steps per seed (default {FULL_STEPS}; --quick: {QUICK_STEPS})")
    p.add_argument("--as-is", action="store_true", help="also run ppokit with its TensorBoard files and final eval")
    p.add_argument("--cpu", type=int, default=0, help="the core every process is pinned to")
    p.add_argument("--quick", action="store_true", help=f"smoke mode: {QUICK_STEPS} steps, 1 repeat")
    p.add_argument("--json", help="also write the JSON here")
    p.add_argument("--jobs", type=int, default=1,
                   help="also time --seeds 1-N --jobs J, its processes on J cores from --cpu on (part (b))")
    p.add_argument("--no-purejaxrl", action="store_true",
                   help="ppokit's rows only (no .venv-bench needed): e.g. --seeds against sequential processes")
    args = p.parse_args()
    needed = [(PPOKIT, "bash scripts/test.sh --co -q")]
    if not args.no_purejaxrl:
        needed.append((BENCH_PY, "bash benchmarks/make_bench_venv.sh"))
    for path, how in needed:
        if not path.exists():
            sys.exit(f"{path} missing: run {how}")
    if args.num_seeds < 2:
        p.error("--num-seeds must be at least 2 (part (a) is the one-seed case)")
    if args.quick:
        args.repeats = 1
    total_steps = args.total_steps or (QUICK_STEPS if args.quick else FULL_STEPS)
    flags = train_flags()
    seeds_flag, stack_flag = "--seeds" in flags, "--stack-updates" in flags
    notes = [] if seeds_flag or "many" not in args.parts else [
        f"ppokit train has no --seeds flag yet: the row 'ppokit, {args.num_seeds} seeds (--seeds 1-{args.num_seeds})'"
        " was skipped."]
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="vs_purejaxrl_") as work:
        runner = Runner(args.cpu, total_steps, Path(work))
        rows = variants(args, runner, seeds_flag, stack_flag)
        if not args.quick:  # untimed: bytecode caches written, files in the OS cache, for both sides
            warm = Runner(args.cpu, QUICK_STEPS, Path(work))
            if not args.no_purejaxrl:
                warm.purejaxrl(1)
            warm.ppokit(["--seed", "1"], LEAN)
        for repeat in range(args.repeats):
            for name, run_once in rows.items():
                result = run_once()
                results.setdefault(name, []).append(result)
                status = f"failed: {result['error']}" if "error" in result else f"{result['wall_s']:.2f} s"
                print(f"repeat {repeat + 1}/{args.repeats}  {name:<45} {status}", file=sys.stderr)
    summary = summarise(results)
    notes += [f"{total_steps} env steps per seed; each process pinned: {runner.pinned}.",
              "Whole process: the parent's wall clock around subprocess.run (imports and compile included)."]
    print(table(summary, args.num_seeds, notes))
    out = {"total_steps": total_steps, "repeats": args.repeats, "num_seeds": args.num_seeds, "pinning": runner.pinned,
           "ppokit_has_seeds_flag": seeds_flag, "ppokit_has_stack_flag": stack_flag, "summary": summary, "runs": results, "notes": notes}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1), encoding="utf-8")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
