"""``train --seeds`` in a directory that holds another group (issue 30, class 4): with --overwrite
the group holds exactly the new seeds afterwards (the old seeds' run directories are removed once
the new runs have started, never before, and never while a run holds one); without it, the start
is refused in one line and the old group is left whole. ``ppokit info`` describes a group.

Without the fix, all 6 cases failed (stale seed_* directories stayed, a mixed group was
written without --overwrite, info on a group raised)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ppokit.cli.main import main
from ppokit.io.lock import RunLock

SAVED = Path(__file__).resolve().parents[1] / "fixtures" / "saved_runs" / "seeds"
SMALL = ["--no-preset", "--no-progress", "--total-steps", "32", "--set", "num_envs=2", "--set", "num_steps=16",
         "--set", "num_minibatches=1", "--set", "num_epochs=1", "--set", "eval_episodes=0", "--set", "tensorboard=false"]


def _members(group: Path) -> list[str]:
    return sorted(p.name for p in group.iterdir() if p.name.startswith("seed_"))


@pytest.mark.parametrize(("new", "kept"), [("3", ["seed_3"]), ("2-3", ["seed_2", "seed_3"]), ("1,2", ["seed_1", "seed_2"])])
def test_overwrite_leaves_exactly_the_new_seeds(new, kept, tmp_path, capsys):
    group = tmp_path / "group"
    shutil.copytree(SAVED, group)
    assert main(["train", "CartPole-v1", "--seeds", new, "--run-dir", str(group), "--overwrite", *SMALL]) == 0
    assert _members(group) == kept
    assert json.loads((group / "seeds.json").read_text())["runs"] == kept
    capsys.readouterr()
    assert main(["info", str(group)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{group}: a group of {len(kept)} seeds trained together")
    assert [line.split(":")[0] for line in out[1:-1]] == kept
    assert all("32 of 32 env steps" in line and line.endswith("finished") for line in out[1:-1])
    assert out[-1] == "state: finished"


def test_another_seed_set_without_overwrite_is_refused_and_the_group_left_whole(tmp_path, capsys):
    group = tmp_path / "group"
    shutil.copytree(SAVED, group)
    before = sorted(str(p.relative_to(group)) for p in group.rglob("*"))
    assert main(["train", "CartPole-v1", "--seeds", "3", "--run-dir", str(group), *SMALL]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ppokit: error:")]
    assert len(err) == 1 and "holds the seed group [1, 2]" in err[0] and "--overwrite" in err[0]
    assert sorted(str(p.relative_to(group)) for p in group.rglob("*")) == before


def test_an_old_seed_that_a_run_holds_is_not_removed(tmp_path, capsys):
    group = tmp_path / "group"
    shutil.copytree(SAVED, group)
    lock = RunLock(group / "seed_1")  # as a run still training there would
    try:
        assert main(["train", "CartPole-v1", "--seeds", "3", "--run-dir", str(group), "--overwrite", *SMALL]) == 2
    finally:
        lock.release()
    assert "seed_1" in capsys.readouterr().err
    assert _members(group) == ["seed_1", "seed_2"] and not (group / "seed_3").exists()


def test_info_describes_a_stopped_group(tmp_path, capsys):
    assert main(["info", str(SAVED)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "seed_1: 512 of 1,024 env steps (2 updates); stopped before the end"
    assert out[-1] == f"state: not finished; continue the group with: ppokit resume {SAVED}"
