"""The NumPy rollout policy samples from the policy's distribution (its parity is in test_parity.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from ppokit.control.fast.policy import NumpyPolicy
from ppokit.control.policy.networks import ActorCritic, PolicySpec

OBS = spaces.Box(-np.inf, np.inf, (3, 2), np.float32)  # rank 2: the flattening is exercised too


def _policy(action_space: spaces.Space, activation: str, shared: bool) -> ActorCritic:
    torch.manual_seed(0)
    policy = ActorCritic(PolicySpec.from_spaces(OBS, action_space, hidden_sizes=[16, 8], activation=activation,
                                                shared_trunk=shared, ortho_init=False, log_std_init=-0.3))
    return policy


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


@pytest.mark.parametrize("action_space", [spaces.Discrete(4), spaces.Box(-1, 1, (2,), np.float32)],
                         ids=["discrete", "box"])
def test_action_alone_is_act_without_the_critic(action_space):
    fast = NumpyPolicy(_policy(action_space, "tanh", False))
    obs = np.random.default_rng(1).normal(size=(32, 3, 2)).astype(np.float32)
    for deterministic in (False, True):
        expected = fast.act(obs, np.random.default_rng(7), deterministic)[0]
        np.testing.assert_array_equal(fast.action(obs, np.random.default_rng(7), deterministic), expected)
