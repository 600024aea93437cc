"""``ppokit info``: what a run directory holds, for finished, interrupted and RLHF runs."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ppokit import PPO, ControlConfig
from ppokit.cli.main import main
from ppokit.io.run_info import describe_run

ROOT = Path(__file__).resolve().parents[2]


def _control(run_dir, total_steps=512, **kw):
    config = ControlConfig(env_id="CartPole-v1", num_envs=2, num_steps=64, num_minibatches=2, num_epochs=1,
                           total_steps=total_steps, progress=False, tensorboard=False, eval_episodes=3,
                           checkpoint_every=1, seed=7, **kw)
    return PPO(config).learn(run_dir=run_dir)


def test_a_finished_control_run(tmp_path):
    _control(tmp_path / "run")
    lines = describe_run(tmp_path / "run")
    assert lines[0] == f"{tmp_path / 'run'}: control PPO on CartPole-v1 (seed 7)"
    assert "progress: 512 of 512 env steps (4 updates)" in lines
    assert "latest checkpoint: checkpoints/update_000000000004 (update 4)" in lines
    assert any(line.startswith("last evaluation: mean return") and "over 3 episodes at step 512" in line
               for line in lines)
    assert lines[-1] == "state: finished"


def test_an_interrupted_control_run_says_how_to_go_on(tmp_path):
    run = tmp_path / "run"
    _control(run)
    # What a run stopped after update 2 leaves: its checkpoints so far and metrics, no final model.
    shutil.rmtree(run / "model")
    (run / "eval.json").unlink()
    for name in ("update_000000000003", "update_000000000004"):
        shutil.rmtree(run / "checkpoints" / name, ignore_errors=True)
    rows = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(rows[:2]) + '\n{"torn')
    lines = describe_run(run)
    assert "progress: 256 of 512 env steps (2 updates)" in lines
    assert "latest checkpoint: checkpoints/update_000000000002 (update 2)" in lines
    assert "last evaluation: none" in lines
    assert lines[-1] == f"state: stopped before the end; continue it with: ppokit resume {run}"


def test_an_extended_run_is_not_finished_until_its_new_budget_is_reached(tmp_path):
    run = tmp_path / "run"
    _control(run)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("total_steps: 512", "total_steps: 1024"))
    assert describe_run(run)[-1].startswith("state: stopped before the end")


def test_an_rlhf_run(tmp_path, tiny_lm):
    from ppokit.rlhf.config import RLHFConfig
    from ppokit.rlhf.ppo.trainer import RLHFTrainer
    from tests.rlhf.helpers import PROMPTS

    config = RLHFConfig(policy=tiny_lm, rewards=["tests.rlhf.helpers:pleasant_minus_unpleasant"], total_updates=2,
                        batch_size=4, max_new_tokens=4, progress=False, tensorboard=False, device="cpu",
                        sample_every=0, seed=3)
    RLHFTrainer(config, prompts=PROMPTS, run_dir=tmp_path / "run").learn()
    lines = describe_run(tmp_path / "run")
    assert lines[0].startswith(f"{tmp_path / 'run'}: RLHF PPO of {tiny_lm}")
    assert "rewards: tests.rlhf.helpers:pleasant_minus_unpleasant" in lines[0] and lines[0].endswith("(seed 3)")
    assert "progress: 2 of 2 PPO updates" in lines
    assert any(line.startswith("last evaluation: score") for line in lines)
    assert lines[-1] == "state: finished"


def test_info_cli_reads_files_only_and_reports_bad_directories(tmp_path, capsys):
    _control(tmp_path / "run", env_kwargs={})
    code = ("import sys\nfrom ppokit.cli.main import main\nmain(sys.argv[1:])\n"
            "print(sorted(m for m in ('torch', 'gymnasium', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, "info", str(tmp_path / "run")], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "control PPO on CartPole-v1" in proc.stdout and proc.stdout.strip().splitlines()[-1] == "[]"
    assert main(["info", str(tmp_path)]) == 2
    assert "not a ppokit run directory (no config.yaml)" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text("learning_rate: 0.1\n")
    assert main(["info", str(tmp_path)]) == 2
    assert "is not the config of a ppokit run" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["[1, 2]", "a: [unclosed"])
def test_a_damaged_config_is_one_line_error(tmp_path, capsys, text):
    (tmp_path / "config.yaml").write_text(text)
    assert main(["info", str(tmp_path)]) == 2
    assert str(tmp_path / "config.yaml") in capsys.readouterr().err
