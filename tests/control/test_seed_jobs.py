"""``--seeds ... --jobs N``: one group of seeds trained in N processes, each seed still its solo run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from ppokit.cli.main import main
from ppokit.control.seed_jobs import shares
from ppokit.io.lock import RunLock

TRAIN = ["train", "CartPole-v1", "--total-steps", "1024", "--no-progress", "--set", "eval_episodes=0",
         "--set", "num_envs=2", "--set", "num_steps=128", "--set", "num_minibatches=2"]


def _weights(run: Path) -> dict[str, np.ndarray]:
    (path,) = (run / "model").glob("*.safetensors")
    return load_file(str(path))


def _same(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_seeds_are_dealt_out_in_turn_to_at_most_one_job_each():
    assert shares([1, 2, 3, 4, 5], 2) == [(1, 3, 5), (2, 4)]
    assert shares([7, 9], 4) == [(7,), (9,)]


@pytest.fixture(autouse=True)
def _two_cores(monkeypatch):
    """Two jobs are allowed wherever this runs (CI has 2 cores; --jobs refuses more than there are)."""
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})


def test_a_seed_trained_in_jobs_is_its_solo_run_and_the_group_is_whole(tmp_path, capsys):
    assert main([*TRAIN, "--seeds", "1-3", "--jobs", "2", "--run-dir", str(tmp_path / "group")]) == 0
    assert "under 3 seeds in 2 processes" in capsys.readouterr().err
    group = json.loads((tmp_path / "group" / "seeds.json").read_text())
    assert group["seeds"] == [1, 2, 3] and group["runs"] == ["seed_1", "seed_2", "seed_3"]
    assert main([*TRAIN, "--seed", "2", "--run-dir", str(tmp_path / "solo2")]) == 0
    assert _same(tmp_path / "group" / "seed_2", tmp_path / "solo2")
    assert not _same(tmp_path / "group" / "seed_1", tmp_path / "solo2")  # the comparison can fail


def test_a_group_trained_in_jobs_continues_in_jobs_as_in_one_process(tmp_path):
    for name, jobs in (("jobs", "2"), ("one", "1")):
        assert main([*TRAIN, "--seeds", "1,2", "--jobs", jobs, "--run-dir", str(tmp_path / name)]) == 0
        assert main(["resume", str(tmp_path / name), "--jobs", jobs, "--total-steps", "2048", "--no-progress"]) == 0
    for seed in (1, 2):
        assert json.loads((tmp_path / "jobs" / f"seed_{seed}" / "metrics.jsonl").read_text().splitlines()[-1]
                          )["global_step"] == 2048
        assert _same(tmp_path / "jobs" / f"seed_{seed}", tmp_path / "one" / f"seed_{seed}")


@pytest.mark.parametrize("extra, message", [
    (["--jobs", "2"], "give --seeds too"),
    (["--seeds", "1-2", "--jobs", "2", "--stack-updates"], "give one of them"),
    (["--seeds", "1-9", "--jobs", "9"], "use --jobs 2 or fewer"),
])
def test_jobs_that_cannot_apply_are_refused_before_anything_starts(tmp_path, capsys, extra, message):
    assert main([*TRAIN, *extra, "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "run").exists()


def test_jobs_do_not_replace_another_group_and_resume_of_one_run_refuses_them(tmp_path, capsys):
    assert main([*TRAIN, "--seeds", "1-2", "--run-dir", str(tmp_path / "group")]) == 0
    before = _weights(tmp_path / "group" / "seed_1")
    assert main([*TRAIN, "--seeds", "3-4", "--jobs", "2", "--overwrite", "--run-dir", str(tmp_path / "group")]) == 2
    assert "seeds [1, 2] that --seeds leaves out" in capsys.readouterr().err
    assert not (tmp_path / "group" / "seed_3").exists()
    after = _weights(tmp_path / "group" / "seed_1")
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert main([*TRAIN, "--seed", "1", "--run-dir", str(tmp_path / "one")]) == 0
    assert main(["resume", str(tmp_path / "one"), "--jobs", "2"]) == 2
    assert "is one run" in capsys.readouterr().err


def test_a_failing_job_is_named_with_its_seeds_and_the_others_finish(tmp_path, capsys):
    (tmp_path / "group" / "seed_3").mkdir(parents=True)
    holder = RunLock(tmp_path / "group" / "seed_3")  # as a run still training there would
    try:
        code = main([*TRAIN, "--seeds", "1-4", "--jobs", "2", "--run-dir", str(tmp_path / "group")])
    finally:
        holder.release()
    err = capsys.readouterr().err
    assert code == 2 and "job 1 of 2 (seeds 1, 3)" in err and "Traceback" not in err
    assert (tmp_path / "group" / "seed_2" / "model").is_dir()  # the other job trained its seeds


def test_ctrl_c_stops_every_job_with_a_checkpoint_and_resume_in_jobs_continues(tmp_path):
    """Ctrl-C reaches the whole process group: each job saves after its update, the parent says how to
    continue (exit 130, no traceback), and resume --jobs continues every seed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[2]
    run = tmp_path / "group"
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ppokit", *TRAIN[:3], "1000000", *TRAIN[4:], "--seeds", "1-2",
                             "--jobs", "2", "--run-dir", str(run)], stderr=subprocess.PIPE, text=True, env=env,
                            cwd=root, start_new_session=True)
    deadline = time.monotonic() + 120
    def rows(seed: int) -> list[str]:
        metrics = run / f"seed_{seed}" / "metrics.jsonl"
        return metrics.read_text().splitlines() if metrics.is_file() else []

    while not all(rows(s) for s in (1, 2)):  # every job is training
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert f"ppokit resume {run} --jobs 2" in err
    steps = [json.loads(rows(s)[-1])["global_step"] for s in (1, 2)]
    assert all(0 < n < 1_000_000 for n in steps)
    assert main(["resume", str(run), "--jobs", "2", "--total-steps", str(max(steps) + 512), "--no-progress"]) == 0
    assert all(json.loads(rows(s)[-1])["global_step"] >= max(steps) for s in (1, 2))
