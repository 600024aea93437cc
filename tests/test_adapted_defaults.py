"""Settings the user did not give adapt to the ones they did, and the run says so and records them:
the cases issue 31 names (a recurrent policy on the general defaults and on a preset, a critic-free
estimator without G), each of which was refused before."""

from __future__ import annotations

import logging

import pytest
import yaml

from ppokit import PPO, ControlConfig
from ppokit.cli.main import main


def _recorded(run) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


def test_a_recurrent_policy_on_the_general_defaults_fits_its_minibatches(tmp_path, caplog):
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="ppokit"):
        code = main(["train", "tests.envs:CountingEnv", "--set", "recurrent=lstm", "--total-steps", "256",
                     "--set", "eval_episodes=1", "--run-dir", str(run), "--no-progress"])
    assert code == 0
    saved = _recorded(run)
    assert saved["recurrent"] == "lstm" and saved["num_envs"] % saved["num_minibatches"] == 0
    assert saved["num_steps"] == 64  # one rollout fits the 256 steps asked for
    assert "adapted num_minibatches = 4" in caplog.text


def test_a_recurrent_policy_on_a_preset_fits_the_presets_minibatches(tmp_path, caplog):
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="ppokit"):
        code = main(["train", "Pendulum-v1", "--set", "recurrent=gru", "--total-steps", "512", "--set", "num_epochs=1",
                     "--set", "eval_episodes=1", "--run-dir", str(run), "--no-progress"])
    assert code == 0
    saved = _recorded(run)
    assert saved["gamma"] == 0.9  # the preset still applies
    assert saved["num_minibatches"] == 4 and saved["num_envs"] == 4
    assert "preset's" not in caplog.text and "num_minibatches = 4 (not 16" in caplog.text


def test_what_the_user_sets_is_never_adapted(capsys):
    code = main(["train", "Pendulum-v1", "--set", "recurrent=gru", "--set", "num_minibatches=16",
                 "--set", "num_envs=4"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "must divide num_envs = 4" in err and "you set both" in err and len(err.splitlines()) == 1


def test_in_code_too(tmp_path):
    agent = PPO(ControlConfig(env_id="tests.envs:CountingEnv", recurrent="gru", total_steps=128, progress=False,
                              tensorboard=False, eval_episodes=1, run_dir=str(tmp_path / "run")))
    agent.learn()
    saved = _recorded(tmp_path / "run")
    assert (saved["num_steps"], saved["num_minibatches"]) == (32, 4)


def test_a_critic_free_estimator_without_g_gets_a_group(tiny_lm, tmp_path, caplog):
    pytest.importorskip("transformers")
    import json

    from tests.rlhf.helpers import PROMPTS

    run, data = tmp_path / "ppo", tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    with caplog.at_level(logging.INFO, logger="ppokit"):
        code = main(["rlhf", "ppo", "--policy", tiny_lm, "--reward", "tests.rlhf.helpers:pleasant_minus_unpleasant",
                     "--data", str(data), "--total-updates", "1", "--set", "advantage=grpo", "--set", "batch_size=2",
                     "--set", "max_new_tokens=3", "--set", "device=cpu", "--run-dir", str(run), "--no-progress"])
    assert code == 0
    assert _recorded(run)["num_generations"] == 4
    assert "adapted num_generations = 4" in caplog.text
