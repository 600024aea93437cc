"""No process ppokit starts outlives the command that started it (issue 30, class 3).

One generated test: every feature that starts child processes × {SIGKILL, SIGTERM} of the ppokit
command. The command runs with a marker in its environment, which every child inherits (torchrun's
workers too, though they start in sessions of their own), so the children are found in /proc by it.
Once training runs, the command is signalled; within ``DEADLINE`` seconds no process may carry the
marker, and what the run holds must be usable again: the run directory's lock is free, the tune
study has no trial left RUNNING.

Without the fix (ppokit.lifetime and the tune workers' SIGTERM handling), 3 of the 8 cases failed:
the ``--nproc`` workers and the tune workers (with multiprocessing's resource tracker) survived a
SIGKILL of the command, and tune's workers its SIGTERM. The async envs' and the reward pool's
workers already stopped when their queue's other end closed; the test keeps it so."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Seconds after the signal by which every child must be gone (a SIGTERMed child saves a checkpoint).
DEADLINE = 20.0
#: Seconds a command gets to start training before the test gives up.
START_S = 120.0
MARK = "PPOKIT_LIFETIME_TEST"

#: Small, endless CartPole training: the signal always lands in the middle of it.
CONTROL = ["CartPole-v1", "--no-progress", "--total-steps", str(10**7), "--set", "num_envs=2", "--set", "num_steps=64",
           "--set", "num_minibatches=2", "--set", "num_epochs=2", "--set", "eval_episodes=0", "--set", "tensorboard=false"]


def _feature(name: str, tmp_path: Path, tiny_lm: str | None) -> tuple[list[str], int]:
    """``(ppokit arguments, how many children must be seen running before the signal)``."""
    run = str(tmp_path / "run")
    if name == "nproc":
        return ["train", *CONTROL, "--nproc", "2", "--run-dir", run], 2
    if name == "async_envs":
        return ["train", *CONTROL, "--set", "vectorization=async", "--run-dir", run], 2
    if name == "tune_jobs":
        pytest.importorskip("optuna")
        space = tmp_path / "space.yaml"
        space.write_text("default_space: false\nlearning_rate: {type: float, low: 1.0e-4, high: 1.0e-2}\n")
        return ["tune", "CartPole-v1", "--trials", "4", "--jobs", "2", "--total-steps", str(10**7), "--set",
                "num_envs=2", "--set", "num_steps=64", "--eval-every", "0", "--space", str(space), "--out", run,
                "--pruner", "none"], 2
    assert name == "reward_pool" and tiny_lm is not None
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(f'{{"prompt": "describe the thing {i} :"}}\n' for i in range(8)))
    return ["rlhf", "ppo", "--policy", tiny_lm, "--reward", "tests.rlhf.helpers:pleasant_minus_unpleasant",
            "--data", str(prompts), "--total-updates", "100000", "--no-progress", "--run-dir", run,
            "--set", "batch_size=4", "--set", "max_new_tokens=4", "--set", "device=cpu", "--set", "torch_threads=1",
            "--set", "reward_pool=process", "--set", "reward_workers=2", "--set", "tensorboard=false"], 2


def _marked(mark: str, but: int) -> list[int]:
    """The pids of the live processes whose environment holds ``MARK=mark``, less ``but``."""
    found = []
    needle = f"{MARK}={mark}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == but:
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":  # a zombie is dead, only not yet reaped by its parent
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def _started(name: str, tmp_path: Path) -> bool:
    run = tmp_path / "run"
    if name == "tune_jobs":
        return len(list(run.glob("trial_*/metrics.jsonl"))) >= 2
    metrics = run / "metrics.jsonl"
    return metrics.exists() and len(metrics.read_text().splitlines()) >= 1


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the children through /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
@pytest.mark.parametrize("feature", ["nproc", "tune_jobs", "async_envs", "reward_pool"])
def test_no_child_outlives_its_parent(feature, sig, tmp_path, request):
    tiny_lm = request.getfixturevalue("tiny_lm") if feature == "reward_pool" else None
    args, children = _feature(feature, tmp_path, tiny_lm)
    mark = uuid.uuid4().hex
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", MARK: mark}
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from ppokit.cli.main import main; sys.exit(main())",
                             *args], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + START_S
        while not (_started(feature, tmp_path) and len(_marked(mark, proc.pid)) >= children):
            assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        proc.send_signal(sig)
        deadline = time.monotonic() + DEADLINE
        while _marked(mark, proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        survivors = _marked(mark, proc.pid)
    finally:
        for pid in _marked(mark, proc.pid):  # leave nothing behind, whatever the outcome
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
    commands = {}
    for pid in survivors:
        try:
            commands[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:200]
        except OSError:
            pass
    assert not survivors, f"alive {DEADLINE:g} s after {sig.name} of the command: {commands}"
    _assert_usable(feature, tmp_path)


def _assert_usable(feature: str, tmp_path: Path) -> None:
    """What the stopped command held can be taken again: the run's lock, or the study's trials."""
    run = tmp_path / "run"
    if feature == "tune_jobs":
        import optuna

        study = optuna.load_study(study_name="ppokit-CartPole-v1", storage=f"sqlite:///{run / 'study.db'}")
        assert [t.number for t in study.trials if t.state.name == "RUNNING"] == []
        return
    from ppokit.io.lock import RunLock

    RunLock(run).release()  # raises CheckpointError while another process holds it


@pytest.mark.parametrize("named, stops", [("dead", True), ("live_stranger", False)])
def test_a_child_whose_parent_is_already_gone_stops_and_a_stale_name_is_ignored(named, stops, tmp_path):
    """The race the kernel's parent-death signal misses: a parent that died before the child asked
    for it. A parent pid inherited from another launch (a live process, not this one's parent) must
    not stop the child."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    pid = dead.pid if named == "dead" else os.getpid()  # the test process is the child's grandparent
    code = (f"import time; from ppokit.lifetime import die_with_parent; die_with_parent({pid}); "
            "time.sleep(3); print('alive')")
    # The shell in between makes the test process a live stranger rather than the child's parent.
    proc = subprocess.run(["sh", "-c", f'"{sys.executable}" -c "{code}"; echo "exit=$?"'], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    if stops:
        assert "alive" not in proc.stdout and f"exit={128 + signal.SIGTERM}" in proc.stdout, proc
    else:
        assert "alive" in proc.stdout and "exit=0" in proc.stdout, proc
