"""Learning tests: fixed seeds, a step budget, and a real return threshold on a deterministic eval."""

import pytest

from ppokit import PPO, ControlConfig
from ppokit.configuration import from_mapping
from ppokit.control.presets import load_preset

pytestmark = pytest.mark.learning


def _preset(name, **changes):
    data = load_preset(name)
    data.update(progress=False, tensorboard=False, eval_episodes=0, **changes)
    return from_mapping(ControlConfig, data)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cartpole_solved_within_100k_steps(seed, tmp_path):
    agent = PPO(_preset("CartPole-v1", seed=seed))
    assert agent.config.total_steps <= 100_000
    agent.learn(run_dir=tmp_path / "run")
    assert agent.global_step <= 100_000
    result = agent.evaluate(20, deterministic=True)
    assert result["episodes"] == 20
    assert result["mean_return"] >= 475, result


def test_pendulum_reaches_minus_300_within_200k_steps(tmp_path):
    agent = PPO(_preset("Pendulum-v1", seed=1))
    assert agent.config.total_steps <= 200_000
    agent.learn(run_dir=tmp_path / "run")
    assert agent.global_step <= 200_000
    result = agent.evaluate(20, deterministic=True)
    assert result["mean_return"] >= -300, result
