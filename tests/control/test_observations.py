"""Dict, Tuple and Discrete observations (issue 14): flattened as Gymnasium flattens them (one-hot for
discrete parts), so the policy, normalisation and the fast path see one vector."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gymnasium import spaces

from ppokit import PPO, ControlConfig
from ppokit.control.envs.observations import ObservationReader


def _config(tmp_path, kind: str, total_steps: int = 512, **env_kwargs) -> ControlConfig:
    return ControlConfig(env_id="tests.envs:ModeEnv", env_kwargs={"kind": kind, **env_kwargs}, num_envs=4,
                         num_steps=64, num_minibatches=4, num_epochs=4, total_steps=total_steps, learning_rate=3e-3,
                         normalize_obs=True, progress=False, tensorboard=False, eval_episodes=5,
                         run_dir=str(tmp_path / kind))


def test_observations_are_flattened_one_hot_in_gymnasium_order():
    space = spaces.Dict({"pos": spaces.Box(-1, 1, (2,), np.float32), "mode": spaces.Discrete(3, start=1)})
    reader = ObservationReader(space, spaces.Discrete(2), "action_mask")
    assert reader.flatten and reader.observation_space.shape == (5,)
    batch = {"pos": np.array([[0.5, -0.5], [0.1, 0.2]], np.float32), "mode": np.array([3, 1])}
    obs, mask = reader.read(batch, {}, 2)
    assert mask is None
    np.testing.assert_allclose(obs, [[0, 0, 1, 0.5, -0.5], [1, 0, 0, 0.1, 0.2]])  # keys sorted: mode, pos

    with_mask = spaces.Dict({**space.spaces, "action_mask": spaces.MultiBinary(2)})
    reader = ObservationReader(with_mask, spaces.Discrete(2), "action_mask")
    obs, mask = reader.read({**batch, "action_mask": np.array([[1, 0], [0, 1]])}, {}, 2)
    assert obs.shape == (2, 5) and mask.tolist() == [[True, False], [False, True]]


@pytest.mark.learning
@pytest.mark.parametrize("kind", ["dict", "tuple", "discrete"])
def test_a_task_that_needs_the_discrete_part_is_learned(tmp_path, kind):
    agent = PPO(_config(tmp_path, kind, total_steps=4 * 64 * 40))
    agent.learn()
    assert agent.algorithm.fast_update  # a flat vector: the fast path applies
    result = json.loads((tmp_path / kind / "eval.json").read_text())
    assert result["mean_return"] >= 18.0, result  # of 20; a policy blind to the mode gets about 6.7


def test_dict_observations_save_load_and_predict_raw(tmp_path):
    agent = PPO(_config(tmp_path, "dict"))
    agent.learn()
    loaded = PPO.load(tmp_path / "dict", trust=True)
    raw = {"noise": np.zeros(2, np.float32), "mode": 2}
    assert loaded.predict(raw) == agent.predict(raw)
    assert loaded.evaluate(2)["episodes"] == 2


def test_masks_inside_a_dict_of_several_parts(tmp_path):
    agent = PPO(_config(tmp_path, "dict", with_mask=True))  # the env raises on a masked action
    agent.learn()
    assert agent.policy.spec.action_mask and agent.observation_space.shape == (5,)
