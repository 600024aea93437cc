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
