"""The NumPy minibatch step must compute autograd's loss and gradient, and train as the torch path does."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from gymnasium import spaces

from ppokit import PPO, PPOConfig
from ppokit.control.networks import ActorCritic
from ppokit.control.numpy_update import NumpyMinibatchStep
from ppokit.core.optim import FlatAdam
from ppokit.core.update import STAT_NAMES, PPOUpdateSettings, AutogradStep, ppo_update, run_epochs

OBS = spaces.Box(-np.inf, np.inf, (3, 2), np.float32)  # rank 2: the flattening is exercised too
N = 96


def _setup(action_space: spaces.Space, activation: str, shared: bool):
    torch.manual_seed(0)
    policy = ActorCritic(OBS, action_space, hidden_sizes=[16, 8], activation=activation, shared_trunk=shared,
                         ortho_init=False, log_std_init=-0.3)
    optimizer = FlatAdam(policy.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    obs = torch.randn(N, 3, 2, generator=gen)
    if isinstance(action_space, spaces.Discrete):
        actions = torch.randint(0, int(action_space.n), (N,), generator=gen)
    else:
        actions = torch.randn(N, 2, generator=gen)
    with torch.no_grad():
        logp, _, values = policy.evaluate(obs, actions)
    # Old log-probs and values off by enough that both clips are active on some rows.
    batch = {
        "logp": logp + 0.4 * torch.randn(N, generator=gen),
        "values": values + 0.5 * torch.randn(N, generator=gen),
        "advantages": 2.0 * torch.randn(N, generator=gen) + 0.5,
        "returns": values + torch.randn(N, generator=gen),
    }
    return policy, optimizer, obs, actions, batch


def _grads(step, optimizer: FlatAdam, idx: torch.Tensor):
    loss = step.forward(idx)
    kl3 = step.approx_kl()
    optimizer.zero_grad()
    step.backward()
    return kl3, loss, optimizer.flat_grad.clone(), [float(x) for x in step.stats(torch.tensor(0.0))]


@pytest.mark.parametrize("activation", ["tanh", "relu", "elu"])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("action_space", [spaces.Discrete(3), spaces.Box(-1, 1, (2,), np.float32)],
                         ids=["discrete", "box"])
@pytest.mark.parametrize("loss", ["clip", "penalty"])
@pytest.mark.parametrize("clip_range_vf", [None, 0.2])
@pytest.mark.parametrize("normalize_advantages", [True, False])
def test_numpy_step_matches_autograd(action_space, activation, shared, loss, clip_range_vf, normalize_advantages):
    policy, optimizer, obs, actions, batch = _setup(action_space, activation, shared)
    settings = PPOUpdateSettings(num_epochs=1, num_minibatches=1, clip_range=0.2, vf_coef=0.7, ent_coef=0.05,
                                 clip_range_vf=clip_range_vf, normalize_advantages=normalize_advantages,
                                 loss=loss, kl_coef=0.3)
    idx = torch.randperm(N, generator=torch.Generator().manual_seed(2))[:64]
    reference = AutogradStep(batch, lambda i: policy.evaluate(obs[i], actions[i]), settings)
    ref_kl3, ref_loss, ref_grad, ref_stats = _grads(reference, optimizer, idx)
    assert NumpyMinibatchStep.supports(policy, torch.device("cpu"), optimizer)
    fast = NumpyMinibatchStep(policy, obs, actions, batch, settings)
    kl3, loss_value, grad, stats = _grads(fast, optimizer, idx)

    assert ref_stats[STAT_NAMES.index("clip_fraction")] > 0  # the clipped branches are exercised
    assert loss_value == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
    assert kl3 == pytest.approx(ref_kl3, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(stats, ref_stats, rtol=1e-5, atol=1e-6)
    assert ref_grad.abs().max() > 0
    np.testing.assert_allclose(grad.numpy(), ref_grad.numpy(), rtol=1e-4, atol=1e-6)


def test_numpy_epochs_follow_the_autograd_epochs():
    """The same shuffles, steps and early stop: the weights after K epochs agree."""
    policy, optimizer, obs, actions, batch = _setup(spaces.Discrete(3), "tanh", False)
    twin = copy.deepcopy(policy)
    twin_optimizer = FlatAdam(twin.parameters(), lr=1e-3)
    settings = PPOUpdateSettings(num_epochs=3, num_minibatches=4, clip_range=0.2, vf_coef=0.5, ent_coef=0.01,
                                 clip_range_vf=0.2, target_kl=0.1)
    optimizer.param_groups[0]["lr"] = twin_optimizer.param_groups[0]["lr"] = 3e-2  # big steps reach the KL stop

    torch.manual_seed(5)
    ref = ppo_update(batch, lambda i: policy.evaluate(obs[i], actions[i]), optimizer, policy.parameters(), settings)
    torch.manual_seed(5)
    fast = run_epochs(NumpyMinibatchStep(twin, obs, actions, batch, settings), N, twin_optimizer,
                      twin.parameters(), settings)

    assert fast["minibatch_steps"] == ref["minibatch_steps"] and fast["early_stopped"] == ref["early_stopped"]
    assert 1 < ref["minibatch_steps"] < 12 and ref["early_stopped"]
    for name in STAT_NAMES:
        assert fast[name] == pytest.approx(ref[name], rel=1e-4, abs=1e-5), name
    for a, b in zip(policy.parameters(), twin.parameters()):
        np.testing.assert_allclose(b.detach().numpy(), a.detach().numpy(), rtol=1e-4, atol=1e-5)


def test_the_trainer_takes_the_numpy_step_for_mlps_and_autograd_otherwise(tmp_path):
    config = PPOConfig(env_id="CartPole-v1", num_envs=2, num_steps=16, total_steps=32, progress=False,
                       tensorboard=False, eval_episodes=0, run_dir=str(tmp_path / "a"))
    agent = PPO(config)
    assert agent.numpy_update
    stats = agent.train_one_update()
    assert np.isfinite(stats["loss"]) and stats["minibatch_steps"] > 0
    agent.close()

    cpu = torch.device("cpu")
    multi = ActorCritic(OBS, spaces.MultiDiscrete([2, 3]))
    assert not NumpyMinibatchStep.supports(multi, cpu, FlatAdam(multi.parameters(), lr=1e-3))
    mlp = ActorCritic(OBS, spaces.Discrete(2))
    assert not NumpyMinibatchStep.supports(mlp, cpu, torch.optim.Adam(mlp.parameters()))
    assert not NumpyMinibatchStep.supports(mlp, torch.device("meta"), FlatAdam(mlp.parameters(), lr=1e-3))
    # An activation without a NumPy form and derivative (a future addition) falls back to torch.
    mlp.actor_trunk.activation_name = "gelu"
    assert not NumpyMinibatchStep.supports(mlp, cpu, FlatAdam(mlp.parameters(), lr=1e-3))
