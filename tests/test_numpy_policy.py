"""The NumPy rollout policy must compute what the torch policy computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from ppokit.control.networks import ActorCritic
from ppokit.control.numpy_policy import NumpyPolicy

OBS = spaces.Box(-np.inf, np.inf, (3, 2), np.float32)  # rank 2: the flattening is exercised too


def _policy(action_space: spaces.Space, activation: str, shared: bool) -> ActorCritic:
    torch.manual_seed(0)
    policy = ActorCritic(OBS, action_space, hidden_sizes=[16, 8], activation=activation, shared_trunk=shared,
                         ortho_init=False, log_std_init=-0.3)
    return policy


@pytest.mark.parametrize("activation", ["tanh", "relu", "elu"])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("action_space", [spaces.Discrete(4), spaces.Box(-1, 1, (2,), np.float32)],
                         ids=["discrete", "box"])
def test_numpy_act_matches_torch_evaluate(action_space, activation, shared):
    policy = _policy(action_space, activation, shared)
    assert NumpyPolicy.supports(policy, torch.device("cpu"))
    fast = NumpyPolicy(policy)
    obs = np.random.default_rng(1).normal(size=(64, 3, 2)).astype(np.float32)
    actions, logp, values = fast.act(obs, np.random.default_rng(2))
    with torch.no_grad():
        ref_logp, _, ref_values = policy.evaluate(torch.from_numpy(obs), torch.from_numpy(actions))
    np.testing.assert_allclose(logp, ref_logp.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(values, ref_values.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast.value(obs), ref_values.numpy(), rtol=1e-5, atol=1e-5)
    # The views follow in-place weight changes (what the optimiser does) without a refresh.
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.1)
        ref_values = policy.value(torch.from_numpy(obs))
    np.testing.assert_allclose(fast.value(obs), ref_values.numpy(), rtol=1e-5, atol=1e-5)


def test_numpy_sampling_follows_the_policy_distribution():
    discrete = _policy(spaces.Discrete(4), "tanh", False)
    obs = np.zeros((20_000, 3, 2), dtype=np.float32)
    actions, _, _ = NumpyPolicy(discrete).act(obs, np.random.default_rng(3))
    with torch.no_grad():
        probs = discrete.head(discrete.actor_trunk(torch.zeros(1, 6))).exp()[0].numpy()
    freq = np.bincount(actions, minlength=4) / len(actions)
    np.testing.assert_allclose(freq, probs, atol=0.015)

    box = _policy(spaces.Box(-1, 1, (2,), np.float32), "tanh", False)
    actions, _, _ = NumpyPolicy(box).act(obs, np.random.default_rng(4))
    with torch.no_grad():
        mean = box.head.linear(box.actor_trunk(torch.zeros(1, 6)))[0].numpy()
    np.testing.assert_allclose(actions.mean(0), mean, atol=0.02)
    np.testing.assert_allclose(actions.std(0), np.exp(-0.3), rtol=0.03)


def test_unsupported_policies_keep_the_torch_path():
    multi = _policy(spaces.MultiDiscrete([2, 3]), "tanh", False)
    assert not NumpyPolicy.supports(multi, torch.device("cpu"))
    image = ActorCritic(spaces.Box(0, 255, (16, 16, 3), np.uint8), spaces.Discrete(2))
    assert not NumpyPolicy.supports(image, torch.device("cpu"))
    assert not NumpyPolicy.supports(_policy(spaces.Discrete(2), "tanh", False), torch.device("meta"))


@pytest.mark.parametrize("action_space", [spaces.Discrete(4), spaces.Box(-1, 1, (2,), np.float32)],
                         ids=["discrete", "box"])
def test_action_alone_is_act_without_the_critic(action_space):
    fast = NumpyPolicy(_policy(action_space, "tanh", False))
    obs = np.random.default_rng(1).normal(size=(32, 3, 2)).astype(np.float32)
    for deterministic in (False, True):
        expected = fast.act(obs, np.random.default_rng(7), deterministic)[0]
        np.testing.assert_array_equal(fast.action(obs, np.random.default_rng(7), deterministic), expected)
