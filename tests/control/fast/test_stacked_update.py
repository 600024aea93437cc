"""Stacked updates (``--seeds --stack-updates``): each seed's part of the batched computation against
that seed's own update, with cases generated from the dataclasses as in ``test_parity``.

Seeds have batches of different sizes (a rollout's reset steps are dropped) and per-seed clip range
and β (schedules and controllers move them apart), so every minibatch is padded and masked. Seed
``k``'s loss, statistics and gradient must be those of the torch reference on its own rows, and
whole epochs (the seeds' own shuffles, clipping, Adam, early stop) must leave each seed's weights,
Adam moments and statistics where its solo fast-path update leaves them, up to float rounding.
"""

from __future__ import annotations

import copy
import typing

import numpy as np
import pytest
import torch

from ppokit.control.fast import support
from ppokit.control.fast.flat_adam import FlatAdam
from ppokit.control.fast.layout import fused_order
from ppokit.control.fast.stacked_epochs import StackedAdam, run_stacked_epochs, stacked_update
from ppokit.control.fast.stacked_update import StackedMinibatchStep
from ppokit.control.fast.update import NumpyMinibatchStep
from ppokit.control.policy.networks import ActorCritic, PolicySpec
from ppokit.core.update import STEP_STAT_NAMES, AutogradStep, NonFiniteError, PPOBatch, PPOUpdateSettings, run_epochs
from tests.control.fast.test_parity import BASE_SETTINGS, BASE_SPEC, CPU, _cases, _spec

#: Rows in each seed's batch: uneven, as reset steps leave them.
SIZES = (96, 83, 90)
#: Per-seed settings (a scheduled or adaptive ε, an adaptive β).
CLIP = (0.2, 0.1, 0.3)
BETA = (0.3, 1.0, 2.0)


def _seed_settings(settings: PPOUpdateSettings, k: int) -> PPOUpdateSettings:
    return PPOUpdateSettings(**{**settings.__dict__, "clip_range": CLIP[k], "kl_coef": BETA[k]})


def _batch(policy: ActorCritic, spec: PolicySpec, n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, *spec.obs_shape, generator=gen)
    if spec.head == "gaussian":
        actions = torch.randn(n, spec.action_dims[0], generator=gen)
    else:
        actions = torch.randint(0, spec.action_dims[0], (n,), generator=gen)
    with torch.no_grad():
        logp, _, values = policy.evaluate(obs, actions)
    batch = PPOBatch(
        logp=logp + 0.4 * torch.randn(n, generator=gen),
        values=values + 0.5 * torch.randn(n, generator=gen),
        advantages=2.0 * torch.randn(n, generator=gen) + 0.5,
        returns=values + torch.randn(n, generator=gen),
    )
    return obs, actions, batch


def _seeds(spec: PolicySpec):
    """Three seeds' policies (each in its FlatAdam) and batches of uneven sizes."""
    policies, optimizers, data = [], [], []
    for k, n in enumerate(SIZES):
        torch.manual_seed(10 + k)
        policy = ActorCritic(spec)
        optimizers.append(FlatAdam(policy.parameters(), lr=(3e-2, 2e-2, 1e-2)[k], layout=fused_order(policy)))
        policies.append(policy)
        data.append(_batch(policy, spec, n, seed=20 + k))
    return policies, optimizers, data


def _splits(settings: PPOUpdateSettings):
    """Each seed's minibatches per epoch, as its own torch.randperm gives them."""
    out = []
    for k, n in enumerate(SIZES):
        gen = torch.Generator().manual_seed(30 + k)
        out.append([[p.numpy() for p in torch.randperm(n, generator=gen).tensor_split(settings.num_minibatches)]
                    for _ in range(settings.num_epochs)])
    return out


def _check_stacked_parity(spec: PolicySpec, settings: PPOUpdateSettings) -> None:
    per_seed = [_seed_settings(settings, k) for k in range(len(SIZES))]
    policies, optimizers, data = _seeds(spec)
    solo_policies = copy.deepcopy(policies)
    solo_optimizers = [FlatAdam(p.parameters(), lr=o.learning_rate, layout=fused_order(p))
                       for p, o in zip(solo_policies, optimizers)]

    # One minibatch of every seed, sizes uneven (padding): loss, KL, statistics and gradient of each
    # against the torch reference on that seed's rows alone.
    adam = StackedAdam(optimizers)
    step = StackedMinibatchStep(policies[0], adam.weights, adam.grads, data, per_seed)
    parts = [np.random.default_rng(k).permutation(n)[:n - 30 - 7 * k] for k, n in enumerate(SIZES)]
    adam.grads.fill(np.nan)  # every entry must be written
    losses = step.forward(parts)
    kls = step.approx_kl()
    step.backward()
    stats = step.stats()
    for k, (policy, optimizer, (obs, actions, batch)) in enumerate(zip(policies, optimizers, data)):
        idx = torch.from_numpy(parts[k])
        ref = AutogradStep(batch, lambda i, p=policy, o=obs, a=actions: p.evaluate(o[i], a[i]), per_seed[k])
        ref_loss = ref.forward(idx)
        ref_kl = ref.approx_kl()
        optimizer.zero_grad()
        ref.backward()
        assert losses[k] == pytest.approx(ref_loss, rel=1e-5, abs=1e-5), k
        assert kls[k] == pytest.approx(ref_kl, rel=1e-5, abs=1e-5), k
        np.testing.assert_allclose(stats[k], ref.stats().numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(adam.grads[k], optimizer.flat_grad.numpy(), rtol=1e-4, atol=1e-5)

    # Whole epochs: each seed's own shuffle, clipping, Adam and early stop, against its solo update.
    splits = _splits(settings)
    got = stacked_update(policies[0], optimizers, data, per_seed, splits)
    for k, (policy, optimizer, (obs, actions, batch)) in enumerate(zip(solo_policies, solo_optimizers, data)):
        want = run_epochs(NumpyMinibatchStep(policy, obs, actions, batch, per_seed[k]), SIZES[k], optimizer,
                          per_seed[k], minibatches=lambda e, k=k: [torch.from_numpy(p) for p in splits[k][e]])
        for name in ("epochs", "early_stopped", "minibatch_steps", "skipped_minibatches"):
            assert got[k][name] == want[name], (k, name)
        for name in (*STEP_STAT_NAMES, "grad_norm"):
            assert got[k][name] == pytest.approx(want[name], rel=1e-4, abs=1e-5, nan_ok=True), (k, name)
        for a, b in zip(policies[k].parameters(), policy.parameters()):
            np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-4, atol=1e-5)
        assert optimizers[k].steps == optimizer.steps
        np.testing.assert_allclose(optimizers[k].exp_avg.numpy(), optimizer.exp_avg.numpy(), rtol=1e-3, atol=1e-6)
        np.testing.assert_allclose(optimizers[k].exp_avg_sq.numpy(), optimizer.exp_avg_sq.numpy(), rtol=1e-3, atol=1e-9)


@pytest.mark.parametrize("change", [c for _, c in _cases(PolicySpec, BASE_SPEC)],
                         ids=[name for name, _ in _cases(PolicySpec, BASE_SPEC)])
def test_every_policy_feature_stacks_like_each_seed_alone_or_is_refused(change):
    spec = _spec(**change)
    settings = PPOUpdateSettings(**BASE_SETTINGS)
    if support.refusal(spec, CPU, settings) is not None:
        return  # the fast path refuses it (test_parity), and so do stacked updates (test_seeds_stacked)
    _check_stacked_parity(spec, settings)


@pytest.mark.parametrize("head", ["categorical", "gaussian"])
@pytest.mark.parametrize("change", [c for _, c in _cases(PPOUpdateSettings, BASE_SETTINGS)],
                         ids=[name for name, _ in _cases(PPOUpdateSettings, BASE_SETTINGS)])
def test_every_update_setting_stacks_like_each_seed_alone_or_is_refused(change, head):
    spec = _spec(head=head)
    settings = PPOUpdateSettings(**{**BASE_SETTINGS, **change})
    if support.refusal(spec, CPU, settings) is not None:
        return
    _check_stacked_parity(spec, settings)


def test_an_early_stop_or_a_skipped_minibatch_is_the_seeds_own():
    """One seed stops early (its KL is far past target_kl from the start) while the others go on; one
    seed's non-finite loss is skipped (skip_nonfinite) or raised naming that seed."""
    spec = _spec()
    settings = PPOUpdateSettings(**{**BASE_SETTINGS, "target_kl": 0.5})
    policies, optimizers, data = _seeds(spec)
    data[1][2].logp.add_(5.0)  # seed 1's old log-probs far from the policy's: KL(old || new) is large at once
    before = [o.flat.clone() for o in optimizers]
    got = stacked_update(policies[0], optimizers, data, [settings] * 3, _splits(settings))
    assert [r["early_stopped"] for r in got] == [0.0, 1.0, 0.0]
    assert got[1]["minibatch_steps"] == 0 and optimizers[1].steps == 0
    assert torch.equal(optimizers[1].flat, before[1])
    assert got[0]["minibatch_steps"] == got[2]["minibatch_steps"] == settings.num_epochs * settings.num_minibatches

    policies, optimizers, data = _seeds(spec)
    data[2][2].advantages[:] = float("inf")
    skipping = PPOUpdateSettings(**{**BASE_SETTINGS, "skip_nonfinite": True})
    got = stacked_update(policies[0], optimizers, data, [skipping] * 3, _splits(skipping))
    steps = skipping.num_epochs * skipping.num_minibatches
    assert [r["skipped_minibatches"] for r in got] == [0.0, 0.0, float(steps)]
    assert [o.steps for o in optimizers] == [steps, steps, 0]

    policies, optimizers, data = _seeds(spec)
    data[2][2].advantages[:] = float("inf")
    plain = PPOUpdateSettings(**BASE_SETTINGS)
    before = [o.flat.clone() for o in optimizers]
    with pytest.raises(NonFiniteError, match="^seed 7: non-finite loss in epoch 1, minibatch 1"):
        stacked_update(policies[0], optimizers, data, [plain] * 3, _splits(plain), labels=["seed 5", "seed 6", "seed 7"])
    assert all(torch.equal(o.flat, b) for o, b in zip(optimizers, before))  # no step was taken


def test_the_seeds_must_share_every_setting_but_clip_range_and_kl_coef():
    spec = _spec()
    policies, optimizers, data = _seeds(spec)
    settings = [PPOUpdateSettings(**BASE_SETTINGS)] * 2 + [PPOUpdateSettings(**{**BASE_SETTINGS, "vf_coef": 0.1})]
    adam = StackedAdam(optimizers)
    with pytest.raises(ValueError, match="'vf_coef' differs"):
        StackedMinibatchStep(policies[0], adam.weights, adam.grads, data, settings)


@pytest.mark.parametrize("fused", [True, False], ids=["fused-kernel", "numpy"])
def test_stacked_adam_is_torch_adam_per_seed(fused):
    """Each seed's row follows torch.optim.Adam with its own learning rate and step count (torch's
    fused kernel where torch has it, else the same rule in NumPy)."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(40, generator=gen)) for _ in range(3)]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    flats = [FlatAdam([p], lr=1e-2 * (k + 1)) for k, p in enumerate(params)]
    refs = [torch.optim.Adam([t], lr=1e-2 * (k + 1)) for k, t in enumerate(twins)]
    grads = [torch.randn(5, 40, generator=gen) for _ in range(3)]
    active: list[typing.Sequence[bool]] = [(True, True, True), (True, False, True), (False, False, True),
                                           (True, True, True), (True, True, False)]
    for t, which in enumerate(active):
        adam = StackedAdam(flats)
        adam.fused = fused and adam.fused
        for k in range(3):
            adam.grads[k] = grads[k][t].numpy()
            if which[k]:
                twins[k].grad = grads[k][t].clone()
                refs[k].step()
        adam.step(np.array(which))
        adam.store()
    for k in range(3):
        np.testing.assert_allclose(params[k].detach().numpy(), twins[k].detach().numpy(), rtol=1e-5, atol=1e-6)
        assert flats[k].steps == sum(w[k] for w in active)


def test_the_epoch_loop_takes_each_seeds_splits():
    """A seed given fewer rows than minibatches has empty ones: skipped for it alone, as run_epochs does."""
    spec = _spec()
    settings = PPOUpdateSettings(**{**BASE_SETTINGS, "num_epochs": 1, "num_minibatches": 4})
    policies, optimizers, data = _seeds(spec)
    splits = _splits(settings)
    splits[0] = [[splits[0][0][0], np.zeros(0, dtype=np.intp), splits[0][0][2], np.zeros(0, dtype=np.intp)]]
    adam = StackedAdam(optimizers)
    step = StackedMinibatchStep(policies[0], adam.weights, adam.grads, data, [settings] * 3)
    got = run_stacked_epochs(step, adam, [settings] * 3, splits)
    assert [r["minibatch_steps"] for r in got] == [2.0, 4.0, 4.0]
    assert [o.steps for o in optimizers] == [2, 4, 4]
