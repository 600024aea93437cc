import math

import pytest
import torch

from ppokit.core.losses import clipped_surrogate_loss, entropy_bonus, kl_penalty_surrogate_loss, value_loss


def _surrogate(ratio, advantage, eps=0.2):
    logp_old = torch.zeros(1)
    logp_new = torch.log(torch.tensor([ratio]))
    loss, frac = clipped_surrogate_loss(logp_new, logp_old, torch.tensor([advantage]), eps)
    return -loss.item(), frac.item()


@pytest.mark.parametrize(
    "ratio, advantage, used_ratio",
    [
        (1.3, 1.0, 1.2),   # A>0: gains beyond 1+ε are clipped away
        (0.7, 1.0, 0.7),   # A>0, ratio fell: the full (pessimistic) term counts
        (0.7, -1.0, 0.8),  # A<0: ratio below 1−ε is clipped to 0.8
        (1.3, -1.0, 1.3),  # A<0, ratio rose: the full penalty counts
        (1.1, 1.0, 1.1),   # inside the trust region nothing is clipped
    ],
)
def test_clipped_objective_textbook_table(ratio, advantage, used_ratio):
    objective, _ = _surrogate(ratio, advantage)
    assert objective == pytest.approx(used_ratio * advantage, rel=1e-6)


def test_clip_gradient_vanishes_only_where_clipped():
    logp_old = torch.zeros(4)
    logp_new = torch.log(torch.tensor([1.3, 0.7, 0.7, 1.3])).requires_grad_()
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss, frac = clipped_surrogate_loss(logp_new, logp_old, adv, 0.2)
    loss.backward()
    grad = logp_new.grad
    assert grad[0] == 0 and grad[2] == 0       # clipped terms carry no gradient
    assert grad[1] != 0 and grad[3] != 0
    assert frac.item() == pytest.approx(1.0)   # all four ratios lie outside [0.8, 1.2]


def test_value_loss_clipping_takes_the_larger_error():
    v_old = torch.tensor([0.0, 0.0])
    v_new = torch.tensor([1.0, 0.1])
    ret = torch.tensor([2.0, 0.1])
    plain = value_loss(v_new, v_old, ret)
    assert plain.item() == pytest.approx(0.5 * (1.0 + 0.0) / 2)
    clipped = value_loss(v_new, v_old, ret, clip_range_vf=0.2)
    # first sample: clipped prediction 0.2 → error 1.8² beats 1² ; second: 0.1 lies inside the clip
    assert clipped.item() == pytest.approx(0.5 * (1.8**2 + 0.0) / 2)


def test_penalty_loss_is_surrogate_minus_beta_kl():
    logp_old = torch.tensor([0.0, 0.0])
    logp_new = torch.log(torch.tensor([1.5, 0.5]))
    adv = torch.tensor([2.0, -1.0])
    beta = 0.3
    loss, kl = kl_penalty_surrogate_loss(logp_new, logp_old, adv, beta)
    r = torch.tensor([1.5, 0.5])
    k3 = (r - 1) - torch.log(r)
    assert loss.item() == pytest.approx(-((r * adv) - beta * k3).mean().item(), rel=1e-6)
    assert kl.item() == pytest.approx(k3.mean().item(), rel=1e-6)


def test_entropy_bonus_respects_mask():
    h = torch.tensor([1.0, 3.0, 100.0])
    assert entropy_bonus(h, torch.tensor([True, True, False])).item() == pytest.approx(2.0)
    assert math.isclose(entropy_bonus(h).item(), 104 / 3, rel_tol=1e-6)
