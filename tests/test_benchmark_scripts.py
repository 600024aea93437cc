"""The ppokit side of each benchmark runs against the current API (tiny sizes; the anchors, which need
.venv-bench, are not run here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_control_benchmark_script_runs():
    result = _run("control_ppokit.py", "--task", "cartpole", "--steps", "1024")
    assert result["steps"] == 1024 and result["sps"] > 0


def test_rlhf_benchmark_script_runs():
    pytest.importorskip("transformers")
    result = _run("rlhf_ppokit.py", "--batch", "2", "--response-length", "4", "--epochs", "1", "--steps", "2",
                  "--threads", "1")
    assert len(result["s_per_step_all"]) == 2 and result["s_per_step_median"] > 0


def test_defaults_benchmark_script_runs():
    result = _run("defaults_ppokit.py", "--env", "CartPole-v1", "--steps", "2048", "--set", "num_epochs=1")
    assert result["steps"] == 2048 and result["eval_return"] > 0 and result["set"] == ["num_epochs=1"]


def test_distributed_benchmark_script_runs():
    result = _run("distributed.py", "--tasks", "cartpole", "--repeats", "1", "--steps", "4096")
    assert result["cartpole"]["sps"]["1"] > 0 and result["cartpole"]["sps"]["2"] > 0
