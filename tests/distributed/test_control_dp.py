"""Data-parallel control training on 2 CPU processes (gloo), as torchrun and ``--nproc`` launch it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ppokit.core.running_stats import RunningMeanStd
from ppokit.launch import strip_nproc
from tests.distributed.scenarios import reference_update

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
#: No test here may wait longer than this for a job: a hang fails the test instead of the CI run.
JOB_TIMEOUT = 240


def torchrun(scenario: str, out: Path, *args: str) -> subprocess.CompletedProcess:
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "tests.distributed.scenarios", scenario, str(out), *args]
    proc = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=JOB_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def ppokit(*args: str, timeout: float = JOB_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ppokit", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


# ----------------------------------------------------------------------------- the update

#: A target KL that the one-update scenario's union minibatches pass part way through the epochs.
EARLY_KL = 0.008


@pytest.mark.parametrize("backend", ["numpy", "torch", f"numpy@{EARLY_KL}", f"torch@{EARLY_KL}"])
def test_two_processes_take_the_update_of_one_process_on_their_union(backend, tmp_path):
    """Each process holds 3 of the 6 envs (with different numbers of valid rows); after one update of
    3 epochs × 4 minibatches their parameters equal one process's on all 6 envs, minibatch j being
    the union of the processes' minibatch j. With ``@KL`` the union's KL stops the epochs part way
    (the KL now rides in the gradient's exchange, so the stopped minibatch's gradient is computed
    and dropped): the processes stop where one process stops."""
    torchrun("one_update", tmp_path, backend)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])  # identical, not just close
    assert ranks[0]["fast"] == backend.startswith("numpy")
    expected, stats = reference_update(backend)
    assert stats["early_stopped"] == float("@" in backend)
    assert ranks[0]["stats"]["minibatch_steps"] == stats["minibatch_steps"]
    from tests.distributed.scenarios import make_policy, params, update_config

    start = params(make_policy(update_config(backend, 6)))
    assert (expected - start).abs().max() > 1e-2  # the update moved the weights
    torch.testing.assert_close(ranks[0]["params"], expected, rtol=0, atol=2e-6)
    for name in ("policy_loss", "value_loss", "entropy", "approx_kl_k3", "clip_fraction", "grad_norm", "epochs"):
        assert ranks[0]["stats"][name] == pytest.approx(stats[name], rel=1e-5, abs=1e-7), name
    # One exchange per minibatch (the gradient, the loss and KL riding in it), one per epoch for the
    # whitening moments where the step takes them an epoch at a time, and per update the diagnostics
    # and the explained variance.
    from ppokit.control.fast.update import NumpyMinibatchStep

    got = ranks[0]["stats"]
    epochs_begun = int(got["epochs"] + got["early_stopped"])
    attempts = int(got["minibatch_steps"] + got["early_stopped"] + got["skipped_minibatches"])
    per_epoch = backend.startswith("torch") or hasattr(NumpyMinibatchStep, "begin_epoch")
    expected_exchanges = attempts + (epochs_begun if per_epoch else attempts) + 2
    assert ranks[0]["exchanges"] == ranks[1]["exchanges"] == expected_exchanges


def test_gradients_average_in_buckets_with_the_numbers_riding_along(tmp_path):
    """Collective.mean_flat_ over tensors of two dtypes, several buckets and a non-contiguous tensor:
    each averaged in place, one exchange per bucket, the numbers in the last bucket when it is float32
    (else one float64 exchange more); an epoch's whitening moments in one exchange, as one part at a time."""
    torchrun("exchange", tmp_path)
    from tests.distributed.scenarios import exchange_tensors

    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name, calls in (("float32_last", 5), ("bfloat16_last", 7)):
        inputs = [exchange_tensors(r) for r in range(2)]
        if name == "bfloat16_last":
            inputs = [ts[:-1] + [ts[-1].to(torch.bfloat16)] for ts in inputs]
        for r in range(2):
            got = ranks[r][name]
            assert got["calls"] == calls, name
            assert got["extra"] == [2.0, -1.0]
            for t, a, b in zip(got["tensors"], *inputs):
                assert t.dtype == a.dtype and t.shape == a.shape
                torch.testing.assert_close(t, (a + b) / 2, rtol=0, atol=1e-6 if a.dtype == torch.float32 else 1e-2)
    for r in range(2):
        assert ranks[r]["moments_calls"] == 1
        for together, apart in zip(ranks[r]["moments_together"], ranks[r]["moments_apart"]):
            torch.testing.assert_close(together, apart, rtol=1e-12, atol=0)


def test_two_processes_learn_cartpole_and_keep_identical_weights(tmp_path):
    torchrun("learn", tmp_path, "CartPole-v1")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])
    for key in ("mean", "var", "count"):  # the normalisers merged every rank's observations
        assert torch.equal(ranks[0]["obs_rms"][key], ranks[1]["obs_rms"][key])
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == list(range(1, 31))  # rank 0 alone wrote them
    assert rows[-1]["global_step"] == ranks[0]["global_step"] == 2 * 4 * 128 * 30
    config = (run / "config.yaml").read_text()
    assert "launch:\n  world_size: 2\n  global_batch_size: 1024\n" in config
    result = json.loads((run / "eval.json").read_text())
    assert result["mean_return"] >= 150, result


def test_normaliser_updates_merged_across_processes_equal_one_stream():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 3)) for n in (5, 1, 7, 4)]
    one = RunningMeanStd((3,))
    for b in batches:
        one.update_array(b)
    ranks = [RunningMeanStd((3,)) for _ in range(2)]
    for rms in ranks:
        rms.share_updates()
    ranks[0].update_array(batches[0])
    ranks[0].update_array(batches[1])
    ranks[1].update_array(batches[2])
    ranks[1].update_array(batches[3])
    parts = [rms.pending_moments() for rms in ranks]
    for rms in ranks:
        rms.merge_pending(parts)
    for rms in ranks:
        np.testing.assert_allclose(rms.mean.numpy(), one.mean.numpy(), rtol=1e-12)
        np.testing.assert_allclose(rms.var.numpy(), one.var.numpy(), rtol=1e-10)
        assert float(rms.count) == pytest.approx(float(one.count))
    assert torch.equal(ranks[0].var, ranks[1].var)


def test_strip_nproc_leaves_the_rest_of_the_command():
    assert strip_nproc(["train", "CartPole-v1", "--nproc", "2", "--seed", "3"]) == ["train", "CartPole-v1", "--seed", "3"]
    assert strip_nproc(["resume", "r", "--nproc=4"]) == ["resume", "r"]


# ----------------------------------------------------------------------------- faults

FAULT_ARGS = ["train", "tests.envs:RankFaultEnv", "--nproc", "2", "--no-progress", "--total-steps", "40960",
              "--set", "num_envs=2", "--set", "num_steps=64", "--set", "num_minibatches=2", "--set", "eval_episodes=0"]


@pytest.mark.parametrize("mode, expected", [
    ("raise", "simulator diverged"),
    ("kill", "exit code -9"),
    ("nan", "non-finite"),
])
def test_a_failing_process_ends_the_job_with_its_error(mode, expected, tmp_path):
    start = time.monotonic()
    proc = ppokit(*FAULT_ARGS, "--run-dir", str(tmp_path / "run"), "--set", f"env_kwargs={{mode: {mode}}}",
                  timeout=120)
    assert proc.returncode != 0
    assert expected in proc.stderr, proc.stderr[-3000:]
    if mode != "nan":  # a NaN is seen by every process together: they all stop with the same error
        assert "process 1 of 2 failed" in proc.stderr, proc.stderr[-3000:]
    assert time.monotonic() - start < 120


# ----------------------------------------------------------------------------- resume and signals

RESUME_ARGS = ["CartPole-v1", "--nproc", "2", "--no-progress", "--total-steps", str(2 * 4 * 64 * 8), "--seed", "4",
               "--set", "num_envs=4", "--set", "num_steps=64", "--set", "num_epochs=2", "--set", "num_minibatches=4",
               "--set", "eval_episodes=0", "--set", "tensorboard=false", "--set", "checkpoint_every=4"]


def test_a_two_process_run_resumes_exactly_and_refuses_another_world_size(tmp_path):
    whole = tmp_path / "whole"
    proc = ppokit("train", *RESUME_ARGS, "--run-dir", str(whole))
    assert proc.returncode == 0, proc.stderr[-3000:]
    checkpoint = whole / "checkpoints" / "update_000000000004"
    resume = json.loads((checkpoint / "resume.json").read_text())
    assert resume["world_size"] == 2 and len(resume["ranks"]) == 2
    assert resume["ranks"][0]["rng"] != resume["ranks"][1]["rng"]

    # The same run, stopped at its checkpoint of update 4.
    half = tmp_path / "half"
    shutil.copytree(whole, half)
    shutil.rmtree(half / "model")
    shutil.rmtree(half / "checkpoints" / "update_000000000008")
    info = ppokit("info", str(half)).stdout
    assert "2 processes" in info and f"ppokit resume {half} --nproc 2" in info
    refused = ppokit("resume", str(half), "--no-progress")
    assert refused.returncode == 2
    assert "checkpointed by 2 processes and is being resumed by 1" in refused.stderr
    assert "Traceback" not in refused.stderr
    proc = ppokit("resume", str(half), "--nproc", "2", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (half / "model" / "model.safetensors").read_bytes() == (whole / "model" / "model.safetensors").read_bytes()

    def rows(run: Path) -> list[dict]:
        drop = ("sps", "time_elapsed")
        return [{k: v for k, v in json.loads(line).items() if k not in drop}
                for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert rows(half) == rows(whole)


def test_sigterm_to_the_launcher_checkpoints_once_and_stops(tmp_path):
    run = tmp_path / "run"
    args = ["CartPole-v1", "--nproc", "2", "--no-progress", "--total-steps", str(10**7), "--set", "num_envs=4",
            "--set", "num_steps=64", "--set", "num_epochs=2", "--set", "num_minibatches=4", "--set", "eval_episodes=0",
            "--set", "tensorboard=false", "--set", "checkpoint_minutes=0"]
    proc = subprocess.Popen([sys.executable, "-m", "ppokit", "train", *args, "--run-dir", str(run)],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + JOB_TIMEOUT
        metrics = run / "metrics.jsonl"
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-3000:]
    checkpoints = list((run / "checkpoints").iterdir())
    assert len(checkpoints) == 1, checkpoints
    resume = json.loads((checkpoints[0] / "resume.json").read_text())
    assert resume["world_size"] == 2
    assert resume["num_updates"] == len((run / "metrics.jsonl").read_text().splitlines())
    assert f"ppokit resume {run} --nproc 2" in err and "Traceback" not in err


def test_two_processes_train_many_agents_with_identical_weights_and_resume(tmp_path):
    """The multi-agent front end over 2 processes: every rank keeps rank 0's weights and merged value
    statistics; rank 0 alone writes; a stopped run resumes on 2 processes and matches on both."""
    pytest.importorskip("pettingzoo")
    torchrun("multiagent", tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])
    for key in ("mean", "var", "count"):
        assert torch.equal(ranks[0]["value_rms"][key], ranks[1]["value_rms"][key])
    assert ranks[0]["global_step"] == 4 * 2 * 2 * 16  # stopped after 4 updates of both processes' copies
    torchrun("multiagent", tmp_path, "resume")
    resumed = [torch.load(tmp_path / f"rank{r}_resumed.pt") for r in range(2)]
    assert torch.equal(resumed[0]["params"], resumed[1]["params"])
    assert resumed[0]["updates"] == 8
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == list(range(1, 9))
    assert rows[-1]["global_step"] == 8 * 2 * 2 * 16
    assert "world_size: 2" in (run / "config.yaml").read_text()
    assert json.loads((run / "eval.json").read_text())["episodes"] == 2
