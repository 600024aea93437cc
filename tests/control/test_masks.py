"""Invalid-action masking (issue 14): from info["action_mask"] or a Dict observation's key, for
Discrete and MultiDiscrete actions, in sampling, log-probs, entropy, the update, evaluation and predict."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ppokit import PPO, ControlConfig
from ppokit.control.algorithm import ControlBatch
from ppokit.control.policy.heads import CategoricalHead, MultiCategoricalHead
from ppokit.core.update import AutogradStep


def _config(tmp_path, name, total_steps=4 * 128 * 2, key="action_mask", **env_kwargs) -> ControlConfig:
    return ControlConfig(env_id="tests.envs:LowestValidEnv", env_kwargs={"strict": True, **env_kwargs}, num_envs=4,
                         num_steps=128, num_minibatches=4, num_epochs=4, total_steps=total_steps, learning_rate=1e-3,
                         progress=False, tensorboard=False, eval_episodes=5, run_dir=str(tmp_path / name),
                         action_mask_key=key)


def test_a_masked_head_gives_masked_actions_nothing_and_stays_finite():
    head = CategoricalHead(3, 4)
    features = torch.randn(5, 3)
    mask = torch.tensor([[1, 0, 1, 0]] * 4 + [[0, 0, 0, 0]], dtype=torch.bool)  # last row: nothing valid
    log_probs = head(features, mask)
    probs = log_probs.exp()
    assert torch.all(probs[:4, [1, 3]] == 0) and torch.allclose(probs.sum(-1), torch.ones(5))
    assert torch.allclose(probs[4], torch.softmax(head.linear(features[4]), -1))  # an all-false row masks nothing
    actions, logp = head.sample(log_probs)
    assert not torch.isin(actions[:4], torch.tensor([1, 3])).any()
    logp2, entropy = head.log_prob_entropy(log_probs, torch.tensor([0, 2, 0, 2, 1]))
    (logp2.sum() + entropy.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())
    with torch.no_grad():
        two = torch.log_softmax(head.linear(features[0])[[0, 2]], -1)  # the same as a 2-action head
        assert float(entropy[0]) == pytest.approx(float(-(two.exp() * two).sum()), abs=1e-6)

    multi = MultiCategoricalHead(3, [2, 3])
    with torch.no_grad():
        parts = multi(features[:1], torch.tensor([[1, 1, 0, 1, 0]], dtype=torch.bool))
        assert float(parts[0].exp().sum()) == pytest.approx(1.0) and float(parts[1].exp()[0, [0, 2]].sum()) == 0


@pytest.mark.learning
def test_a_task_only_learnable_with_masks_is_learned_and_no_masked_action_is_ever_taken(tmp_path):
    """The env raises on a masked action (strict), in training and in evaluation."""
    budget = 40_960
    masked = PPO(_config(tmp_path, "masked", total_steps=budget)).learn()
    assert masked.policy.spec.action_mask
    assert json.loads((tmp_path / "masked" / "eval.json").read_text())["mean_return"] >= 15.0
    blind = PPO(_config(tmp_path, "blind", total_steps=budget, key="no_such_key", strict=False)).learn()
    assert not blind.policy.spec.action_mask
    assert json.loads((tmp_path / "blind" / "eval.json").read_text())["mean_return"] <= 3.0


@pytest.mark.parametrize("env_kwargs", [{"multi": True}, {"in_obs": True}], ids=["multidiscrete", "dict-observation"])
def test_masks_from_every_source_are_honoured(tmp_path, env_kwargs):
    agent = PPO(_config(tmp_path, "run", **env_kwargs)).learn()  # strict: a masked action would raise
    assert agent.policy.spec.action_mask and agent.collector.numpy_policy is None
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["episodes"] == 5


def test_masks_take_the_torch_path_and_survive_save_load_and_resume(tmp_path):
    config = _config(tmp_path, "straight", total_steps=4 * 128 * 4)
    agent = PPO(config)
    straight = agent.learn()
    # The masks came in info after the algorithm was made; the flag follows the path the updates took.
    assert straight.policy.spec.action_mask and not straight.algorithm.fast_update
    assert isinstance(straight.algorithm.minibatch_step(
        ControlBatch(obs=torch.zeros(2, 1), actions=torch.zeros(2, dtype=torch.long), logp=torch.zeros(2),
                     values=torch.zeros(2), advantages=torch.zeros(2), returns=torch.zeros(2),
                     action_mask=torch.ones(2, 8, dtype=torch.bool)), straight.algorithm.settings(0.0)), AutogradStep)

    split_config = _config(tmp_path, "split", total_steps=4 * 128 * 4)
    PPO(split_config).learn(callback=lambda record: record["update"] < 2)
    resumed = PPO.resume(tmp_path / "split", trust=True).learn()
    for a, b in zip(straight.policy.parameters(), resumed.policy.parameters()):
        assert torch.equal(a, b)

    loaded = PPO.load(tmp_path / "straight", trust=True)
    assert loaded.policy.spec.action_mask
    assert loaded.evaluate(3)["episodes"] == 3  # strict env: no masked action in evaluation


def test_predict_never_returns_a_masked_action(tmp_path):
    agent = PPO(_config(tmp_path, "run"))
    obs = np.zeros((200, 1), dtype=np.float32)
    mask = np.zeros((200, 8), dtype=bool)
    mask[:, [2, 5]] = True
    for deterministic in (True, False):
        actions = agent.predict(obs, deterministic=deterministic, action_mask=mask)
        assert set(np.unique(actions)) <= {2, 5}
    assert agent.predict(np.zeros(1, dtype=np.float32), action_mask=mask[0]) in (2, 5)
    agent.close()
