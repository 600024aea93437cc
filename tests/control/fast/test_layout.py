"""The fused parameter layout: views where FlatAdam stores the parameters in it, copies that follow
in-place changes elsewhere, and an optimiser state that does not depend on the layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ppokit.control.envs.make import TrustsOwnActions, make_vector_env
from ppokit.control.fast.flat_adam import FlatAdam
from ppokit.control.fast.layout import FusedArrays, LiveViews, fused_order
from ppokit.control.fast.policy import NumpyPolicy
from ppokit.control.fast.update import NumpyMinibatchStep
from ppokit.control.policy.networks import ActorCritic, PolicySpec
from ppokit.core.update import PPOBatch, PPOUpdateSettings


def _policy(shared: bool = False, hidden: tuple[int, ...] = (8, 6)) -> ActorCritic:
    torch.manual_seed(0)
    return ActorCritic(PolicySpec(obs_shape=(3,), encoder="mlp", hidden_sizes=hidden, activation="tanh",
                                  shared_trunk=shared, head="categorical", action_dims=(4,), ortho_init=True,
                                  log_std_init=0.0))


@pytest.mark.parametrize("shared, hidden", [(False, (8, 6)), (False, (8,)), (True, (8, 6)), (True, (8,))])
def test_fused_arrays_are_views_of_flat_adams_buffer_and_hold_each_layer(shared, hidden):
    policy = _policy(shared, hidden)
    FlatAdam(policy.parameters(), lr=1e-3, layout=fused_order(policy))
    arrays = FusedArrays(policy)
    assert arrays.views
    layers = policy.layers()
    with torch.no_grad():
        layers.head.weight[1, 2] = 7.0
        layers.value.bias[0] = -3.0
    assert arrays.out_w[1, 2] == 7.0 and arrays.out_b[-1, 0] == -3.0  # the live parameters
    if arrays.twin:
        first = layers.actor[0].weight.shape[0]
        np.testing.assert_array_equal(arrays.weights[0][first:], layers.critic[0].weight.detach().numpy())
    # The fused product gives what the separate layers give.
    obs = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    _, logp, value = NumpyPolicy(policy).act(obs, np.random.default_rng(1))
    with torch.no_grad():
        _, _, ref_value = policy.evaluate(torch.from_numpy(obs), torch.zeros(5, dtype=torch.long))
    np.testing.assert_allclose(value, ref_value.numpy(), rtol=1e-5, atol=1e-6)
    assert np.all(logp <= 0)


def test_copies_follow_in_place_changes_and_the_update_refuses_another_layout():
    policy = _policy()
    fast = NumpyPolicy(policy)  # no FlatAdam: the parameters lie apart, so the arrays are copies
    assert not fast.arrays.views
    obs = np.ones((2, 3), dtype=np.float32)
    before = fast.value(obs)
    with torch.no_grad():
        policy.value_head.bias.add_(1.0)
    np.testing.assert_allclose(fast.value(obs), before + 1.0, rtol=1e-6)
    FlatAdam(policy.parameters(), lr=1e-3)  # stored in the order given: not the fused one
    n = 4
    batch = PPOBatch(logp=torch.zeros(n), values=torch.zeros(n), advantages=torch.zeros(n), returns=torch.zeros(n))
    settings = PPOUpdateSettings(num_epochs=1, num_minibatches=1, clip_range=0.2, vf_coef=0.5, ent_coef=0.0,
                                 max_grad_norm=None, clip_range_vf=None, whiten_advantages=False, target_kl=None,
                                 loss="clip", kl_coef=0.0, skip_nonfinite=False)
    with pytest.raises(ValueError, match="fused_order"):
        NumpyMinibatchStep(policy, torch.zeros(n, 3), torch.zeros(n, dtype=torch.long), batch, settings)


def test_flat_adam_state_is_in_the_given_order_whatever_the_layout():
    fused, plain = _policy(), _policy()
    a = FlatAdam(fused.parameters(), lr=1e-2, layout=fused_order(fused))
    b = FlatAdam(plain.parameters(), lr=1e-2)
    for net, opt in ((fused, a), (plain, b)):
        opt.zero_grad()
        logp, _, value = net.evaluate(torch.ones(4, 3), torch.tensor([0, 1, 2, 3]))
        (logp.sum() + value.square().sum()).backward()
        opt.step()
    for p, q in zip(fused.parameters(), plain.parameters()):
        torch.testing.assert_close(p, q)
    state = a.state_dict()
    torch.testing.assert_close(state["exp_avg_sq"], b.state_dict()["exp_avg_sq"])
    again = _policy()
    c = FlatAdam(again.parameters(), lr=1.0, layout=fused_order(again))
    c.load_state_dict(b.state_dict())  # a canonical state into a fused layout, moment for moment
    assert torch.equal(c.exp_avg, a.exp_avg) and torch.equal(c.exp_avg_sq, a.exp_avg_sq)


def test_the_batched_envs_check_skips_only_the_array_the_collector_passes():
    env = make_vector_env("CartPole-v1", 3)
    env.reset(seed=0)
    space = env.unwrapped.action_space
    assert not space.contains(np.array([0, 2, 1])) and space.contains(np.array([0, 1, 1]))
    with pytest.raises(AssertionError):
        env.step(np.array([0, 5, 1]))  # anything else is still checked, by the env itself
    assert isinstance(space, TrustsOwnActions)
    unchecked = np.array([1, 9, 1])
    space.passing = unchecked
    assert space.contains(unchecked)  # taken on trust: only the collector's own sample is ever passed
    assert not space.contains(np.array([1, 9, 1]))  # an equal array that is not the one passed
    ours = np.array([1, 0, 1])
    space.passing = ours
    env.step(ours)
    env.close()


def test_live_views_are_kept_between_updates_until_a_parameter_moves():
    policy = _policy()
    optimizer = FlatAdam(policy.parameters(), lr=1e-3, layout=fused_order(policy))
    views = LiveViews(policy)
    first = views.get()
    assert views.get() is first  # nothing moved: the same arrays, not rebuilt
    # A new optimiser lays the parameters (and gradients) out in new storage: new views of it.
    FlatAdam(policy.parameters(), lr=1e-3, layout=fused_order(policy))
    second = views.get()
    assert second is not first and second[0].views and second[1].views
    with torch.no_grad():
        policy.layers().head.weight[0, 0] = 5.0
    assert second[0].out_w[0, 0] == 5.0
    del optimizer
