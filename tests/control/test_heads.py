import torch
from torch.distributions import Categorical, Normal

from ppokit.control.policy.heads import CategoricalHead, GaussianHead, MultiCategoricalHead


def test_categorical_head_matches_torch_distributions():
    torch.manual_seed(0)
    head = CategoricalHead(5, 4)
    feats = torch.randn(32, 5)
    params = head(feats)
    dist = Categorical(logits=head.linear(feats))
    actions = torch.randint(0, 4, (32,))
    logp, ent = head.log_prob_entropy(params, actions)
    torch.testing.assert_close(logp, dist.log_prob(actions))
    torch.testing.assert_close(ent, dist.entropy())
    a, lp = head.sample(params)
    torch.testing.assert_close(lp, dist.log_prob(a))
    mode, _ = head.sample(params, deterministic=True)
    torch.testing.assert_close(mode, dist.probs.argmax(-1))


def test_categorical_sampling_frequencies():
    torch.manual_seed(0)
    log_probs = torch.log(torch.tensor([[0.1, 0.6, 0.3]])).expand(50_000, 3)
    a, _ = CategoricalHead.sample(log_probs)
    freq = torch.bincount(a, minlength=3).float() / a.numel()
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.6, 0.3]), atol=0.01, rtol=0)


def test_gaussian_head_matches_torch_distributions():
    torch.manual_seed(0)
    head = GaussianHead(6, 3, log_std_init=-0.3)
    feats = torch.randn(16, 6)
    mean, log_std = head(feats)
    dist = Normal(mean, log_std.exp())
    actions = torch.randn(16, 3)
    logp, ent = head.log_prob_entropy((mean, log_std), actions)
    torch.testing.assert_close(logp, dist.log_prob(actions).sum(-1))
    torch.testing.assert_close(ent, dist.entropy().sum(-1))
    a, lp = head.sample((mean, log_std))
    torch.testing.assert_close(lp, dist.log_prob(a).sum(-1))
    mode, _ = head.sample((mean, log_std), deterministic=True)
    torch.testing.assert_close(mode, mean)


def test_multidiscrete_head_sums_independent_categoricals():
    torch.manual_seed(0)
    head = MultiCategoricalHead(4, [3, 2])
    feats = torch.randn(8, 4)
    logits = head.linear(feats)
    d0, d1 = Categorical(logits=logits[:, :3]), Categorical(logits=logits[:, 3:])
    actions = torch.stack([torch.randint(0, 3, (8,)), torch.randint(0, 2, (8,))], -1)
    logp, ent = head.log_prob_entropy(head(feats), actions)
    torch.testing.assert_close(logp, d0.log_prob(actions[:, 0]) + d1.log_prob(actions[:, 1]))
    torch.testing.assert_close(ent, d0.entropy() + d1.entropy())
    a, lp = head.sample(head(feats))
    assert a.shape == (8, 2)
    torch.testing.assert_close(lp, d0.log_prob(a[:, 0]) + d1.log_prob(a[:, 1]))
