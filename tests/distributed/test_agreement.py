"""The processes of one torchrun job must share one config (issue 30, classes 3 and 4).

Two ranks started with different settings used to train different weights with exit 0 (a
different learning_rate) or wait for each other until ``dist_timeout`` and print a traceback (a
different num_epochs). Now every process refuses at the start, in one line naming the field.

The test generates its cases: every stage that joins a job (control training, SFT, reward-model
training, RLHF PPO) × a field that changes what is trained (learning_rate) and one that changes how
long the loops run (the epochs). Without the fix, all 8 cases failed (exit 0 or a timeout)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Far below the stages' dist_timeout (600 s): a refusal comes at the start, not after a wait.
DEADLINE = 90

#: Each rank runs ``ppokit ARGS`` with its own ``--set FIELD=VALUE``.
RANK_SCRIPT = """\
import json, os, sys
from ppokit.cli.main import main
args, field, values = json.loads(sys.argv[1])
rank = int(os.environ["RANK"])
sys.exit(main([*args, "--set", f"{field}={values[rank]}"]))
"""


def _stage_args(stage: str, tmp_path: Path, tiny_lm: str) -> list[str]:
    run = str(tmp_path / "run")
    if stage == "control":
        return ["train", "CartPole-v1", "--no-progress", "--total-steps", "4096", "--run-dir", run]
    from tests.distributed.rlhf_scenarios import supervised_data, write_prompts

    sft, pairs = supervised_data(tmp_path)
    common = ["--no-progress", "--run-dir", run, "--set", "device=cpu", "--set", "torch_threads=1"]
    if stage == "sft":
        return ["rlhf", "sft", "--model", tiny_lm, "--data", str(sft), *common]
    if stage == "reward":
        return ["rlhf", "reward", "--model", tiny_lm, "--data", str(pairs), *common]
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    return ["rlhf", "ppo", "--policy", tiny_lm, "--reward", "tests.rlhf.helpers:pleasant_minus_unpleasant",
            "--data", str(prompts), "--total-updates", "2", "--set", "batch_size=8", "--set", "max_new_tokens=4",
            *common]


EPOCHS = {"control": "num_epochs", "sft": "epochs", "reward": "epochs", "ppo": "num_epochs"}


@pytest.mark.parametrize("differs", ["learning_rate", "epochs"])
@pytest.mark.parametrize("stage", ["control", "sft", "reward", "ppo"])
def test_ranks_with_different_configs_refuse_at_once_in_one_line(stage, differs, tiny_lm, tmp_path):
    field = EPOCHS[stage] if differs == "epochs" else "learning_rate"
    values = ["2", "4"] if differs == "epochs" else ["0.001", "0.01"]
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    payload = json.dumps([_stage_args(stage, tmp_path, tiny_lm), field, values])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(script), payload]
    start = time.monotonic()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=DEADLINE)
    assert time.monotonic() - start < DEADLINE
    assert proc.returncode != 0, proc.stderr[-2000:]
    # The two processes write at once, so their lines may run together; torchrun's own traceback
    # (its ChildFailedError) follows, but no frame of ppokit's.
    errors = re.findall(r"ppokit: error: (.*?same ppokit)", proc.stderr)
    assert errors, proc.stderr[-3000:]
    for line in errors:
        assert line.startswith("the 2 processes of this job were started with different settings: "), line
        assert f"{field} = {values[0]} on process 0 but {values[1]} on process 1" in line, line
    assert "ppokit/" not in "".join(re.findall(r'File "([^"]*)"', proc.stderr)), proc.stderr[-3000:]
    assert not (tmp_path / "run" / "model").exists()  # nothing was trained
