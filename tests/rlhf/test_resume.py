"""Resume and safe loading of RLHF PPO runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ppokit.cli.main import main
from ppokit.errors import CheckpointError, ConfigError
from ppokit.io.checkpoints import latest_checkpoint
from ppokit.rlhf.config import RLHFConfig
from ppokit.rlhf.ppo.trainer import RLHFTrainer
from tests.rlhf.helpers import PROMPTS

pytest.importorskip("transformers")


@pytest.fixture
def base_model(tiny_lm):
    return tiny_lm


def _config(policy, **changes):
    values = {"policy": policy, "rewards": ["tests.rlhf.helpers:pleasant_minus_unpleasant"], "total_updates": 5,
              "batch_size": 8, "num_minibatches": 2, "max_new_tokens": 6, "learning_rate": 1e-3, "kl_coef": 0.05,
              "adaptive_kl": True, "lr_schedule": "linear", "progress": False, "tensorboard": False,
              "torch_threads": 1, "device": "cpu", "seed": 0, "sample_every": 0}
    values.update(changes)
    return RLHFConfig(**values)


def _same(a: RLHFTrainer, b: RLHFTrainer) -> bool:
    sa, sb = a.models.trainable.state_dict(), b.models.trainable.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("variant", [{}, {"lora": True, "lora_r": 4}, {"value_model": "head"}])
def test_stop_and_resume_gives_bit_identical_weights(base_model, tmp_path, variant):
    config = _config(base_model, **variant)
    straight = RLHFTrainer(config, prompts=PROMPTS, run_dir=tmp_path / "straight")
    straight.learn()
    first = RLHFTrainer(config, prompts=PROMPTS, run_dir=tmp_path / "split")
    first.learn(callback=lambda record: record["update"] < 2)
    assert first.num_updates == 2 and not _same(first, straight)
    resumed = RLHFTrainer(config, prompts=PROMPTS, run_dir=tmp_path / "split", resume=True)
    assert resumed.num_updates == 2 and resumed.prompts.state_dict() == first.prompts.state_dict()
    resumed.learn()
    assert resumed.num_updates == 5 and _same(resumed, straight)
    assert resumed.kl_coef == straight.kl_coef
    steps = [r["update"] for r in resumed.history]
    assert steps == [1, 2, 3, 4, 5]


def test_cli_resume_rebuilds_the_run_from_its_config(base_model, tmp_path, capsys):
    run = tmp_path / "run"
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(f'{{"prompt": "{p["prompt"]}"}}\n' for p in PROMPTS))
    args = ["rlhf", "ppo", "--policy", base_model, "--data", str(data), "--run-dir", str(run), "--no-progress",
            "--reward", "tests.rlhf.helpers:pleasant_minus_unpleasant", "--set", "batch_size=8",
            "--set", "max_new_tokens=6", "--set", "sample_every=0", "--set", "tensorboard=false"]
    assert main([*args, "--total-updates", "2"]) == 0
    # An RLHF run counts updates, not env steps: the control flag is refused by name.
    assert main(["resume", str(run), "--total-steps", "3", "--no-progress"]) == 2
    assert "pass --total-updates, not --total-steps" in capsys.readouterr().err
    # The saved config names a reward module: resuming imports it only with the user's consent.
    assert main(["resume", str(run), "--total-updates", "3", "--no-progress"]) == 2
    assert "imports module 'tests.rlhf.helpers'" in capsys.readouterr().err
    assert main(["resume", str(run), "--total-updates", "3", "--no-progress", "--trust"]) == 0
    assert latest_checkpoint(run).name == "update_000000000003"
    assert "resuming RLHF PPO at update 2" in capsys.readouterr().err
    # --resume on a finished run with nothing left to do is fine; --overwrite with it is not.
    assert main([*args, "--total-updates", "3", "--resume"]) == 0
    assert main([*args, "--resume", "--overwrite"]) == 2


def test_a_run_with_a_python_callable_reward_names_what_resume_needs(base_model, tmp_path):
    def reward(prompts, completions):
        return [0.0] * len(completions)

    RLHFTrainer(_config(base_model, total_updates=1), prompts=PROMPTS, rewards=[reward], run_dir=tmp_path / "run").learn()
    with pytest.raises(ConfigError, match="Python callable"):
        RLHFTrainer.resume(tmp_path / "run", prompts=PROMPTS)
    resumed = RLHFTrainer.resume(tmp_path / "run", prompts=PROMPTS, rewards=[reward], total_updates=2)
    assert resumed.num_updates == 1


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_pickled_object_in_an_rlhf_checkpoint_is_refused(base_model, tmp_path):
    RLHFTrainer(_config(base_model, total_updates=1), prompts=PROMPTS, run_dir=tmp_path / "run").learn()
    checkpoint = latest_checkpoint(tmp_path / "run")
    marker = tmp_path / "code_ran"
    torch.save({"payload": _RunsCode(str(marker))}, checkpoint / "optimizer.pt")
    with pytest.raises(CheckpointError, match="refused to load"):
        RLHFTrainer(_config(base_model, total_updates=2), prompts=PROMPTS, run_dir=tmp_path / "run", resume=True)
    assert not marker.exists()


def test_an_rlhf_checkpoint_does_not_load_into_a_different_setup(base_model, tmp_path):
    RLHFTrainer(_config(base_model, total_updates=1), prompts=PROMPTS, run_dir=tmp_path / "run").learn()
    with pytest.raises(CheckpointError, match="value_model = 'separate' \\(now 'head'\\).*cannot change on resume"):
        RLHFTrainer(_config(base_model, total_updates=2, value_model="head"), prompts=PROMPTS,
                    run_dir=tmp_path / "run", resume=True)


def test_ctrl_c_finishes_the_step_checkpoints_and_resume_matches(base_model, tmp_path):
    import os
    import signal

    from ppokit.errors import TrainingInterrupted

    config = _config(base_model)
    straight = RLHFTrainer(config, prompts=PROMPTS, run_dir=tmp_path / "straight")
    straight.learn()

    def press_ctrl_c(record):
        if record["update"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # arrives while the loop runs; handled after step 3

    first = RLHFTrainer(config, prompts=PROMPTS, run_dir=tmp_path / "split")
    with pytest.raises(TrainingInterrupted, match=f"ppokit resume {tmp_path / 'split'}") as info:
        first.learn(callback=press_ctrl_c)
    assert info.value.signal_name == "SIGINT" and info.value.checkpoint.endswith("update_000000000003")
    resumed = RLHFTrainer(config, prompts=PROMPTS, run_dir=tmp_path / "split", resume=True)
    resumed.learn()
    assert _same(resumed, straight)


def test_logs_are_exact_after_a_resume_and_a_run_resumes_from_anywhere(base_model, tmp_path, monkeypatch):
    """samples.jsonl keeps no rows past the checkpoint; config.yaml holds absolute paths."""
    import json
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copytree(base_model, tmp_path / "policy")
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    config = _config("policy", data="prompts.jsonl", sample_every=1, num_samples=2, checkpoint_every=1)
    first = RLHFTrainer(config, run_dir="run")
    first.learn(callback=lambda record: record["update"] < 3)
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    shutil.rmtree(tmp_path / "run" / "checkpoints" / checkpoints[-1])  # as if killed after update 3's samples
    recorded = (tmp_path / "run" / "config.yaml").read_text()
    assert f"policy: {tmp_path / 'policy'}" in recorded and f"data: {tmp_path / 'prompts.jsonl'}" in recorded

    monkeypatch.chdir(tmp_path / "run")  # relative paths would now point nowhere
    assert main(["resume", str(tmp_path / "run"), "--no-progress", "--trust"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [u for u in range(1, 6) for _ in range(2)]


def test_resume_starts_over_a_run_stopped_before_its_first_checkpoint(base_model, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("stale: true\n")
    (run / "metrics.jsonl").write_text('{"update": 7}\n')
    trainer = RLHFTrainer(_config(base_model, total_updates=2), prompts=PROMPTS, run_dir=run, resume=True)
    trainer.learn()
    rows = [line for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert trainer.num_updates == 2 and len(rows) == 2 and '"update": 7' not in rows[0]
