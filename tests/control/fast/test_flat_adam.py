"""FlatAdam: the control trainer's optimiser must take the same steps as torch's Adam."""

from __future__ import annotations

import pytest
import torch

from ppokit.control.fast.flat_adam import FlatAdam


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def _loss(net: torch.nn.Module, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(step)
    x = torch.randn(32, 5, generator=g)
    return net(x).square().mean() * (1 + step)


def test_flat_adam_takes_torch_adams_steps_and_clips_like_clip_grad_norm():
    ours, ref = _net(0), _net(0)
    flat = FlatAdam(ours.parameters(), lr=3e-3, eps=1e-5)
    torch_adam = torch.optim.Adam(ref.parameters(), lr=3e-3, eps=1e-5)
    for step in range(25):
        lr = 3e-3 * (1 - step / 25)
        flat.set_learning_rate(lr)
        torch_adam.param_groups[0]["lr"] = lr
        flat.zero_grad()
        _loss(ours, step).backward()
        norm = flat.clip_grad_norm(0.5)
        flat.step()
        torch_adam.zero_grad()
        _loss(ref, step).backward()
        ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
        torch_adam.step()
        assert float(norm) == pytest.approx(float(ref_norm), rel=1e-5)
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # The parameters really are views of the flat buffer, so the step moved them.
    assert all(p.data_ptr() >= flat.flat.data_ptr() for p in ours.parameters())
    assert flat.params_finite()


def test_flat_adam_state_round_trip_and_torch_adam_state():
    ref = _net(1)
    torch_adam = torch.optim.Adam(ref.parameters(), lr=1e-3)
    for step in range(3):
        torch_adam.zero_grad()
        _loss(ref, step).backward()
        torch_adam.step()
    # A checkpoint written with torch's Adam loads into FlatAdam and continues identically.
    ours = _net(1)
    ours.load_state_dict(ref.state_dict())
    flat = FlatAdam(ours.parameters(), lr=5.0)
    flat.load_state_dict(torch_adam.state_dict())
    assert flat.param_groups[0]["lr"] == 1e-3 and flat.steps == 3
    for net, opt in ((ours, flat), (ref, torch_adam)):
        opt.zero_grad()
        _loss(net, 3).backward()
        opt.step()
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # Our own format round-trips exactly.
    again = _net(2)
    copy = FlatAdam(again.parameters(), lr=1.0)
    copy.load_state_dict(flat.state_dict())
    assert torch.equal(copy.exp_avg, flat.exp_avg) and copy.steps == flat.steps
    with pytest.raises(ValueError, match="parameters"):
        FlatAdam(torch.nn.Linear(2, 2).parameters(), lr=1.0).load_state_dict(flat.state_dict())


def test_flat_adam_refuses_mixed_dtypes():
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))]
    with pytest.raises(ValueError, match="dtype"):
        FlatAdam(params, lr=1.0)
