import pytest
import torch
from torch.distributions import Categorical, Normal, kl_divergence

from ppokit.core.kl import AdaptiveClipController, AdaptiveKLController, kl_k1, kl_k2, kl_k3


def _estimates(q, p, n=400_000):
    x = q.sample((n,))
    log_ratio = p.log_prob(x) - q.log_prob(x)
    return kl_k1(log_ratio), kl_k2(log_ratio), kl_k3(log_ratio)


@pytest.mark.parametrize(
    "q, p",
    [
        (Normal(torch.tensor(0.0), torch.tensor(1.0)), Normal(torch.tensor(0.1), torch.tensor(1.0))),
        (Categorical(probs=torch.tensor([0.5, 0.3, 0.2])), Categorical(probs=torch.tensor([0.4, 0.4, 0.2]))),
    ],
)
def test_estimators_match_exact_kl(q, p):
    torch.manual_seed(0)
    exact = kl_divergence(q, p).item()
    k1, k2, k3 = _estimates(q, p)
    assert k1.mean().item() == pytest.approx(exact, rel=0.1)  # unbiased but noisy
    assert k3.mean().item() == pytest.approx(exact, rel=0.03)  # unbiased and low variance
    assert k2.mean().item() == pytest.approx(exact, rel=0.1)   # biased, but close for nearby distributions
    assert (k3 >= 0).all()
    assert k3.var() < k1.var()


def test_adaptive_beta_follows_the_paper_rule():
    ctl = AdaptiveKLController(init_beta=1.0, target=0.01)
    assert ctl.update(0.01 / 1.5 - 1e-6) == pytest.approx(0.5)  # KL well under target: halve
    assert ctl.update(0.01) == pytest.approx(0.5)               # inside the band: unchanged
    assert ctl.update(0.0151) == pytest.approx(1.0)             # over 1.5 × target: double
    assert ctl.update(0.05) == pytest.approx(2.0)
    assert ctl.update(float("nan")) == pytest.approx(2.0)       # no information: unchanged
    state = ctl.state_dict()
    other = AdaptiveKLController(1.0, 0.01)
    other.load_state_dict(state)
    assert other.beta == 2.0


def test_adaptive_clip_shrinks_when_kl_runs_over_and_grows_when_under():
    ctl = AdaptiveClipController(init_clip=0.2, target=0.01, factor=1.5, min_clip=0.05, max_clip=0.3)
    assert ctl.update(0.1) == pytest.approx(0.2 / 1.5)
    assert ctl.update(0.001) == pytest.approx(0.2)
    assert ctl.update(0.001) == pytest.approx(0.3)  # clamped at max
    for _ in range(10):
        ctl.update(1.0)
    assert ctl.clip_range == pytest.approx(0.05)    # clamped at min
