"""A resume's budget may grow, never fall below what the run has done (issue 30, class 4): every
resume (a control run, a seed group, an RLHF PPO run; by the CLI and by the library) × every budget
below the count done is refused in one line naming that count, before any file changes. Before the
fix, every case here rewrote config.yaml (``ppokit info`` then read "512 of 256 env steps").

Without the fix, all 10 cases that run failed (2 are skipped: --total-updates 0 breaks a config rule first)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ppokit.cli.main import main
from ppokit.errors import ConfigError
from tests.fixtures.make_saved_runs import ROOT

SAVED = Path(__file__).resolve().parents[1] / "fixtures" / "saved_runs"


def _copy(name: str, tmp_path: Path) -> Path:
    """A saved run, with the path it was written under replaced by the copy's."""
    out = tmp_path / "runs"
    shutil.copytree(SAVED, out)
    for path in (out / name).rglob("*"):
        if path.suffix in (".yaml", ".json") and path.is_file():
            text = path.read_text(encoding="utf-8")
            path.write_text(text.replace(str(ROOT), str(out)), encoding="utf-8")
    return out / name


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name in ("config.yaml", "metrics.jsonl", "seeds.json")}


def _cli(run: Path, budget: int, flag: str, *extra: str):
    def go(capsys) -> str:
        assert main(["resume", str(run), flag, str(budget), "--no-progress", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("ppokit: error: "), err
        return err[0]
    return go


def _control_api(run: Path, budget: int):
    def go(capsys) -> str:
        from ppokit import PPO

        agent = PPO.resume(run)
        with pytest.raises(ConfigError) as info:
            agent.learn(total_steps=budget)
        agent.close()
        return str(info.value)
    return go


def _rlhf_api(run: Path, budget: int):
    def go(capsys) -> str:
        from ppokit.rlhf.ppo.trainer import RLHFTrainer

        with pytest.raises(ConfigError) as info:
            RLHFTrainer.resume(run, trust=True, total_updates=budget)
        return str(info.value)
    return go


def _group_api(run: Path, budget: int):
    def go(capsys) -> str:
        from ppokit.control.seeds import SeedGroup

        group = SeedGroup.resume(run)
        with pytest.raises(ConfigError) as info:
            group.learn(total_steps=budget)
        group.close()
        return str(info.value)
    return go


#: (saved run, what it has done, how it is resumed, its budget flag)
RESUMES = {
    "control CLI": ("control", 512, "cli", "--total-steps"),
    "control library": ("control", 512, "api", None),
    "seed group CLI": ("seeds", 512, "cli", "--total-steps"),
    "seed group library": ("seeds", 512, "group", None),
    "RLHF PPO CLI": ("rlhf_lora", 3, "cli", "--total-updates"),
    "RLHF PPO library": ("rlhf_lora", 3, "rlhf", None),
}


@pytest.mark.parametrize("below", [1, "all"], ids=["one below", "zero"])
@pytest.mark.parametrize("resume", list(RESUMES))
def test_a_budget_below_what_is_done_is_refused_before_anything_is_written(resume, below, tmp_path, capsys):
    name, done, how, flag = RESUMES[resume]
    if name == "rlhf_lora":
        pytest.importorskip("peft")
        if below == "all":
            pytest.skip("--total-updates 0 is refused by the config's own rule (total_updates > 0)")
    run = _copy(name, tmp_path)
    if name == "rlhf_lora":  # the saved run did 1 update; say it did 3, so that 2 is below it
        state = next(run.glob("checkpoints/*/resume.json"))
        state.write_text(state.read_text(encoding="utf-8").replace('"num_updates": 1,', '"num_updates": 3,', 1))
    budget = 0 if below == "all" else done - below
    before = _files(run)
    go = {"cli": lambda: _cli(run, budget, flag, *(["--trust"] if name == "rlhf_lora" else [])),
          "api": lambda: _control_api(run, budget), "group": lambda: _group_api(run, budget),
          "rlhf": lambda: _rlhf_api(run, budget)}[how]()
    message = go(capsys)
    assert f"below the {done:,} " in message and "already done" in message
    assert _files(run) == before
