"""From scores and log-probs to per-token rewards and advantages, on tensors small enough to check by hand."""

from __future__ import annotations

import pytest
import torch

from ppokit.core.advantages import masked_mean, masked_var
from ppokit.rlhf import trainer as trainer_module
from ppokit.rlhf.advantages import token_advantages
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
        seen.update(advantages=batch["advantages"].clone(), mask=batch["mask"].clone(), settings=settings)
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
