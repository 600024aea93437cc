"""One command that checks every GPU path of ppokit, and writes what it found as JSON and a Markdown table.

    python benchmarks/gpu_check.py --out gpu_check              # on a machine with one CUDA GPU
    python benchmarks/gpu_check.py --out /tmp/gc --dry-run      # the same script on the CPU, toy sizes (~1 min)
    python benchmarks/gpu_check.py --out gc --sections rlhf,fsdp --timeout 300 --budget-s 600

On a lent GPU machine, first bring what its image lacks: ``bash benchmarks/gpu_wheels.sh`` here, then
carry ``.whl`` and install it there (the script's header has the command).

On one H100 it is sized to take under 8 minutes (``--budget-s 480`` caps it; not yet run on one: the
section limits below are estimates). Each section runs in a fresh process of its own (so a failure, a
hang or an out-of-memory in one leaves the others to run) and reports its status (ok, failed or
skipped, and why: a failure's last line), its numbers and its wall time. In the order they run, the
short ones first:

1. ``cuda_tests``: the test suite's CUDA-only tests (``pytest -m cuda`` over the files that hold them);
2. ``torch_env``: the torch-env device collector on 4,096 TorchPendulum envs, ppokit against rsl_rl
   (``torch_env_vs_rsl_rl.py``'s sides, 10 timed iterations);
3. ``atari``: Breakout training throughput with ppokit's update on the GPU, on Gymnasium's wrappers
   and on EnvPool, and the bare envs (``atari_throughput.py``'s sides, 4,096 steps each; its SB3 side
   trains on the CPU, so it is no GPU path and is left out);
4. ``fsdp``: a one-process RLHF run with ``sharding: fsdp`` and ``dist_backend: nccl`` under
   ``torchrun --nproc_per_node 1``: two updates on a tiny model, and their time. With one process
   ppokit trains the models whole (there is nothing to shard over): the run checks NCCL's set-up,
   the trainer's distributed path and the checkpoint at its end, and says ``sharded: False``;
5. ``memory``: peak GPU memory (``torch.cuda.max_memory_allocated``) of each RLHF memory option
   (``rlhf_memory.py``'s runs, GPT-2-small shape, 16 prompts, 64 new tokens, 2 updates);
6. ``rlhf``: RLHF PPO at the Qwen2-0.5B shape, bf16 mixed precision, variants base / lora / gc /
   lora+gc, ppokit against TRL on the same models and prompts (``rlhf_gpu.py``'s runs: 16 prompts ×
   64 + 64 tokens, 3 steps of 2 epochs × 2 minibatches, the first step left out of the median).

A side whose library is not installed is skipped with that reason (TRL and rsl_rl are looked for
in this Python, then in ``.venv-bench``, or in ``--anchor-python``; ale-py and EnvPool in this Python);
nothing is installed here. ``--budget-s`` (default 480 s) bounds the whole check: once it is spent the
remaining sections are "skipped: over budget", and a section never runs past it (nor past
``--timeout``); runs inside a section that would start after its time is up are skipped the same way.

``--dry-run`` runs the same sections through the same code on the CPU, at toy sizes (tiny models,
one RLHF variant, one memory option, 64 envs, one Atari rollout of the Gymnasium sides, gloo instead
of NCCL); the CUDA-only tests report "skipped: no CUDA". tests/test_gpu_check.py runs it, so the
script cannot rot. Without ``--dry-run`` and without CUDA every section is skipped ("no CUDA").
The exit code is 1 when a section failed.

Output: ``OUT/gpu_check.json``, ``OUT/gpu_check.md`` (also printed at the end) and
``OUT/gpu_check.log`` (each section's stderr, for a failure's whole story).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

#: The sections in the order they run, with their titles and their time limits on a GPU (seconds):
#: the short ones first, so that a long one running over leaves them their numbers.
SECTIONS: dict[str, tuple[str, float]] = {
    "cuda_tests": ("CUDA-only tests", 120),
    "torch_env": ("Torch-env collector against rsl_rl", 90),
    "atari": ("Atari throughput", 90),
    "fsdp": ("One-process NCCL/FSDP RLHF run", 90),
    "memory": ("Peak memory of each RLHF memory option", 150),
    "rlhf": ("RLHF PPO against TRL", 270),
}
#: Seconds a section child keeps for writing its result after its last run.
MARGIN_S = 5.0
#: A section or run with less time than this left is skipped ("over budget") rather than started.
MIN_RUN_S = 5.0


class Context:
    """What a section's process knows: dry run or not, the device, the anchors' Python, its deadline."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.dry_run: bool = args.dry_run
        self.device = "cpu" if args.dry_run else "cuda"
        self.threads: int = args.threads
        self.anchor_python: Path | None = args.anchor_python
        self.deadline = time.monotonic() + args.deadline_s
        self.result_path = Path(args.section_json)
        self.result: dict[str, Any] = {"rows": [], "numbers": {}}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def env(self) -> dict[str, str]:
        """The environment of every run: this checkout's ppokit first, no hub, no tokenizer threads."""
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}

    def python_with(self, *modules: str) -> Path | None:
        """The first Python that imports ``modules``: ``--anchor-python``, this one, then .venv-bench's."""
        candidates = [self.anchor_python] if self.anchor_python else [Path(sys.executable), ROOT / ".venv-bench" / "bin" / "python"]
        probe = "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))"
        for python in candidates:
            if python.exists() and subprocess.run([str(python), "-c", probe, *modules], capture_output=True,
                                                  env=self.env(), timeout=60).returncode == 0:
                return python
        return None

    def add_row(self, row: dict[str, Any]) -> None:
        """Record one run's row, and write the result so far: a section killed later keeps it."""
        self.result["rows"].append(row)
        self.save()

    def save(self) -> None:
        self.result_path.write_text(json.dumps(self.result))

    def run_json(self, cmd: list[str], env: dict[str, str] | None = None) -> tuple[dict[str, Any] | None, str]:
        """Run ``cmd`` (a benchmark side that prints one JSON line last) within the time left;
        ``(result, '')`` or ``(None, why it failed)``, its stderr's end copied to this stderr."""
        if self.left() < MIN_RUN_S:
            return None, "over budget"
        try:
            proc = run_killable(cmd, env or self.env(), self.left())
        except subprocess.TimeoutExpired:
            script = next((Path(a).name for a in cmd[1:] if a.endswith(".py")), Path(cmd[0]).name)
            return None, f"timed out: the section's time ran out during {script}"
        if proc.returncode != 0:
            print(proc.stderr[-4000:], file=sys.stderr, flush=True)
            return None, f"exit {proc.returncode}: {last_line(proc.stderr)}"
        try:
            return json.loads(proc.stdout.strip().splitlines()[-1]), ""
        except (json.JSONDecodeError, IndexError):
            return None, f"no JSON result: {last_line(proc.stdout + proc.stderr)}"


#: libc's prctl, looked up here: after a fork only the call itself runs (no symbol lookup, no loader lock).
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _own_group_dying_with_parent() -> None:
    """In the forked child, before it runs ``cmd``: a process group of its own (killed whole on
    timeout), and SIGKILL when its parent dies (a section process killed with its group must not
    leave its current run holding the GPU)."""
    os.setsid()
    if _PRCTL is not None:
        _PRCTL(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL


def run_killable(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` in a process group of its own that is killed whole on timeout (torchrun's
    workers, a benchmark's children), so nothing it started runs on."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_own_group_dying_with_parent)
    try:
        out, err = proc.communicate(timeout=max(1.0, timeout))
    except BaseException:
        kill_group(proc)
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def last_line(text: str) -> str:
    """The last non-empty line of ``text`` (an error's own line: the exception, or a one-line message)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def skipped(reason: str, **row: Any) -> dict[str, Any]:
    return {**row, "status": "skipped", "reason": reason}


def outcome(result: dict[str, Any] | None, why: str, **row: Any) -> dict[str, Any]:
    if result is not None:
        return {**row, **result, "status": "ok", "reason": ""}
    return {**row, "status": "skipped" if why == "over budget" else "failed", "reason": why}


def summarise(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """A section's status from its runs': failed if one failed, skipped if all were, else ok."""
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        return "failed", f"{len(failed)} of {len(rows)} runs failed; first: {failed[0]['name']}: {failed[0]['reason']}"
    reasons = "; ".join(dict.fromkeys(r["reason"] for r in rows if r["status"] == "skipped"))
    if not rows or all(r["status"] == "skipped" for r in rows):
        return "skipped", reasons or "nothing to run"
    return "ok", reasons  # what did not run beside what did: 'trl not installed'


# ------------------------------------------------------------------------------------------------ sections
def section_cuda_tests(ctx: Context) -> None:
    import torch

    files = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").rglob("test_*.py")
                   if "mark.cuda" in p.read_text(encoding="utf-8"))
    ctx.result["numbers"]["test_files"] = len(files)
    if not files:
        ctx.result.update(status="skipped", reason="no test is marked cuda")
        return
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "-rfEs", *files]
    try:
        proc = run_killable(cmd, ctx.env(), ctx.left())
    except subprocess.TimeoutExpired:
        ctx.result.update(status="failed", reason="timed out")
        return
    print(proc.stdout[-6000:], proc.stderr[-2000:], file=sys.stderr)
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)",
                                                      last_line(proc.stdout))}
    counts["errors"] = counts.pop("error", 0) + counts.pop("errors", 0)
    ctx.result["numbers"].update({k: counts.get(k, 0) for k in ("passed", "failed", "skipped", "errors")})
    for line in proc.stdout.splitlines():  # -rfEs: 'FAILED test - why', 'SKIPPED [1] file:line: why'
        if line.startswith(("FAILED", "ERROR")):
            kind, _, what = line.partition(" ")
            name, _, why = what.partition(" - ")
            ctx.result["rows"].append({"name": name, "status": "failed", "reason": why or kind.lower()})
        elif line.startswith("SKIPPED"):
            name, _, why = re.sub(r"^SKIPPED \[\d+\] ", "", line).partition(": ")
            ctx.result["rows"].append({"name": name, "status": "skipped", "reason": why})
    passed, bad = counts.get("passed", 0), counts.get("failed", 0) + counts["errors"]
    if proc.returncode not in (0, 5) or bad:
        first = next((r["name"] for r in ctx.result["rows"] if r["status"] == "failed"), last_line(proc.stdout))
        ctx.result.update(status="failed", reason=f"{bad} failed: {first}")
    elif passed == 0:
        why = "no CUDA" if not torch.cuda.is_available() else "none ran"
        ctx.result.update(status="skipped", reason=f"{why} ({counts.get('skipped', 0)} CUDA tests skipped)")
    else:
        ctx.result.update(status="ok", reason="", summary=f"{passed} passed, {counts.get('skipped', 0)} skipped")


def rlhf_flags(dry_run: bool, threads: int) -> list[str]:
    """``rlhf_gpu.py``'s flags for the check (tests/test_gpu_check.py parses both kinds)."""
    if dry_run:
        return ["--size", "small", "--device", "cpu", "--batch", "2", "--prompt-length", "4", "--response-length", "4",
                "--epochs", "1", "--minibatches", "1", "--steps", "2", "--threads", "1", "--variants", "lora+gc"]
    return ["--size", "qwen2-0.5b", "--device", "cuda", "--batch", "16", "--prompt-length", "64",
            "--response-length", "64", "--epochs", "2", "--minibatches", "2", "--steps", "3",
            "--threads", str(threads), "--precision", "bf16"]


def memory_flags(dry_run: bool, threads: int) -> list[str]:
    """``rlhf_memory.py``'s flags for the check: every option on a GPU, at the script's own GPT-2-small shape."""
    if dry_run:
        return ["--layers", "1", "--width", "32", "--heads", "2", "--batch", "2", "--new-tokens", "4",
                "--device", "cpu", "--options", "all_of_them"]
    return ["--device", "cuda", "--threads", str(threads)]


def section_rlhf(ctx: Context) -> None:
    import rlhf_gpu

    args = rlhf_gpu.parser().parse_args(rlhf_flags(ctx.dry_run, ctx.threads))
    trl_py = ctx.python_with("trl", "peft", "transformers")
    ctx.result["settings"] = (f"{args.size} shape, {args.batch} prompts × {args.prompt_length} + {args.response_length} "
                              f"tokens, {args.steps} steps (the first left out) of {args.epochs} epochs × "
                              f"{args.minibatches} minibatches, precision {rlhf_gpu.precision_of(args)}, {args.device}")
    with tempfile.TemporaryDirectory(prefix="gpu-check-rlhf-") as tmp:
        policy, reward, prompts = rlhf_gpu.build_models(args.size, Path(tmp), args.prompt_length)
        for variant, side, python, script, argv in rlhf_gpu.runs(args, policy, reward, prompts, trl_py or Path("trl")):
            row = {"name": f"{side} {variant}", "variant": variant, "side": side}
            if side == "trl" and trl_py is None:
                ctx.add_row(skipped("trl not installed", **row))
                continue
            result, why = ctx.run_json([str(python), str(BENCH / script), *argv])
            ctx.add_row(outcome(result, why, **row))
    ok = {(r["side"], r["variant"]): r for r in ctx.result["rows"] if r["status"] == "ok"}
    parts = []
    for variant in args.variants:
        ours, theirs = ok.get(("ppokit", variant)), ok.get(("trl", variant))
        if ours:
            ctx.result["numbers"][f"ppokit_{variant}_s_per_step"] = ours["s_per_step_median"]
            part = f"{variant} {ours['s_per_step_median']:.2f} s/step"
            if theirs:
                ratio = ours["s_per_step_median"] / theirs["s_per_step_median"]
                ctx.result["numbers"][f"trl_{variant}_s_per_step"] = theirs["s_per_step_median"]
                ctx.result["numbers"][f"{variant}_ppokit_over_trl"] = round(ratio, 3)
                part += f" ({ratio:.2f}× TRL)"
            parts.append(part)
    ctx.result["summary"] = "; ".join(parts)


def section_memory(ctx: Context) -> None:
    import rlhf_memory

    args = rlhf_memory.parser().parse_args(memory_flags(ctx.dry_run, ctx.threads))
    options = args.options.split(",")
    ctx.result["settings"] = (f"GPT-2 shape {args.layers} layers × {args.width}, {args.batch} prompts, "
                              f"{args.new_tokens} new tokens, {args.updates} updates, {args.device}")
    with tempfile.TemporaryDirectory(prefix="gpu-check-memory-") as tmp:
        policy, reward = rlhf_memory.build_models(Path(tmp), args.layers, args.width, args.heads, seed=0)
        for option in options:
            cmd, env = rlhf_memory.child_command(option, policy, reward, args)
            result, why = ctx.run_json(cmd, {**ctx.env(), "MALLOC_MMAP_THRESHOLD_": env["MALLOC_MMAP_THRESHOLD_"]})
            ctx.add_row(outcome(result, why, name=option, label=rlhf_memory.LABELS[option]))
    key = "peak_mib" if ctx.dry_run else "peak_gpu_mib"
    ok = [r for r in ctx.result["rows"] if r["status"] == "ok" and r.get(key) is not None]
    for r in ok:
        ctx.result["numbers"][f"{r['name']}_{key}"] = r[key]
    if ok:
        low = min(ok, key=lambda r: r[key])
        base = next((f"baseline {r[key]:,.0f} MiB, " for r in ok if r["name"] == "separate"), "")
        ctx.result["summary"] = f"{'peak RSS' if ctx.dry_run else 'peak GPU'}: {base}lowest {low['name']} {low[key]:,.0f} MiB"


def section_torch_env(ctx: Context) -> None:
    size = ["--envs", "64", "--iterations", "2"] if ctx.dry_run else ["--envs", "4096", "--iterations", "10"]
    flags = ["--device", ctx.device, *size, "--threads", "1", "--seed", "1"]
    ctx.result["settings"] = f"TorchPendulum, {size[1]} envs, {size[3]} timed iterations of 24 steps, {ctx.device}"
    script = str(BENCH / "torch_env_vs_rsl_rl.py")
    for side, modules in (("ppokit", ()), ("rsl_rl", ("rsl_rl", "tensordict"))):
        python = ctx.python_with(*modules) if modules else Path(sys.executable)
        if python is None:
            ctx.add_row(skipped(f"{side} not installed", name=side))
            continue
        result, why = ctx.run_json([str(python), script, "--side", side, *flags])
        ctx.add_row(outcome(result, why, name=side))
    sps = {r["name"]: r["sps"] for r in ctx.result["rows"] if r["status"] == "ok"}
    ctx.result["numbers"].update({f"{name}_steps_per_s": round(v, 1) for name, v in sps.items()})
    if "ppokit" in sps:
        ctx.result["summary"] = f"ppokit {sps['ppokit']:,.0f} steps/s"
        if "rsl_rl" in sps:
            ctx.result["numbers"]["ppokit_over_rsl_rl"] = round(sps["ppokit"] / sps["rsl_rl"], 3)
            ctx.result["summary"] += f" ({sps['ppokit'] / sps['rsl_rl']:.2f}× rsl_rl)"


def section_atari(ctx: Context) -> None:
    import importlib.util

    # Dry run: one rollout (1,024 steps) of the Gymnasium-wrapper sides; the rest are the same code.
    sides = ["ppokit-gym", "env-gym"] if ctx.dry_run else ["ppokit-gym", "ppokit-envpool", "env-gym", "env-envpool"]
    steps = "1024" if ctx.dry_run else "4096"
    ctx.result["settings"] = f"BreakoutNoFrameskip-v4, 8 envs, {steps} steps per side, ppokit on {ctx.device}"
    script = str(BENCH / "atari_throughput.py")
    for side in sides:
        needs = ("envpool",) if side.endswith("envpool") else ("ale_py", "gymnasium")
        missing = ", ".join(m for m in needs if importlib.util.find_spec(m) is None)
        if missing:
            ctx.add_row(skipped(f"{missing} not installed", name=side))
            continue
        result, why = ctx.run_json([sys.executable, script, "--side", side, "--steps", steps, "--seed", "1",
                                    "--threads", str(ctx.threads), "--device", ctx.device])
        ctx.add_row(outcome(result, why, name=side))
    sps = {r["name"]: r["sps"] for r in ctx.result["rows"] if r["status"] == "ok"}
    ctx.result["numbers"].update({f"{name}_steps_per_s": round(v, 1) for name, v in sps.items()})
    ctx.result["summary"] = ", ".join(f"{name} {v:,.0f} steps/s" for name, v in sps.items())


def section_fsdp(ctx: Context) -> None:
    import rlhf_gpu

    backend = "gloo" if ctx.dry_run else "nccl"
    ctx.result["settings"] = f"Qwen2-shaped 2 × 128 model, torchrun --nproc_per_node 1, {backend}, {ctx.device}"
    with tempfile.TemporaryDirectory(prefix="gpu-check-fsdp-") as tmp:
        policy, reward, prompts = rlhf_gpu.build_models("small", Path(tmp), 4, n_prompts=16)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
               str(Path(__file__).resolve()), "--fsdp-worker", "--policy", str(policy), "--reward", str(reward),
               "--prompts", str(prompts), "--device", ctx.device, "--backend", backend,
               "--run-dir", str(Path(tmp) / "run")]
        result, why = ctx.run_json(cmd)
        ctx.add_row(outcome(result, why, name=f"fsdp {backend}"))
    row = ctx.result["rows"][-1]
    if row["status"] == "ok":
        ctx.result["numbers"].update(update_s_median=row["update_s_median"], world_size=row["world_size"])
        ctx.result["summary"] = (f"{row['backend']}, {row['world_size']} process, sharded: {str(row['sharded']).lower()}, "
                                 f"{row['update_s_median']:.2f} s/update")


RUNNERS: dict[str, Callable[[Context], None]] = {
    "cuda_tests": section_cuda_tests, "rlhf": section_rlhf, "memory": section_memory,
    "torch_env": section_torch_env, "atari": section_atari, "fsdp": section_fsdp,
}


def fsdp_worker(argv: list[str]) -> int:
    """One torchrun process: ``--updates`` RLHF PPO updates with ``sharding: fsdp``; rank 0 prints JSON."""
    p = argparse.ArgumentParser()
    for flag in ("--policy", "--reward", "--prompts", "--device", "--backend", "--run-dir"):
        p.add_argument(flag, required=True)
    p.add_argument("--updates", type=int, default=2)
    args = p.parse_args(argv)
    import torch
    import torch.distributed as dist

    from ppokit.launch import leave_processes
    from ppokit.rlhf.config import RLHFConfig
    from ppokit.rlhf.ppo.trainer import RLHFTrainer

    cuda = args.device.startswith("cuda")
    texts = json.loads(Path(args.prompts).read_text())["texts"]
    config = RLHFConfig(
        policy=args.policy, rewards=[args.reward], value_init="reward", total_updates=args.updates, batch_size=8,
        num_minibatches=2, num_epochs=1, max_new_tokens=8, sharding="fsdp", dist_backend=args.backend,
        device=args.device, dtype="float32", mixed_precision="bf16" if cuda else "no", progress=False,
        tensorboard=False, sample_every=0, seed=0, torch_threads=1, checkpoint_minutes=0,
    )
    trainer = RLHFTrainer(config, prompts=[{"prompt": t} for t in texts], run_dir=args.run_dir)

    marks = [time.perf_counter()]

    def mark(_: dict[str, Any]) -> None:
        if cuda:
            torch.cuda.synchronize()
        marks.append(time.perf_counter())

    trainer.learn(callback=mark)
    times = [b - a for a, b in zip(marks, marks[1:])]
    result = {"world_size": trainer.collective.world_size, "backend": dist.get_backend() if dist.is_initialized() else None,
              "sharded": bool(trainer.models.sharded), "updates": len(times), "update_s": [round(t, 4) for t in times],
              "update_s_median": round(statistics.median(times[1:] or times), 4),  # the first warms up
              "loss": [row["loss"] for row in trainer.history], "device": args.device}
    leave_processes()
    if trainer.collective.is_main:
        print(json.dumps(result), flush=True)
    return 0


def section_child(args: argparse.Namespace) -> int:
    """Run one section in this process and write its result to ``--section-json``."""
    ctx = Context(args)
    RUNNERS[args.section_child](ctx)
    if "status" not in ctx.result:
        status, reason = summarise(ctx.result["rows"])
        ctx.result.update(status=status, reason=reason)
    ctx.save()
    return 0


# ------------------------------------------------------------------------------------------------ the driver
def run_section(name: str, args: argparse.Namespace, timeout: float, log: Path) -> dict[str, Any]:
    """Run section ``name`` in a fresh process with ``timeout`` seconds; its result, whatever happened."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        result_path = Path(tmp) / "section.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--section-child", name, "--section-json",
               str(result_path), "--deadline-s", f"{max(1.0, timeout - MARGIN_S):.1f}", "--threads", str(args.threads),
               *(["--dry-run"] if args.dry_run else []),
               *(["--anchor-python", str(args.anchor_python)] if args.anchor_python else [])]
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        start = time.monotonic()
        try:
            proc = run_killable(cmd, {**os.environ, "PYTHONPATH": path}, timeout)
            code, err = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired as e:
            code, err = None, e.stderr if isinstance(e.stderr, str) else ""
        wall = time.monotonic() - start
        result: dict[str, Any] = json.loads(result_path.read_text()) if result_path.exists() else {"rows": [], "numbers": {}}
    with log.open("a", encoding="utf-8") as f:
        f.write(f"\n===== {name} (exit {code}, {wall:.1f} s)\n{err or ''}")
    if code is None:
        result.update(status="failed", reason=f"timed out after {timeout:.0f} s")
    elif code < 0:  # a signal: the kernel's out-of-memory killer, say
        result.update(status="failed", reason=f"killed by {signal.Signals(-code).name}: {last_line(err)}")
    elif code != 0:
        result.update(status="failed", reason=f"exit {code}: {last_line(err)}")
    result.update(name=name, title=SECTIONS[name][0], wall_s=round(wall, 1))
    result.setdefault("reason", "")
    return result


def status_text(item: dict[str, Any]) -> str:
    return item["status"] + (f": {item['reason']}" if item.get("reason") else "")


def cell(value: Any, fmt: str = "{:,.2f}") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return fmt.format(value)
    return str(value).replace("|", "\\|")


#: Each section's detail table: (header, the row's key, format).
COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "cuda_tests": [("test", "name", "")],
    "rlhf": [("variant", "variant", ""), ("library", "side", ""), ("s / step", "s_per_step_median", "{:.3f}"),
             ("tokens / s", "tokens_per_s", "{:,.0f}"), ("peak GPU MiB", "peak_gpu_mib", "{:,.0f}"),
             ("peak RSS MiB", "peak_rss_mib", "{:,.0f}")],
    "memory": [("option", "label", ""), ("peak GPU MiB", "peak_gpu_mib", "{:,.0f}"), ("peak RSS MiB over imports", "peak_mib", "{:,.0f}"),
               ("trainable parameters", "trainable_params", "")],
    "torch_env": [("library", "name", ""), ("envs", "envs", ""), ("steps / s", "sps", "{:,.0f}"), ("seconds", "seconds", "{:.2f}")],
    "atari": [("side", "name", ""), ("steps", "steps", ""), ("steps / s", "sps", "{:,.0f}")],
    "fsdp": [("run", "name", ""), ("backend", "backend", ""), ("processes", "world_size", ""), ("sharded", "sharded", ""),
             ("s / update", "update_s_median", "{:.3f}")],
}


def markdown(report: dict[str, Any]) -> str:
    head = (f"device: {report['device']} · torch {report['torch']} · "
            f"{'dry run (CPU, toy sizes)' if report['dry_run'] else 'full sizes'} · {report['started']} · "
            f"{report['wall_s']:.0f} s of a {report['budget_s']:.0f} s budget")
    lines = ["# GPU check", "", head, "", "| section | status | wall s | result |", "|---|---|---|---|"]
    for s in report["sections"]:
        lines.append(f"| {s['title']} | {cell(status_text(s))} | {s.get('wall_s', 0):.1f} | {cell(s.get('summary', ''))} |")
    for s in report["sections"]:
        if not s["rows"]:
            continue
        columns = COLUMNS[s["name"]]
        lines += ["", f"## {s['title']}", ""] + ([s["settings"], ""] if s.get("settings") else [])
        lines.append("| " + " | ".join(h for h, _, _ in columns) + " | status |")
        lines.append("|" + "---|" * (len(columns) + 1))
        for r in s["rows"]:
            cells = [cell(r.get(key), fmt) if fmt else cell(r.get(key)) for _, key, fmt in columns]
            lines.append("| " + " | ".join(cells) + f" | {cell(status_text(r))} |")
    return "\n".join(lines) + "\n"


def non_finite(value: Any, where: str = "") -> list[str]:
    """Where ``value`` holds a NaN or an infinity."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [where]
    if isinstance(value, dict):
        return [w for k, v in value.items() for w in non_finite(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [w for i, v in enumerate(value) for w in non_finite(v, f"{where}[{i}]")]
    return []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="folder for gpu_check.json, gpu_check.md and gpu_check.log")
    p.add_argument("--dry-run", action="store_true", help="the same sections on the CPU at toy sizes")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {', '.join(SECTIONS)}")
    p.add_argument("--timeout", type=float, help="seconds each section may take (default: each section's own, "
                   + ", ".join(f"{k} {v:.0f}" for k, (_, v) in SECTIONS.items()) + ")")
    p.add_argument("--budget-s", type=float, default=480.0, help="seconds for the whole check (default 480)")
    p.add_argument("--threads", type=int, help="torch threads of each run (default 4; 1 with --dry-run)")
    p.add_argument("--anchor-python", type=Path, help="the Python with TRL and rsl_rl (default: this one, "
                   "else .venv-bench's)")
    p.add_argument("--section-child", choices=list(SECTIONS), help=argparse.SUPPRESS)
    p.add_argument("--section-json", help=argparse.SUPPRESS)
    p.add_argument("--deadline-s", type=float, default=0.0, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--fsdp-worker"]:
        return fsdp_worker(argv[1:])
    args = p.parse_args(argv)
    if args.threads is None:
        args.threads = 1 if args.dry_run else 4
    if args.section_child:
        return section_child(args)
    if args.out is None:
        p.error("--out DIR is required")
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown or not names:
        p.error(f"--sections: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(SECTIONS)}")
    if args.anchor_python is not None and not args.anchor_python.exists():
        p.error(f"--anchor-python {args.anchor_python}: no such file")
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out}: not a folder")
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "gpu_check.log"
    log.write_text("")

    import torch

    cuda = torch.cuda.is_available()
    report: dict[str, Any] = {
        "dry_run": args.dry_run, "torch": torch.__version__, "cuda": cuda,
        "device": "CPU" if args.dry_run or not cuda else f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})",
        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "budget_s": args.budget_s, "sections": [],
    }
    start = time.monotonic()
    for name in names:
        left = args.budget_s - (time.monotonic() - start)
        if not args.dry_run and not cuda:
            result = {"status": "skipped", "reason": "no CUDA (--dry-run checks the same paths on the CPU)"}
        elif left < MIN_RUN_S + MARGIN_S:
            result = {"status": "skipped", "reason": "over budget"}
        else:
            result = run_section(name, args, min(args.timeout or SECTIONS[name][1], left), log)
        result = {"rows": [], "numbers": {}, "wall_s": 0.0, **result, "name": name, "title": SECTIONS[name][0]}
        if bad := non_finite(result["numbers"]):
            result.update(status="failed", reason=f"non-finite numbers: {', '.join(bad)}")
        report["sections"].append(result)
        print(f"gpu_check: {name}: {status_text(result)} ({result['wall_s']:.1f} s)", file=sys.stderr, flush=True)
    report["wall_s"] = round(time.monotonic() - start, 1)
    table = markdown(report)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    (args.out / "gpu_check.md").write_text(table)
    print(table)
    return 1 if any(s["status"] == "failed" for s in report["sections"]) else 0


if __name__ == "__main__":
    sys.exit(main())
