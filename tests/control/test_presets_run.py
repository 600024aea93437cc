"""Each shipped preset builds its env and runs one update (MuJoCo and Box2D through their extras)."""

import importlib.util

import pytest

from ppokit import PPO, ControlConfig
from ppokit.cli.train_config import is_multiagent
from ppokit.configuration import from_mapping
from ppokit.control.presets import list_presets, load_preset
from ppokit.multiagent import MultiAgentConfig, MultiAgentPPO

NEEDS = {"HalfCheetah-v5": "mujoco", "Hopper-v5": "mujoco", "Walker2d-v5": "mujoco", "LunarLander-v3": "Box2D",
         "BreakoutNoFrameskip-v4": "ale_py", "PongNoFrameskip-v4": "ale_py", "minigrid": "minigrid", "mpe": "mpe2"}


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_preset_runs_one_update(name, tmp_path):
    module = NEEDS.get(name)
    if module and importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")
    data = load_preset(name)
    # One short update with the preset's network, normalisation and loss settings.
    data.update(num_envs=min(data.get("num_envs", 8), 2), num_steps=64, num_minibatches=2, num_epochs=1,
                total_steps=128, progress=False, tensorboard=False, eval_episodes=1)
    if is_multiagent(data["env_id"], data):  # the mpe preset: what `ppokit train` trains it with
        agent = MultiAgentPPO(from_mapping(MultiAgentConfig, data))
    else:
        agent = PPO(from_mapping(ControlConfig, data))
    agent.learn(run_dir=tmp_path / "run")
    assert agent.global_step == 128
    assert (tmp_path / "run" / "eval.json").is_file()
