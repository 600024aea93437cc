import numpy as np
import pytest
import torch

from ppokit.core.advantages import discounted_returns, gae, masked_mean, masked_var, masked_whiten


def reference_gae(rewards, values, terminated, truncated, final_values, last_value, gamma, lam):
    """A plain per-env loop straight from the definitions, independent of ppokit's formulation.

    final_values[t] is V(final observation) for steps where the episode was truncated.
    """
    T = len(rewards)
    adv = np.zeros(T)
    for t in range(T):
        # sum_{l>=0} (γλ)^l δ_{t+l}, stopping at the end of the episode
        total, factor = 0.0, 1.0
        for k in range(t, T):
            if terminated[k]:
                v_next = 0.0
            elif truncated[k]:
                v_next = final_values[k]
            elif k + 1 < T:
                v_next = values[k + 1]
            else:
                v_next = last_value
            delta = rewards[k] + gamma * v_next - values[k]
            total += factor * delta
            if terminated[k] or truncated[k]:
                break
            factor *= gamma * lam
        adv[t] = total
    return adv


@pytest.mark.parametrize("recursion", [None, "numpy", "torch"])
def test_gae_with_termination_and_truncation_mid_rollout(recursion):
    """Both backward recursions (NumPy views on a CPU; torch, RLHF's path on a GPU) against the reference."""
    gamma, lam = 0.9, 0.8
    rewards = np.array([1.0, 0.5, 2.0, -1.0, 0.3, 1.5, 0.7, 0.2])
    values = np.array([0.4, 0.6, -0.2, 1.1, 0.0, 0.9, 0.5, -0.3])
    terminated = np.array([0, 0, 1, 0, 0, 0, 0, 0], dtype=bool)
    truncated = np.array([0, 0, 0, 0, 0, 1, 0, 0], dtype=bool)
    final_values = np.zeros(8)
    final_values[5] = 2.5  # V(final observation) at the time limit
    last_value = 0.8

    expected = reference_gae(rewards, values, terminated, truncated, final_values, last_value, gamma, lam)

    following = np.append(values[1:], last_value)
    next_values = np.where(terminated, 0.0, np.where(truncated, final_values, following))
    t = lambda a: torch.tensor(a, dtype=torch.float64).unsqueeze(1)  # noqa: E731  [T, 1 env]
    adv, ret = gae(t(rewards), t(values), t(next_values), torch.tensor(terminated | truncated).unsqueeze(1), gamma, lam,
                   recursion=recursion)
    np.testing.assert_allclose(adv.squeeze(1).numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(ret.squeeze(1).numpy(), expected + values, rtol=1e-12)
    # Truncation bootstraps, termination does not: step 5's advantage uses V(final) = 2.5.
    assert adv[5, 0] == pytest.approx(1.5 + gamma * 2.5 - 0.9)
    assert adv[2, 0] == pytest.approx(2.0 - (-0.2))


def test_gae_is_independent_across_envs_and_lambda_one_matches_returns():
    torch.manual_seed(0)
    T, N, gamma = 12, 3, 0.97
    rewards = torch.randn(T, N, dtype=torch.float64)
    values = torch.randn(T, N, dtype=torch.float64)
    ends = torch.rand(T, N) < 0.2
    next_values = torch.where(ends, torch.zeros_like(values), torch.cat([values[1:], torch.randn(1, N, dtype=torch.float64)]))
    adv, ret = gae(rewards, values, next_values, ends, gamma, 1.0)
    np.testing.assert_allclose(ret.numpy(), discounted_returns(rewards, next_values, ends, gamma).numpy(), rtol=1e-10)
    single, _ = gae(rewards[:, 1:2], values[:, 1:2], next_values[:, 1:2], ends[:, 1:2], gamma, 1.0)
    np.testing.assert_allclose(single.numpy(), adv[:, 1:2].numpy())


def test_gae_recursions_agree_on_transposed_batches_and_keep_the_graph():
    """RLHF calls gae on [T, B] views of [B, T] tensors; the torch recursion also differentiates."""
    torch.manual_seed(1)
    rewards, values = torch.randn(5, 7), torch.randn(5, 7)
    next_values = torch.cat([values[:, 1:], torch.zeros(5, 1)], 1)
    ends = torch.zeros(5, 7, dtype=torch.bool)
    ends[:, -1] = True
    ends[2, 3] = True
    a_np, r_np = gae(rewards.T, values.T, next_values.T, ends.T, 0.99, 0.9, recursion="numpy")
    a_t, r_t = gae(rewards.T, values.T, next_values.T, ends.T, 0.99, 0.9, recursion="torch")
    # The same bits in the same memory layout: what RLHF sums next must not change order.
    assert torch.equal(a_np, a_t) and torch.equal(r_np, r_t)
    assert a_np.stride() == a_t.stride() and r_np.stride() == r_t.stride()
    rewards.requires_grad_(True)
    adv, _ = gae(rewards.T, values.T, next_values.T, ends.T, 0.99, 0.9)
    adv.sum().backward()
    assert rewards.grad is not None and rewards.grad.abs().sum() > 0


def test_gae_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="share one shape"):
        gae(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 1), torch.zeros(3, 2, dtype=torch.bool), 0.99, 0.95)


def test_masked_statistics_ignore_padding():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -50.0, 7.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 1]], dtype=torch.bool)
    valid = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 7.0])
    assert masked_mean(x, mask).item() == pytest.approx(valid.mean().item())
    assert masked_var(x, mask).item() == pytest.approx(valid.var().item())
    w = masked_whiten(x, mask)
    assert masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_var(w, mask).item() == pytest.approx(1.0, rel=1e-4)
    assert w[0, 3] == 0 and w[1, 2] == 0  # padding comes back as zero
    kept = masked_whiten(x, mask, shift_mean=False)
    assert masked_mean(kept, mask).item() == pytest.approx(valid.mean().item(), rel=1e-5)
