"""The fast path against the torch reference, with cases generated from the dataclasses it must honour.

Every field of :class:`PolicySpec` and :class:`PPOUpdateSettings` gets values from its type (bools
and ``Literal`` choices enumerate themselves; other types take the samples in ``SAMPLES``). For each
value, either the fast path implements it and must match the reference (acting, the minibatch
gradient, whole epochs), or it must refuse it. A field added to either dataclass fails here until it
has samples and the fast path's allow-list declares it.
"""

from __future__ import annotations

import copy
import dataclasses
import typing

import numpy as np
import pytest
import torch

from ppokit.configuration import field_types, literal_choices
from ppokit.control.fast import support
from ppokit.control.fast.flat_adam import FlatAdam
from ppokit.control.fast.layout import fused_order
from ppokit.control.fast.policy import NumpyPolicy
from ppokit.control.fast.update import NumpyMinibatchStep
from ppokit.control.policy.networks import ActorCritic, PolicySpec
from ppokit.core.update import STEP_STAT_NAMES, AutogradStep, PPOBatch, PPOUpdateSettings, ppo_update, run_epochs

CPU = torch.device("cpu")
N = 96

#: Values to try for fields whose type does not enumerate them.
SAMPLES: dict[str, list[typing.Any]] = {
    # PolicySpec
    "obs_shape": [(3, 2), (5,)],  # rank 2: the flattening is exercised too
    "hidden_sizes": [(16, 8), (12,)],
    "action_dims": [None],  # follows the head (see _spec)
    "action_parts": [()],  # follows the head (see _spec)
    "critic_obs_shape": [(), (5,)],
    "recurrent_size": [64],
    "log_std_init": [-0.3, 0.5],
    "obs_parts": [(), (("image", 6, (1, 2, 3)),)],  # images inside a Dict: refused
    "image_scale": [1 / 255, 0.1],  # read by the CNN only
    # PPOUpdateSettings
    "num_epochs": [3, 1],
    "num_minibatches": [4, 1],
    "clip_range": [0.2, 0.05],
    "vf_coef": [0.7, 0.0],
    "ent_coef": [0.05, 0.0],
    "max_grad_norm": [0.5, None, 1e-3],
    "clip_range_vf": [None, 0.2],
    "target_kl": [None, 0.1],  # the perturbed old log-probs start near KL 0.08: it stops after some steps
    "kl_coef": [0.3, 2.0],
    "ref_kl_coef": [0.0, 0.1],
    "gradient_accumulation_steps": [1, 2],
}

BASE_SPEC = dict(obs_shape=(3, 2), encoder="mlp", hidden_sizes=(16, 8), activation="tanh", shared_trunk=False,
                 head="categorical", action_dims=(3,), ortho_init=False, log_std_init=-0.3)
BASE_SETTINGS = dict(num_epochs=3, num_minibatches=4, clip_range=0.2, vf_coef=0.7, ent_coef=0.05, max_grad_norm=0.5,
                     clip_range_vf=0.2, whiten_advantages=True, target_kl=None, loss="clip", kl_coef=0.3,
                     skip_nonfinite=False)
ACTION_DIMS = {"categorical": (3,), "multi_categorical": (2, 3), "gaussian": (2,), "mixed": (3,)}
ACTION_PARTS = {"mixed": (("categorical", (2,)), ("gaussian", (2,)))}


def values_of(cls: type, name: str) -> list[typing.Any]:
    tp = field_types(cls)[name]
    choices = literal_choices(tp)
    if choices:
        return list(choices)
    if tp is bool:
        return [False, True]
    if name in SAMPLES:
        return SAMPLES[name]
    pytest.fail(f"{cls.__name__}.{name} is new: give it sample values in SAMPLES (and declare it in "
                "ppokit.control.fast.support)")


def _spec(**changes: typing.Any) -> PolicySpec:
    values = {**BASE_SPEC, **changes}
    values["action_dims"] = ACTION_DIMS[values["head"]]
    values["action_parts"] = ACTION_PARTS.get(values["head"], ())
    return PolicySpec(**values)


def _cases(cls: type, base: dict[str, typing.Any]) -> list[tuple[str, dict[str, typing.Any]]]:
    """The base, and every field's every value changed one at a time."""
    cases = [("base", {})]
    for field in dataclasses.fields(cls):
        for value in values_of(cls, field.name):
            if value != base.get(field.name):
                cases.append((f"{field.name}={value!r}", {field.name: value}))
    return cases


def test_the_allow_list_declares_every_field():
    """A new field of either dataclass must be declared: implemented (with samples here) or refused."""
    assert set(support.POLICY) == {f.name for f in dataclasses.fields(PolicySpec)}
    assert set(support.SETTINGS) == {f.name for f in dataclasses.fields(PPOUpdateSettings)}
    for cls in (PolicySpec, PPOUpdateSettings):
        for field in dataclasses.fields(cls):
            assert values_of(cls, field.name)


def _batch(policy: ActorCritic, spec: PolicySpec):
    gen = torch.Generator().manual_seed(1)
    obs = torch.randn(N, *spec.obs_shape, generator=gen)
    if spec.head == "gaussian":
        actions = torch.randn(N, spec.action_dims[0], generator=gen)
    else:
        actions = torch.stack([torch.randint(0, n, (N,), generator=gen) for n in spec.action_dims], -1).squeeze(-1)
    with torch.no_grad():
        logp, _, values = policy.evaluate(obs, actions)
    # Old log-probs and values off by enough that both clips are active on some rows.
    batch = PPOBatch(
        logp=logp + 0.4 * torch.randn(N, generator=gen),
        values=values + 0.5 * torch.randn(N, generator=gen),
        advantages=2.0 * torch.randn(N, generator=gen) + 0.5,
        returns=values + torch.randn(N, generator=gen),
    )
    return obs, actions, batch


def _minibatch(step, optimizer: FlatAdam, idx: torch.Tensor):
    loss = step.forward(idx)
    kl3 = step.approx_kl()
    if isinstance(step, NumpyMinibatchStep):
        optimizer.flat_grad.fill_(float("nan"))  # it overwrites the gradients: an entry left unwritten shows
    else:
        optimizer.zero_grad()
    step.backward()
    return kl3, loss, optimizer.flat_grad.clone(), np.asarray(step.stats(), dtype=np.float64)


def _check_update_parity(spec: PolicySpec, settings: PPOUpdateSettings) -> None:
    torch.manual_seed(0)
    policy = ActorCritic(spec)
    twin = copy.deepcopy(policy)
    optimizer = FlatAdam(policy.parameters(), lr=3e-2, layout=fused_order(policy))
    twin_optimizer = FlatAdam(twin.parameters(), lr=3e-2, layout=fused_order(twin))
    obs, actions, batch = _batch(policy, spec)

    # One minibatch: loss, KL, statistics and gradient.
    idx = torch.randperm(N, generator=torch.Generator().manual_seed(2))[:64]
    reference = AutogradStep(batch, lambda i: policy.evaluate(obs[i], actions[i]), settings)
    ref_kl3, ref_loss, ref_grad, ref_stats = _minibatch(reference, optimizer, idx)
    fast = NumpyMinibatchStep(policy, obs, actions, batch, settings)
    kl3, loss, grad, stats = _minibatch(fast, optimizer, idx)
    assert loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
    assert kl3 == pytest.approx(ref_kl3, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(stats, ref_stats, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad.numpy(), ref_grad.numpy(), rtol=1e-4, atol=1e-6)

    # Whole epochs: the same shuffles, clipping, steps and early stop; the weights agree after.
    optimizer.zero_grad()
    torch.manual_seed(5)
    ref = ppo_update(batch, lambda i: policy.evaluate(obs[i], actions[i]), optimizer, settings)
    torch.manual_seed(5)
    got = run_epochs(NumpyMinibatchStep(twin, obs, actions, batch, settings), N, twin_optimizer, settings)
    assert got["minibatch_steps"] == ref["minibatch_steps"] and got["early_stopped"] == ref["early_stopped"]
    for name in (*STEP_STAT_NAMES, "grad_norm"):
        assert got[name] == pytest.approx(ref[name], rel=1e-4, abs=1e-5, nan_ok=True), name
    for a, b in zip(policy.parameters(), twin.parameters()):
        np.testing.assert_allclose(b.detach().numpy(), a.detach().numpy(), rtol=1e-4, atol=1e-5)


def _check_acting_parity(spec: PolicySpec) -> None:
    torch.manual_seed(0)
    policy = ActorCritic(spec)
    fast = NumpyPolicy(policy)
    obs = np.random.default_rng(1).normal(size=(64, *spec.obs_shape)).astype(np.float32)
    actions, logp, values = fast.act(obs, np.random.default_rng(2))
    with torch.no_grad():
        ref_logp, _, ref_values = policy.evaluate(torch.from_numpy(obs), torch.from_numpy(actions))
        mode = policy.act(torch.from_numpy(obs), deterministic=True)[0].numpy()
    np.testing.assert_allclose(logp, ref_logp.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(values, ref_values.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast.value(obs), ref_values.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast.action(obs, np.random.default_rng(3), deterministic=True), mode, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("change", [c for _, c in _cases(PolicySpec, BASE_SPEC)],
                         ids=[name for name, _ in _cases(PolicySpec, BASE_SPEC)])
def test_every_policy_feature_matches_the_reference_or_is_refused(change):
    spec = _spec(**change)
    settings = PPOUpdateSettings(**BASE_SETTINGS)
    why = support.refusal(spec, CPU, settings)
    if why is not None:
        (field,) = change  # only a changed field can be refused: the base is implemented
        assert field in why, why
        return
    _check_acting_parity(spec)
    _check_update_parity(spec, settings)


@pytest.mark.parametrize("head", ["categorical", "gaussian"])
@pytest.mark.parametrize("change", [c for _, c in _cases(PPOUpdateSettings, BASE_SETTINGS)],
                         ids=[name for name, _ in _cases(PPOUpdateSettings, BASE_SETTINGS)])
def test_every_update_setting_matches_the_reference_or_is_refused(change, head):
    spec = _spec(head=head)
    settings = PPOUpdateSettings(**{**BASE_SETTINGS, **change})
    why = support.refusal(spec, CPU, settings)
    if why is not None:
        (field,) = change
        assert field in why, why
        return
    _check_update_parity(spec, settings)


@pytest.mark.parametrize("activation", ["tanh", "relu", "elu"])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("head", ["categorical", "gaussian"])
@pytest.mark.parametrize("loss", ["clip", "penalty"])
def test_feature_combinations_match_the_reference(activation, shared, head, loss):
    """Features interact (a shared trunk adds both heads' gradients): the main combinations in full."""
    spec = _spec(activation=activation, shared_trunk=shared, head=head)
    settings = PPOUpdateSettings(**{**BASE_SETTINGS, "loss": loss})
    assert support.refusal(spec, CPU, settings) is None
    _check_acting_parity(spec)
    _check_update_parity(spec, settings)
