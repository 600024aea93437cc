"""PPO(config, env=...) with the env objects users bring (issue 14): an instance, a class, a factory,
a vector env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from ppokit import PPO, ControlConfig
from ppokit.errors import EnvError
from tests.envs import CountingEnv


def _config(tmp_path, name: str, **changes) -> ControlConfig:
    values = dict(num_envs=2, num_steps=32, num_minibatches=2, num_epochs=1, total_steps=128, progress=False,
                  tensorboard=False, eval_episodes=2, run_dir=str(tmp_path / name))
    values.update(changes)
    return ControlConfig(**values)


def test_an_env_instance_is_trained_in_place_and_evaluated_on_copies(tmp_path):
    env = gym.make("CartPole-v1")
    agent = PPO(_config(tmp_path, "instance"), env=env)
    assert agent.config.num_envs == 1  # an instance is one env
    assert agent.config.env_id == "CartPole-v1" and agent.config.env_spec["max_episode_steps"] == 500  # its spec
    agent.learn()
    assert env.unwrapped.state is not None  # the very instance was stepped
    assert agent.evaluate(3)["episodes"] == 3


def test_an_env_class_and_a_factory_make_as_many_envs_as_asked(tmp_path):
    agent = PPO(_config(tmp_path, "class", num_envs=3, num_minibatches=3, env_kwargs={"length": 4}), env=CountingEnv)
    assert agent.env.num_envs == 3 and agent.config.env_id == "tests.envs:CountingEnv"
    agent.learn()
    assert agent.evaluate(2)["mean_return"] == 4.0  # env_kwargs reached every env

    made = []

    def factory(**kwargs):
        made.append(kwargs)
        return CountingEnv(length=5)

    local = PPO(_config(tmp_path, "factory"), env=factory)
    local.learn()
    assert len(made) >= 2 and local.config.env_id.startswith("<object ")
    # A model trained on an object made in code needs the object again to evaluate.
    with pytest.raises(EnvError, match="pass it again"):
        PPO.load(tmp_path / "factory").evaluate(1)
    assert PPO.load(tmp_path / "factory", env=factory).evaluate(1)["mean_return"] == 5.0


def test_a_vector_env_brings_its_own_number_of_envs(tmp_path):
    vec = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 4,
                                   autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    agent = PPO(_config(tmp_path, "vector", num_minibatches=4), env=vec)
    assert agent.env is vec and agent.config.num_envs == 4
    agent.learn()
    assert np.isfinite(agent.evaluate(2)["mean_return"])

    same_step = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2,
                                         autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    with pytest.raises(EnvError, match="NEXT_STEP"):
        PPO(_config(tmp_path, "same"), env=same_step)


def test_anything_else_is_refused_by_name(tmp_path):
    with pytest.raises(EnvError, match="expected an env id, a gymnasium.Env"):
        PPO(_config(tmp_path, "bad"), env=42)
    assert PPO(_config(tmp_path, "id"), env="Acrobot-v1").config.env_id == "Acrobot-v1"


def test_env_kwargs_given_beside_an_env_class_reach_it(tmp_path):
    """``PPO(config, env=Cls, env_kwargs=...)``: the kwargs are those the env is made with, not only
    those config.yaml records (they were recorded but not used)."""
    from ppokit import PPO, ControlConfig
    from tests.envs import CountingEnv

    agent = PPO(ControlConfig(num_envs=2, num_steps=8, total_steps=16, progress=False, tensorboard=False),
                env=CountingEnv, env_kwargs={"length": 7})
    assert agent.env.envs[0].unwrapped.length == 7 and agent.config.env_kwargs == {"length": 7}
    agent.close()
