"""Env modules and wrappers named on the command line or in a config (issue 31, item 9): the
``package:id`` hint for ids a known package registers, modules in the working directory (the one
import rule envs share with reward functions), and ``env_wrappers``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ppokit import PPO, ControlConfig
from ppokit.control.envs.make import check_env_id, package_hint
from ppokit.errors import ConfigError, EnvError, UntrustedCodeError

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--no-progress", "--set", "num_envs=2", "--set", "num_steps=16", "--set", "num_minibatches=1",
        "--set", "tensorboard=false", "--set", "eval_episodes=1", "--total-steps", "32"]


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    # PYTHONPATH names ppokit's checkout only: the working directory is not on it.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "ppokit", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_an_id_a_known_package_registers_gets_the_package_form():
    out = _cli("train", "MiniGrid-Empty-5x5-v0", *TINY)  # a fresh process: minigrid not imported yet
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "pass minigrid:MiniGrid-Empty-5x5-v0" in out.stderr, out.stderr
    assert "highway_env:highway-fast-v0" in package_hint("highway-fast-v0")  # installed or not
    assert "gymnasium_robotics:FetchReach-v4" in package_hint("FetchReach-v4")
    assert package_hint("CartPole-v1") == "" and package_hint("minigrid:MiniGrid-Empty-5x5-v0") == ""
    with pytest.raises(EnvError, match="no such thing|not found|doesn't exist|unknown env id"):
        check_env_id("NoSuchEnvAtAll-v0")


def test_a_module_in_the_working_directory_is_importable_for_envs(tmp_path):
    """As from the console script, whose sys.path has its own folder, not the working directory
    (``python -m`` would add it)."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "mgenv_here.py").write_text(
        "import gymnasium as gym\n\ndef flat(**kwargs):\n    return gym.make('CartPole-v1', max_episode_steps=5)\n")
    script = tmp_path / "bin" / "ppokit_script.py"
    script.parent.mkdir()
    script.write_text("import sys\nfrom ppokit.cli.main import main\nsys.exit(main())\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(script), "train", "mgenv_here:flat", *TINY, "--run-dir",
                          str(tmp_path / "run")], capture_output=True, text=True, env=env, cwd=work, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "run" / "eval.json").exists()


def test_env_wrappers_wrap_training_evaluation_and_video_envs_in_order(tmp_path):
    wrappers = ["gymnasium.wrappers:TimeAwareObservation", {"gymnasium.wrappers:TimeLimit": {"max_episode_steps": 5}}]
    config = ControlConfig(env_id="CartPole-v1", env_wrappers=wrappers, num_envs=2, num_steps=16, num_minibatches=1,
                           num_epochs=1, total_steps=32, progress=False, tensorboard=False, eval_episodes=2,
                           run_dir=str(tmp_path / "run"))
    agent = PPO(config).learn()
    assert agent.env.single_observation_space.shape == (5,)  # CartPole's 4 and the time
    assert agent.evaluate(2)["mean_return"] == 5.0
    assert str(agent.env_source.single()).startswith("<TimeLimit<TimeAwareObservation<TimeLimit")
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert recorded["env_wrappers"] == wrappers
    assert PPO.load(tmp_path / "run").evaluate(2)["mean_return"] == 5.0  # gymnasium's own: no consent


def test_env_wrappers_outside_gymnasium_need_consent_when_read_back(tmp_path):
    config = ControlConfig(env_id="CartPole-v1", env_wrappers=[{"tests.envs:ScaledReward": {"scale": 2.0}}], num_envs=2,
                           num_steps=16, num_minibatches=1, num_epochs=1, total_steps=32, progress=False,
                           tensorboard=False, eval_episodes=1, run_dir=str(tmp_path / "run"))
    PPO(config).learn()
    with pytest.raises(UntrustedCodeError, match="tests.envs:ScaledReward"):
        PPO.load(tmp_path / "run").evaluate(1)
    assert PPO.load(tmp_path / "run", trust=True).evaluate(1)["mean_return"] > 2  # 2 per step: the wrapper is on
    out = _cli("eval", tmp_path / "run")
    assert out.returncode != 0 and "--trust" in out.stderr and "Traceback" not in out.stderr


def test_bad_env_wrappers_are_refused_naming_the_field():
    with pytest.raises(ConfigError, match="env_wrappers"):
        ControlConfig(env_wrappers=["FlattenObservation"])
    with pytest.raises(EnvError, match="no wrapper 'NoSuchWrapper'"):
        PPO(ControlConfig(env_wrappers=["gymnasium.wrappers:NoSuchWrapper"], progress=False))
