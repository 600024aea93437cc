"""Where each side's time goes, ppokit against PureJaxRL (CartPole, CleanRL's settings, one core).

    .venv/bin/python benchmarks/purejaxrl_phases.py --repeats 3 --json benchmarks/results/purejaxrl_phases.json
    .venv/bin/python benchmarks/purejaxrl_phases.py --repeats 3 --isa avx2     # as on a CPU without AVX-512

``vs_purejaxrl.py`` times each side's whole process; this script splits both into the same phases,
from runs of the same pinned, alternating kind (each a fresh process on ``--cpu``):

* **PureJaxRL**: ``purejaxrl_anchor.py`` three times per repeat, compiling the whole run
  (``--phase full``), its rollouts only (``rollout``: the policy acting and the env stepping) and its
  env steps only (``env``: random actions). Env steps = ``env``'s run; acting = ``rollout`` − ``env``;
  update (GAE and the epochs) = ``full`` − ``rollout``; compile = ``full``'s tracing and XLA compile;
  start-up = the whole process less all of that (interpreter, imports, exit).
* **ppokit**: ``phase_times.py`` (the CLI in process with timers around its phases): env steps =
  the vector env's ``step``; acting = the rollout less the env steps (the NumPy policy, sampling and
  the rollout's bookkeeping); update = GAE and the epochs; start-up = the whole process less
  ``main()``. A plain ``ppokit train`` process is timed too, for the whole-process column (the timers
  add ~0.5 µs a call).

``--isa avx2`` caps the vector instructions on both sides to AVX2, as on CPUs without AVX-512 (AMD
EPYC before Zen 4, most Intel desktop parts): NumPy's dispatch (``NPY_DISABLE_CPU_FEATURES``),
OpenBLAS's kernels (``OPENBLAS_CORETYPE=Haswell``), torch's (``ATEN_CPU_CAPABILITY=avx2``) and
XLA's code generation (``--xla_cpu_max_isa=AVX2``). It is a second machine one can measure on one
machine; the clock, caches and memory stay this machine's.

Prints the median of each phase over the repeats as a markdown table, then the JSON of every run as
the last line (and to ``--json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_purejaxrl import ANCHOR, BENCH_PY, LEAN, PPOKIT, PRESET, ROOT, Runner, _last_line  # noqa: E402

PHASE_TIMES = ROOT / "benchmarks" / "phase_times.py"
ANCHOR_PHASES = ("full", "rollout", "env")
#: The rows of the table, in order.
ROWS = ("start-up (interpreter, imports, exit)", "compile", "env steps", "acting", "update (GAE + epochs)",
        "other", "whole process")
#: What ``--isa avx2`` sets in both sides' environment.
AVX2_ONLY = {"NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR", "OPENBLAS_CORETYPE": "Haswell",
             "ATEN_CPU_CAPABILITY": "avx2", "XLA_FLAGS": "--xla_cpu_max_isa=AVX2"}


def _json_tail(text: str) -> dict[str, Any]:
    return json.loads(text.strip().splitlines()[-1])


def purejaxrl_phases(runner: Runner) -> dict[str, Any]:
    """One repeat of the anchor's three compilations, split into the table's phases."""
    runs: dict[str, dict[str, Any]] = {}
    for phase in ANCHOR_PHASES:
        wall, proc = runner.timed([str(BENCH_PY), str(ANCHOR), "--phase", phase, "--total-steps", str(runner.total_steps)])
        if proc.returncode != 0:
            return {"error": f"anchor --phase {phase}: {_last_line(proc.stderr)}"}
        runs[phase] = {"wall_s": wall, **_json_tail(proc.stdout)}
    full = runs["full"]
    in_loop = full["time_build_s"] + full["time_compile_s"] + full["time_run_s"] + full["time_read_metrics_s"]
    phases = {
        ROWS[0]: full["wall_s"] - in_loop,
        ROWS[1]: full["time_build_s"] + full["time_compile_s"],
        ROWS[2]: runs["env"]["time_run_s"],
        ROWS[3]: runs["rollout"]["time_run_s"] - runs["env"]["time_run_s"],
        ROWS[4]: full["time_run_s"] - runs["rollout"]["time_run_s"],
        ROWS[5]: full["time_read_metrics_s"],
        ROWS[6]: full["wall_s"],
    }
    return {"phases": phases, "final_return": full["final_return_mean"], "runs": runs}


def ppokit_phases(runner: Runner) -> dict[str, Any]:
    """One timed ``phase_times.py`` process and one plain ``ppokit train`` process, split into phases."""
    common = ["train", "CartPole-v1", "--preset", PRESET, "--total-steps", str(runner.total_steps), "--no-progress", *LEAN]
    wall, proc = runner.timed([sys.executable, str(PHASE_TIMES), *common, "--run-dir", str(runner.run_dir())])
    if proc.returncode != 0:
        return {"error": f"phase_times: {_last_line(proc.stderr or proc.stdout)}"}
    times = _json_tail(proc.stdout)["times"]
    plain = runner.ppokit(["--seed", "1"], LEAN)
    if "error" in plain:
        return {"error": f"ppokit train: {plain['error']}"}
    env, collect, update, main = times["env step"], times["collect"], times["update"], times["main"]
    phases = {
        ROWS[0]: wall - main,
        ROWS[1]: 0.0,
        ROWS[2]: env,
        ROWS[3]: collect - env,
        ROWS[4]: update,
        ROWS[5]: main - collect - update,
        ROWS[6]: plain["wall_s"],
    }
    return {"phases": phases, "final_return": plain["final_return_mean"], "timed_wall_s": wall, "times": times}


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    def median(side: str, row: str) -> float | None:
        values = [r["phases"][row] for r in results[side] if "phases" in r]
        return statistics.median(values) if values else None

    lines = ["| phase | PureJaxRL, s | ppokit, s | ppokit − PureJaxRL, s |", "|---|---|---|---|"]
    for row in ROWS:
        a, b = median("purejaxrl", row), median("ppokit", row)
        cells = [f"{v:.2f}" if v is not None else "–" for v in (a, b)]
        diff = f"{b - a:+.2f}" if a is not None and b is not None else "–"
        lines.append(f"| {row} | {cells[0]} | {cells[1]} | {diff} |")
    whole_a, whole_b = median("purejaxrl", ROWS[6]), median("ppokit", ROWS[6])
    if whole_a and whole_b:
        lines.append(f"\nppokit / PureJaxRL, whole process: {whole_b / whole_a:.2f}×")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="rounds; each runs both sides once, alternating")
    p.add_argument("--total-steps", type=int, default=500_000, help="env steps (both sides)")
    p.add_argument("--cpu", type=int, default=0, help="the core every process is pinned to")
    p.add_argument("--isa", choices=("native", "avx2"), default="native", help="cap both sides to AVX2 (docstring)")
    p.add_argument("--json", help="also write the JSON here")
    args = p.parse_args()
    if not BENCH_PY.exists():
        print(f"needs {BENCH_PY}: bash benchmarks/make_bench_venv.sh", file=sys.stderr)
        return 2
    if not PPOKIT.exists():
        print(f"needs the ppokit command beside {sys.executable}", file=sys.stderr)
        return 2
    results: dict[str, list[dict[str, Any]]] = {"purejaxrl": [], "ppokit": []}
    with tempfile.TemporaryDirectory() as tmp:
        runner = Runner(args.cpu, args.total_steps, Path(tmp))
        if args.isa == "avx2":
            runner.env.update(AVX2_ONLY)
        # Untimed warm-up of each side (bytecode and file caches), as vs_purejaxrl.py does.
        runner.timed([str(BENCH_PY), str(ANCHOR), "--phase", "env", "--total-steps", "2048"])
        runner.ppokit(["--seed", "1", "--total-steps", "2048"], LEAN)
        for repeat in range(args.repeats):
            for side, run in (("purejaxrl", purejaxrl_phases), ("ppokit", ppokit_phases)):
                result = run(runner)
                results[side].append(result)
                whole = result.get("phases", {}).get(ROWS[6])
                print(f"repeat {repeat + 1}/{args.repeats}  {side:10s} "
                      + (f"{whole:6.2f} s" if whole is not None else result.get("error", "?")), flush=True)
    print(table(results))
    print(f"\n- {args.total_steps} env steps; pinned: {runner.pinned}; ISA: {args.isa}.")
    record = {"total_steps": args.total_steps, "isa": args.isa, "pinned": runner.pinned, "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(record))
    return 0 if all("phases" in r for runs in results.values() for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
