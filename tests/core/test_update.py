import pytest
import torch

from ppokit.core.collective import Collective, Traffic
from ppokit.core.optim import AveragedGradients, LossScaledOptimizer, TorchOptimizer
from ppokit.core.update import NonFiniteError, PPOBatch, PPOUpdateSettings, ppo_update


def _setup(n=64, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 3)  # logits for 2 actions + a value
    obs = torch.randn(n, 3)
    actions = torch.randint(0, 2, (n,))
    with torch.no_grad():
        out = model(obs)
        logp = torch.log_softmax(out[:, :2], -1).gather(1, actions[:, None]).squeeze(1)
        values = out[:, 2]
    batch = PPOBatch(logp=logp, values=values, advantages=torch.randn(n), returns=torch.randn(n))

    def evaluate(idx):
        out = model(obs[idx])
        lp = torch.log_softmax(out[:, :2], -1)
        return lp.gather(1, actions[idx, None]).squeeze(1), -(lp.exp() * lp).sum(-1), out[:, 2]

    return model, batch, evaluate


def _settings(**kw):
    base = dict(num_epochs=4, num_minibatches=4, clip_range=0.2, vf_coef=0.5, ent_coef=0.01)
    base.update(kw)
    return PPOUpdateSettings(**base)


def test_update_runs_all_epochs_and_reports_diagnostics():
    model, batch, evaluate = _setup()
    opt = TorchOptimizer(torch.optim.Adam(model.parameters(), lr=1e-2))
    stats = ppo_update(batch, evaluate, opt, _settings())
    assert stats["epochs"] == 4 and stats["minibatch_steps"] == 16
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl_k1", "approx_kl_k3", "clip_fraction", "grad_norm"):
        assert key in stats and stats[key] == stats[key]
    assert stats["approx_kl_k3"] >= 0


def test_early_stop_at_target_kl_skips_the_offending_step():
    model, batch, evaluate = _setup()
    opt = TorchOptimizer(torch.optim.SGD(model.parameters(), lr=5.0))  # huge steps: KL explodes after the first one
    stats = ppo_update(batch, evaluate, opt, _settings(target_kl=1e-4))
    assert stats["early_stopped"] == 1.0
    assert stats["minibatch_steps"] < 16


def test_non_finite_loss_stops_before_the_step():
    model, batch, evaluate = _setup()
    batch.advantages[5] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    opt = TorchOptimizer(torch.optim.Adam(model.parameters(), lr=1e-2))
    with pytest.raises(NonFiniteError, match="non-finite loss"):
        ppo_update(batch, evaluate, opt, _settings(num_minibatches=1, whiten_advantages=False))
    for p, b in zip(model.parameters(), before):
        torch.testing.assert_close(p, b)


def test_masked_rows_do_not_contribute():
    model, batch, evaluate = _setup(n=8)
    batch.mask = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0], dtype=torch.bool)
    batch.advantages[4:] = 1e6  # would dominate the loss if it leaked through the mask
    opt = TorchOptimizer(torch.optim.SGD(model.parameters(), lr=0.0))
    stats = ppo_update(batch, evaluate, opt, _settings(num_epochs=1, num_minibatches=1, whiten_advantages=False))
    assert abs(stats["policy_loss"]) < 100


def _token_setup(seed=0):
    """A [B, T] batch with ragged masks, as the RLHF front end passes it."""
    model, batch, evaluate = _setup(n=48, seed=seed)
    b, t = 8, 6
    mask = torch.arange(t)[None, :] < torch.tensor([6, 1, 3, 6, 2, 5, 4, 6])[:, None]
    assert batch.values is not None and batch.returns is not None
    token = PPOBatch(logp=batch.logp.reshape(b, t), advantages=batch.advantages.reshape(b, t),
                     values=batch.values.reshape(b, t), returns=batch.returns.reshape(b, t), mask=mask)

    def evaluate_rows(rows):
        flat = (rows[:, None] * t + torch.arange(t)[None, :]).reshape(-1)
        logp, ent, values = evaluate(flat)
        return logp.reshape(-1, t), ent.reshape(-1, t), values.reshape(-1, t)

    return model, token, evaluate_rows


@pytest.mark.parametrize("whiten", [False, True])
def test_gradient_accumulation_takes_the_same_steps(whiten):
    """k micro-batches, each weighted by its share of the minibatch's valid tokens, sum to the
    minibatch's gradient: the weights after K epochs agree with k = 1 up to rounding, while a plain
    1/k average of micro-batch means (ragged masks) would not."""
    results = []
    for k in (1, 4):
        model, batch, evaluate = _token_setup()
        opt = TorchOptimizer(torch.optim.Adam(model.parameters(), lr=1e-2))
        torch.manual_seed(1)
        stats = ppo_update(batch, evaluate, opt, _settings(num_minibatches=2, whiten_advantages=whiten,
                                                           gradient_accumulation_steps=k))
        results.append(([p.detach().clone() for p in model.parameters()], stats))
    (w1, s1), (w4, s4) = results
    for a, b in zip(w1, w4):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl_k3", "clip_fraction", "grad_norm"):
        assert s1[key] == pytest.approx(s4[key], rel=1e-5, abs=1e-7), key
    assert s4["minibatch_steps"] == s1["minibatch_steps"] == 8


def test_gradient_accumulation_stops_before_a_non_finite_step():
    model, batch, evaluate = _token_setup()
    batch.advantages[3, 0] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    opt = TorchOptimizer(torch.optim.Adam(model.parameters(), lr=1e-2))
    with pytest.raises(NonFiniteError, match="non-finite loss"):
        ppo_update(batch, evaluate, opt, _settings(num_minibatches=1, whiten_advantages=False,
                                                   gradient_accumulation_steps=4))
    for p, b in zip(model.parameters(), before):
        torch.testing.assert_close(p, b)


class _Mirror(Collective):
    """Two processes that hold the same data, in one: each exchange returns what it would with two
    such processes (sums doubled, rows repeated), and is recorded by name."""

    def __init__(self) -> None:
        self.world_size, self.rank, self.device = 2, 0, torch.device("cpu")
        self.traffic = Traffic()
        self.calls: list[str] = []

    def _all_reduce(self, tensor):
        self.calls.append("all_reduce")
        tensor.mul_(2)

    def _all_gather(self, out, local):
        self.calls.append("all_gather")
        out.copy_(local.repeat(2))

    def mean_flat_(self, tensors, extra=(), bucket_bytes=0):
        self.calls.append(f"gradient+{len(extra)}")
        return list(extra)


@pytest.mark.parametrize("wrap, accumulate, target_kl", [
    ("plain", 1, None),
    ("loss_scaled", 1, None),  # fp16 loss scaling wraps the averaging optimiser
    ("plain", 3, None),        # micro-batches differentiated in forward
    ("plain", 1, 1e-4),        # the KL stop: the stopped minibatch's gradient is exchanged and dropped
])
def test_data_parallel_exchanges_once_per_minibatch_and_once_per_epoch(wrap, accumulate, target_kl):
    """Before: three exchanges per minibatch (the union's whitening moments, its loss and KL, the
    gradient); now the loss and KL ride in the gradient's exchange and an epoch's moments are one
    gather, whatever wraps the optimiser."""
    model, batch, evaluate = _token_setup()
    mirror = _Mirror()
    inner = AveragedGradients(TorchOptimizer(torch.optim.SGD(model.parameters(), lr=5.0)), mirror)
    opt = LossScaledOptimizer(inner, init_scale=4.0) if wrap == "loss_scaled" else inner
    stats = ppo_update(batch, evaluate, opt, _settings(num_epochs=3, num_minibatches=2, target_kl=target_kl,
                                                       gradient_accumulation_steps=accumulate), mirror)
    epochs = int(stats["epochs"] + stats["early_stopped"])
    attempts = int(stats["minibatch_steps"] + stats["early_stopped"])
    assert stats["early_stopped"] == float(target_kl is not None)
    expected: list[str] = []
    for epoch in range(epochs):
        expected += ["all_gather"] + ["gradient+2"] * min(2, attempts - 2 * epoch)
    assert mirror.calls == [*expected, "all_reduce"]  # the diagnostics, once per update
