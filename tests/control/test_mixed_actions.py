"""Mixed actions (issue 14): Tuple and Dict action spaces of Discrete, MultiDiscrete and Box parts,
one head per part, log-probs and entropies summed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gymnasium import spaces

from ppokit import PPO, ControlConfig
from ppokit.control.policy.actions import ActionAdapter
from ppokit.control.policy.heads import CategoricalHead, GaussianHead, MixedHead


def test_the_mixed_head_sums_its_parts():
    torch.manual_seed(0)
    head = MixedHead(4, [("categorical", (3,)), ("multi_categorical", (2, 2)), ("gaussian", (2,))])
    features = torch.randn(6, 4)
    params = head(features)
    actions, logp = head.sample(params)
    assert actions.shape == (6, 1 + 2 + 2)
    logp2, entropy = head.log_prob_entropy(params, actions)
    torch.testing.assert_close(logp, logp2)
    cat, multi, gauss = head.heads
    parts = [cat.log_prob_entropy(params[0], actions[:, 0].long()),
             multi.log_prob_entropy(params[1], actions[:, 1:3].long()),
             gauss.log_prob_entropy(params[2], actions[:, 3:])]
    torch.testing.assert_close(logp2, sum(p for p, _ in parts))
    torch.testing.assert_close(entropy, sum(e for _, e in parts))
    assert isinstance(cat, CategoricalHead) and isinstance(gauss, GaussianHead)


def test_the_adapter_gives_the_env_its_own_structure():
    tuple_space = spaces.Tuple((spaces.Discrete(3, start=1), spaces.Box(-1, 1, (2,), np.float32)))
    out = ActionAdapter(tuple_space)(np.array([[2.0, 0.5, 3.0], [0.0, -2.0, 0.0]], dtype=np.float32))
    assert out[0].tolist() == [3, 1] and out[1].tolist() == [[0.5, 1.0], [-1.0, 0.0]]  # start offset, clipped
    dict_space = spaces.Dict({"a": spaces.MultiDiscrete([2, 3]), "b": spaces.Box(0, 1, (1,), np.float32)})
    out = ActionAdapter(dict_space)(np.array([[1.0, 2.0, 0.25]], dtype=np.float32))
    assert out["a"].tolist() == [[1, 2]] and out["b"].tolist() == [[0.25]]
    assert dict_space.contains({k: v[0] for k, v in out.items()})


@pytest.mark.learning
@pytest.mark.parametrize("as_dict", [False, True], ids=["tuple", "dict"])
def test_both_parts_of_a_mixed_action_are_learned(tmp_path, as_dict):
    config = ControlConfig(env_id="tests.envs:MixedActionEnv", env_kwargs={"as_dict": as_dict}, num_envs=4,
                           num_steps=64, num_minibatches=4, num_epochs=4, total_steps=4 * 64 * 60, learning_rate=3e-3,
                           progress=False, tensorboard=False, eval_episodes=5, run_dir=str(tmp_path / "run"))
    agent = PPO(config).learn()
    assert agent.policy.spec.head == "mixed" and not agent.algorithm.fast_update
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert result["mean_return"] >= 17.0, result  # of 20; untrained about 8
    loaded = PPO.load(tmp_path / "run", trust=True)
    action = loaded.predict(np.array([0.5, 0.3], dtype=np.float32))
    assert loaded.action_space.contains(action)
