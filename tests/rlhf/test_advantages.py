"""From scores and log-probs to per-token rewards and advantages, on tensors small enough to check by hand."""

from __future__ import annotations

import pytest
import torch

from ppokit.core.advantages import masked_mean, masked_var
from ppokit.core.losses import clipped_surrogate_loss, reference_kl_loss
from ppokit.core.update import AutogradStep, PPOBatch, PPOUpdateSettings
from ppokit.rlhf.ppo import trainer as trainer_module
from ppokit.rlhf.ppo.advantages import KLPlacement, critic_free_advantages, token_advantages, uses_critic
from tests.rlhf.helpers import PROMPTS

# Two completions: the first has 3 valid tokens, the second 2 (then padding).
MASK = torch.tensor([[True, True, True], [True, True, False]])
SCORES = torch.tensor([1.0, -2.0])
LOGP = torch.tensor([[-1.0, -0.5, -2.0], [-0.3, -1.2, -9.0]])
REF_LOGP = torch.tensor([[-1.5, -0.5, -1.0], [-0.3, -0.2, -7.0]])
VALUES = torch.tensor([[0.2, 0.4, 0.1], [-0.5, 0.3, 5.0]])


def _by_hand(gamma: float, lam: float, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards r_t = -β (logπ - logπ_ref) + s at the last token; GAE within each completion."""
    rewards = torch.zeros(2, 3)
    advantages = torch.zeros(2, 3)
    for b, length in enumerate((3, 2)):
        kl = LOGP[b, :length] - REF_LOGP[b, :length]
        r = -beta * kl
        r[length - 1] += SCORES[b]
        rewards[b, :length] = r
        running = 0.0
        for t in reversed(range(length)):
            v_next = VALUES[b, t + 1] if t + 1 < length else 0.0
            delta = r[t] + gamma * v_next - VALUES[b, t]
            running = delta + gamma * lam * running
            advantages[b, t] = running
    return rewards, advantages


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5)])
def test_rewards_and_advantages_match_the_hand_computation(gamma, lam):
    out = token_advantages(SCORES, LOGP, REF_LOGP, VALUES, MASK, kl_coef=0.1, kl_estimator="k1", gamma=gamma,
                           gae_lambda=lam, whiten=False)
    rewards, advantages = _by_hand(gamma, lam, 0.1)
    torch.testing.assert_close(out.rewards, rewards)
    torch.testing.assert_close(out.advantages, advantages)
    torch.testing.assert_close(out.returns, advantages + VALUES * MASK)
    # Padding gets nothing: its value (5.0) never leaks into a reward, an advantage or a return.
    assert out.values[1, 2] == 0 and out.advantages[1, 2] == 0 and out.returns[1, 2] == 0
    torch.testing.assert_close(out.kl, (LOGP - REF_LOGP) * MASK)


def test_whitening_uses_the_valid_tokens_of_the_whole_batch():
    raw = token_advantages(SCORES, LOGP, REF_LOGP, VALUES, MASK, kl_coef=0.1, kl_estimator="k1", gamma=1.0,
                           gae_lambda=0.95, whiten=False)
    white = token_advantages(SCORES, LOGP, REF_LOGP, VALUES, MASK, kl_coef=0.1, kl_estimator="k1", gamma=1.0,
                             gae_lambda=0.95, whiten=True)
    assert float(masked_mean(white.advantages, MASK)) == pytest.approx(0.0, abs=1e-6)
    assert float(masked_var(white.advantages, MASK)) == pytest.approx(1.0, abs=1e-5)
    assert white.advantages[1, 2] == 0
    valid = raw.advantages[MASK]
    torch.testing.assert_close(white.advantages[MASK], (valid - valid.mean()) / valid.std())
    # The returns are the critic's targets: whitening the advantages must not move them.
    torch.testing.assert_close(white.returns, raw.returns)


def test_k3_penalty_is_never_a_bonus():
    out = token_advantages(torch.zeros(2), LOGP, REF_LOGP, torch.zeros(2, 3), MASK, kl_coef=0.5, kl_estimator="k3",
                           gamma=1.0, gae_lambda=1.0, whiten=False)
    assert (out.kl >= 0).all() and (out.rewards <= 0).all()


@pytest.mark.parametrize("whiten", [True, False])
def test_the_trainer_updates_on_the_advantages_its_config_asks_for(whiten, monkeypatch, tmp_path, tiny_lm):
    """The update sees whitened advantages exactly when whiten_advantages is set."""
    from ppokit.rlhf.config import RLHFConfig

    seen = {}
    real = trainer_module.ppo_update

    def spy(batch, evaluate, optimizer, settings):
        seen.update(advantages=batch.advantages.clone(), mask=batch.mask.clone(), settings=settings)
        return real(batch, evaluate, optimizer, settings)

    monkeypatch.setattr(trainer_module, "ppo_update", spy)
    config = RLHFConfig(policy=tiny_lm, rewards=["tests.rlhf.helpers:pleasant_minus_unpleasant"],
                        total_updates=1, batch_size=8, max_new_tokens=5, whiten_advantages=whiten, progress=False,
                        tensorboard=False, device="cpu", sample_every=0)
    trainer = trainer_module.RLHFTrainer(config, prompts=PROMPTS, run_dir=tmp_path / "run")
    trainer.update()
    mean = float(masked_mean(seen["advantages"], seen["mask"]))
    var = float(masked_var(seen["advantages"], seen["mask"]))
    assert seen["settings"].whiten_advantages is False  # whitened once per batch, never again per minibatch
    if whiten:
        assert mean == pytest.approx(0.0, abs=1e-5) and var == pytest.approx(1.0, abs=1e-4)
    else:
        assert abs(mean) > 1e-3 or abs(var - 1.0) > 1e-3


# ---- critic-free advantages (grpo, rloo, reinforce_pp) and the KL loss term ---------------------------------

# Two groups of G = 3 completions of one prompt each; ragged lengths, two of them a single token.
G3_SCORES = torch.tensor([1.0, 0.0, 2.0, -1.0, -1.0, 3.0])
G3_LENGTHS = (4, 1, 3, 2, 4, 1)
G3_MASK = torch.tensor([[t < n for t in range(4)] for n in G3_LENGTHS])
G3_LOGP = torch.tensor([[-1.0, -0.5, -2.0, -0.1], [-0.3, -9.0, -9.0, -9.0], [-0.7, -1.1, -0.2, -9.0],
                        [-2.0, -0.4, -9.0, -9.0], [-0.6, -0.6, -0.9, -1.3], [-0.05, -9.0, -9.0, -9.0]])
G3_REF = torch.tensor([[-1.5, -0.5, -1.0, -0.3], [-0.1, -1.0, -1.0, -1.0], [-0.7, -0.6, -0.9, -1.0],
                       [-1.0, -0.9, -1.0, -1.0], [-0.6, -0.2, -1.9, -1.0], [-0.25, -1.0, -1.0, -1.0]])


def _free(method, kl_coef=0.0, gamma=1.0, scores=G3_SCORES, logp=G3_LOGP, ref=G3_REF, mask=G3_MASK, group=3):
    return critic_free_advantages(method, scores, logp, ref, mask, kl_coef=kl_coef, kl_estimator="k1",
                                  group_size=group, gamma=gamma)


def _sequence_rewards(beta, scores=G3_SCORES, logp=G3_LOGP, ref=G3_REF, lengths=G3_LENGTHS):
    """R_i = s_i − β Σ_t (log π − log π_ref) over completion i's valid tokens (k1)."""
    return [float(scores[i]) - beta * sum(float(logp[i, t] - ref[i, t]) for t in range(n))
            for i, n in enumerate(lengths)]


def _broadcast(per_completion, lengths=G3_LENGTHS, width=4):
    return torch.tensor([[per_completion[i] if t < n else 0.0 for t in range(width)] for i, n in enumerate(lengths)])


def test_grpo_normalises_each_prompts_scores_within_its_group():
    out = _free("grpo")
    # Group 1: s = (1, 0, 2): mean 1, sample std 1.  Group 2: s = (−1, −1, 3): mean 1/3, std 4/√3.
    std2 = 4.0 / 3.0 ** 0.5
    expected = [0.0, -1.0 / (1.0 + 1e-4), 1.0 / (1.0 + 1e-4),
                (-4 / 3) / (std2 + 1e-4), (-4 / 3) / (std2 + 1e-4), (8 / 3) / (std2 + 1e-4)]
    torch.testing.assert_close(out.advantages, _broadcast(expected))
    assert (out.values == 0).all()  # no critic
    torch.testing.assert_close(out.returns, _broadcast(G3_SCORES.tolist()))


def test_grpo_with_the_kl_in_the_reward_normalises_the_penalised_sequence_rewards():
    import statistics

    rewards = _sequence_rewards(0.1)
    expected = []
    for g in range(2):
        group = rewards[3 * g:3 * g + 3]
        mean, std = statistics.fmean(group), statistics.stdev(group)
        expected += [(r - mean) / (std + 1e-4) for r in group]
    out = _free("grpo", kl_coef=0.1)
    torch.testing.assert_close(out.advantages, _broadcast(expected))
    torch.testing.assert_close(out.kl, (G3_LOGP - G3_REF) * G3_MASK)


def test_a_group_of_equal_scores_carries_no_signal():
    out = _free("grpo", scores=torch.tensor([2.0, 2.0, 2.0, 0.0, 1.0, 2.0]))
    assert (out.advantages[:3] == 0).all() and (out.advantages[3:] != 0).any()


def test_rloo_subtracts_the_mean_of_the_other_completions():
    out = _free("rloo")
    # Group 1: 1 − (0+2)/2, 0 − (1+2)/2, 2 − (1+0)/2.  Group 2: −1 − (−1+3)/2 twice, 3 − (−1−1)/2.
    torch.testing.assert_close(out.advantages, _broadcast([0.0, -1.5, 1.5, -2.0, -2.0, 4.0]))
    beta = 0.05
    rewards = _sequence_rewards(beta)
    expected = [rewards[i] - sum(rewards[j] for j in range(3 * (i // 3), 3 * (i // 3) + 3) if j != i) / 2
                for i in range(6)]
    torch.testing.assert_close(_free("rloo", kl_coef=beta).advantages, _broadcast(expected))


def test_groups_of_four_by_the_formulas():
    """G = 4: both group estimators against loops over the groups, on random ragged completions."""
    gen = torch.Generator().manual_seed(3)
    lengths = (5, 1, 3, 2, 4, 5, 1, 2)
    mask = torch.tensor([[t < n for t in range(5)] for n in lengths])
    logp, ref = -torch.rand(8, 5, generator=gen) * 2, -torch.rand(8, 5, generator=gen) * 2
    scores = torch.randn(8, generator=gen)
    rewards = _sequence_rewards(0.2, scores, logp, ref, lengths)
    grpo, rloo = [], []
    for i in range(8):
        group = rewards[4 * (i // 4):4 * (i // 4) + 4]
        mean = sum(group) / 4
        std = (sum((r - mean) ** 2 for r in group) / 3) ** 0.5
        grpo.append((rewards[i] - mean) / (std + 1e-4))
        rloo.append(rewards[i] - (sum(group) - rewards[i]) / 3)
    for method, expected in (("grpo", grpo), ("rloo", rloo)):
        out = _free(method, kl_coef=0.2, scores=scores, logp=logp, ref=ref, mask=mask, group=4)
        torch.testing.assert_close(out.advantages, _broadcast(expected, lengths, 5))


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_reinforce_pp_whitens_discounted_token_returns_over_the_batch(gamma):
    beta = 0.1
    returns = torch.zeros(6, 4)
    for i, n in enumerate(G3_LENGTHS):
        r = [-beta * float(G3_LOGP[i, t] - G3_REF[i, t]) for t in range(n)]
        r[n - 1] += float(G3_SCORES[i])
        for t in range(n):
            returns[i, t] = sum(gamma ** (u - t) * r[u] for u in range(t, n))
    valid = returns[G3_MASK]
    mean, var = valid.mean(), valid.var()  # Bessel's correction, as masked_whiten
    expected = (returns - mean) / torch.sqrt(var + 1e-8) * G3_MASK
    out = _free("reinforce_pp", kl_coef=beta, gamma=gamma)
    torch.testing.assert_close(out.returns, returns)
    torch.testing.assert_close(out.advantages, expected)
    if gamma < 1:  # discounting: the first token of completion 0 sees its score at 0.9³
        assert out.returns[0, 0] == pytest.approx(sum(0.9 ** u * float(-beta * (G3_LOGP[0, u] - G3_REF[0, u]))
                                                      for u in range(4)) + 0.9 ** 3 * 1.0)


def test_critic_free_estimators_refuse_ragged_groups_and_unknown_methods():
    with pytest.raises(ValueError, match="group_size = 4"):
        _free("grpo", group=4)
    with pytest.raises(ValueError, match="method must be one of"):
        _free("gae")


def test_where_the_kl_goes_and_who_needs_a_critic():
    assert KLPlacement.of("grpo", "auto") == KLPlacement(in_loss=True, estimator="k3")
    assert [KLPlacement.of(m, "auto", "k3").in_loss for m in ("gae", "rloo", "reinforce_pp")] == [False] * 3
    assert KLPlacement.of("grpo", "reward", "k1") == KLPlacement(in_loss=False, estimator="k1")
    assert KLPlacement.of("rloo", "loss").in_loss
    placement = KLPlacement.of("grpo", "auto")
    assert (placement.reward_beta(0.1), placement.loss_beta(0.1)) == (0.0, 0.1)
    assert uses_critic("gae") and not any(uses_critic(m) for m in ("grpo", "rloo", "reinforce_pp"))


def test_the_kl_loss_term_value_and_gradient():
    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    ref = torch.tensor([[-1.0, -1.0, -3.0]])
    mask = torch.tensor([[True, True, False]])
    loss = reference_kl_loss(logp, ref, mask)
    # Token 1 agrees with the reference (0); token 2: ρ = e¹, k3 = e − 1 − 1; padding counts for nothing.
    e = torch.e
    assert float(loss.detach()) == pytest.approx((e - 2.0) / 2)
    loss.backward()
    # ∂/∂log π of (ρ − log ρ − 1)/n with ρ = π_ref/π: (1 − ρ)/n.
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, (1.0 - e) / 2, 0.0]]))


@pytest.mark.parametrize("accumulation", [1, 2])
def test_the_update_folds_the_kl_term_into_the_total_and_fits_no_values_without_returns(accumulation):
    """No ``returns`` in the batch: value loss 0; ``ref_kl_coef``: total = L^CLIP + β·L^KL, same gradient
    whether the minibatch is one piece or two micro-batches."""
    mask = G3_MASK
    logp_old = G3_LOGP.clone()
    advantages = _free("grpo").advantages
    batch = PPOBatch(logp=logp_old, advantages=advantages, mask=mask, ref_logp=G3_REF)
    settings = PPOUpdateSettings(num_epochs=1, num_minibatches=1, clip_range=0.2, vf_coef=0.5, ent_coef=0.0,
                                 whiten_advantages=False, ref_kl_coef=0.3, gradient_accumulation_steps=accumulation)
    theta = torch.nn.Parameter(logp_old + 0.15 * torch.sin(torch.arange(24.0)).view(6, 4))

    def evaluate(rows):
        return theta[rows], torch.zeros(len(rows), 4), torch.full((len(rows), 4), 7.0)  # values must be ignored

    step = AutogradStep(batch, evaluate, settings)
    idx = torch.arange(6)
    total = step.forward(idx)
    step.backward()
    surrogate, _ = clipped_surrogate_loss(theta, logp_old, advantages, 0.2, mask)
    expected = surrogate + 0.3 * reference_kl_loss(theta, G3_REF, mask)
    assert total == pytest.approx(float(expected.detach()), rel=1e-5)
    assert float(step.stats()[1]) == 0.0  # value loss
    grad = theta.grad.clone()
    theta.grad = None
    expected.backward()
    torch.testing.assert_close(grad, theta.grad)
