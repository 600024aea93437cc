"""What the side-by-side runners share: run one benchmark script in a fresh process, read its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(python: Path, script: str, args: list[str], env: dict[str, str] | None = None) -> dict:
    """Run ``benchmarks/<script>`` with ``python`` (extra ``env`` variables on top of this one's);
    the last stdout line is its JSON result. A failing run stops the benchmark with its stderr."""
    cmd = [str(python), str(ROOT / "benchmarks" / script), *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def pythons(anchor: str) -> tuple[Path, Path]:
    """``(ppokit's python, the benchmark venv's python)``; exits with how to make whichever is missing."""
    ppokit_py, bench_py = ROOT / ".venv" / "bin" / "python", ROOT / ".venv-bench" / "bin" / "python"
    for py in (ppokit_py, bench_py):
        if not py.exists():
            sys.exit(f"{py} missing: run bash scripts/test.sh --co -q (ppokit) / bash benchmarks/make_bench_venv.sh ({anchor})")
    return ppokit_py, bench_py
