"""``--nproc``: what the workers run, and the launches refused before any process starts (issue 30)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ppokit.cli.main import main
from ppokit.launch import max_processes, worker_command

ROOT = Path(__file__).resolve().parents[1]


def test_a_ppokit_folder_in_the_working_directory_never_runs_in_the_workers(tmp_path):
    """``python -m ppokit`` in the workers put the working directory first on sys.path, so a folder
    named ppokit there ran in every worker instead of the package (before the fix the marker was
    written). The launcher here is started as the console script starts it: not from that folder."""
    decoy = tmp_path / "ppokit"
    decoy.mkdir()
    marker = tmp_path / "decoy-ran"
    (decoy / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (decoy / "__main__.py").write_text("raise SystemExit(0)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-P", "-c", "import sys; from ppokit.cli.main import main; sys.exit(main())",
                           "train", "CartPole-v1", "--nproc", "2", "--no-progress", "--total-steps", "1024",
                           "--set", "num_envs=2", "--set", "eval_episodes=0", "--run-dir", str(tmp_path / "run")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not marker.exists()
    assert (tmp_path / "run" / "model").is_dir()  # the real package trained


def test_the_worker_command_puts_the_launchers_ppokit_first_and_no_working_directory():
    import ppokit

    command = worker_command(["train", "CartPole-v1", "--nproc", "2"])
    path = command[command.index("-c") + 2].split(os.pathsep)
    assert path[0] == str(Path(ppokit.__file__).resolve().parent.parent)
    assert "" not in path and "." not in path
    assert command[-2:] == ["train", "CartPole-v1"]


@pytest.mark.parametrize("args, message", [
    (["--nproc", "100000"], f"--nproc 100000: this machine gives ppokit {max_processes()} CPU core"),
    (["--nproc", "2", "--seeds", "1-2"], "--nproc 2 and --seeds 1-2: --seeds trains several runs in one process"),
])
def test_an_nproc_that_cannot_work_is_refused_in_one_line_before_any_process(args, message, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "CartPole-v1", "--no-progress", "--run-dir", str(run), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ppokit: error: {message}") and err.count("\n") == 1, err
    assert not run.exists()


# ----------------------------------------------------------------------------- threads per process

TORCHRUN_ENV = {"RANK": "0", "WORLD_SIZE": "4", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"}


@pytest.mark.parametrize("local_processes, cores, setting, expected", [
    (2, 2, 0, 1),    # 2 processes on 2 cores: one thread each, not torch's two
    (4, 16, 0, 4),   # 4 on 16: a share each, not torchrun's OMP_NUM_THREADS=1
    (3, 2, 0, 1),    # more processes than cores: still one
    (2, 16, 3, 3),   # the user's torch_threads wins
    (None, 16, 0, None),  # a process on its own keeps torch's default
])
def test_each_process_of_a_job_takes_its_share_of_the_cores(local_processes, cores, setting, expected, monkeypatch):
    """Before: torch_threads 0 kept torch's default in every process of a job, a thread per core each
    (or the one thread torchrun's OMP_NUM_THREADS=1 gives), so N processes fought over the cores or left them idle."""
    import torch

    from ppokit import runtime

    for name in (*TORCHRUN_ENV, "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    if local_processes is not None:
        for name, value in {**TORCHRUN_ENV, "LOCAL_WORLD_SIZE": str(local_processes)}.items():
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    runtime.set_threads(setting)
    assert calls == ([] if expected is None else [expected])


def test_the_launcher_divides_the_cores_this_process_may_use(monkeypatch):
    """``--nproc`` sets each process's OMP_NUM_THREADS from the cores of this process's affinity (a
    container or taskset), not the machine's count."""
    from ppokit import launch
    from ppokit.lifetime import PARENT_ENV

    for name in ("OMP_NUM_THREADS", PARENT_ENV):  # restored after the test, whatever relaunch sets
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    seen: dict[str, str] = {}

    def fake_launch(config, entrypoint):
        seen["threads"] = os.environ["OMP_NUM_THREADS"]
        return lambda *args: None

    monkeypatch.setattr("torch.distributed.launcher.api.elastic_launch", fake_launch)
    assert launch.relaunch(["train", "CartPole-v1"], 2) == 0
    assert seen["threads"] == "2"


@pytest.mark.parametrize("setting, expected", [(1, 1), (2, 2)])
def test_numpy_blas_threads_follow_the_thread_setting(setting, expected, monkeypatch):
    """Before: torch_threads reached only torch, so NumPy's OpenBLAS kept a thread per core; the NumPy
    fast path's small products then woke the whole pool each time (a minibatch's forward pass 6x
    slower with the other core busy). ``set_threads`` now holds the BLAS pool to the same count."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import torch

    from ppokit import runtime

    for name in (*TORCHRUN_ENV, "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    with threadpoolctl.threadpool_limits(limits=4, user_api="blas"):  # restored after the test
        runtime.set_threads(setting)
        blas = [info["num_threads"] for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"]
    assert blas and all(n == expected for n in blas)
