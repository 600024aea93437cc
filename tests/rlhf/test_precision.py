"""Real-scale options on tiny models: mixed precision (bf16 autocast, fp16 with loss scaling) and the
architectures people train (Llama, Qwen2, GPT-NeoX, GPT-2) built from their configs."""

import pytest
import torch

from ppokit.core.optim import LossScaledOptimizer, TorchOptimizer
from ppokit.core.update import PPOBatch, PPOUpdateSettings, ppo_update
from ppokit.rlhf.config import RLHFConfig
from ppokit.rlhf.demo import WORDS
from ppokit.rlhf.ppo.trainer import RLHFTrainer
from ppokit.rlhf.tiny import ARCHITECTURES, build_causal_lm
from tests.rlhf.helpers import PROMPTS

pytest.importorskip("transformers")


def _config(policy, **changes):
    values = dict(policy=policy, rewards=["tests.rlhf.helpers:pleasant_minus_unpleasant"], total_updates=2,
                  batch_size=4, num_minibatches=2, num_epochs=2, max_new_tokens=6, learning_rate=1e-3,
                  progress=False, tensorboard=False, torch_threads=1, device="cpu", seed=0, sample_every=0,
                  value_init="policy")
    values.update(changes)
    return RLHFConfig(**values)


def _weights(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("mode", ["bf16", "fp16"])
def test_mixed_precision_autocasts_the_forward_passes_and_keeps_float32_weights(tiny_lm, tmp_path, mode, device):
    trainer = RLHFTrainer(_config(tiny_lm, mixed_precision=mode, dtype="auto", device=device), prompts=PROMPTS,
                          run_dir=tmp_path / "run")
    seen = []
    head = trainer.policy.get_output_embeddings()
    head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    before = _weights(trainer.policy)
    trainer.learn()
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]
    assert seen and set(seen) == {half}, seen  # generation, rollout and update forwards all autocast
    assert all(p.dtype == torch.float32 and p.device.type == device for p in trainer.policy.parameters())
    after = _weights(trainer.policy)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    for row in trainer.history:
        assert row["policy_loss"] == row["policy_loss"] and row["grad_norm"] == row["grad_norm"]
    if mode == "fp16":
        assert "loss_scale" in trainer.history[-1]


def test_mixed_precision_refuses_half_weights(tiny_lm):
    with pytest.raises(Exception, match="mixed_precision"):
        _config(tiny_lm, mixed_precision="bf16", dtype="bfloat16")


def _linear_problem():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 3)
    obs = torch.randn(32, 3)
    actions = torch.randint(0, 2, (32,))
    with torch.no_grad():
        out = model(obs)
        logp = torch.log_softmax(out[:, :2], -1).gather(1, actions[:, None]).squeeze(1)
    batch = PPOBatch(logp=logp, values=out[:, 2], advantages=torch.randn(32), returns=torch.randn(32))

    def evaluate(idx):
        out = model(obs[idx])
        lp = torch.log_softmax(out[:, :2], -1)
        return lp.gather(1, actions[idx, None]).squeeze(1), -(lp.exp() * lp).sum(-1), out[:, 2]

    return model, batch, evaluate


def test_loss_scaling_unscales_gradients_before_the_step():
    """A finite scale changes nothing but rounding: the same steps as without it."""
    settings = PPOUpdateSettings(num_epochs=2, num_minibatches=2, clip_range=0.2, vf_coef=0.5, ent_coef=0.01)
    results = []
    for scaled in (False, True):
        model, batch, evaluate = _linear_problem()
        opt = TorchOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
        torch.manual_seed(1)
        stats = ppo_update(batch, evaluate, LossScaledOptimizer(opt, init_scale=1024.0) if scaled else opt, settings)
        results.append((_weights(model), stats))
    for k in results[0][0]:
        torch.testing.assert_close(results[0][0][k], results[1][0][k])
    assert results[1][1]["loss_scale_overflows"] == 0 and results[1][1]["loss_scale"] == 1024.0


def test_loss_scale_overflow_skips_the_step_and_halves_the_scale():
    model, batch, evaluate = _linear_problem()
    batch.advantages = batch.advantages * 1e4  # a finite loss whose gradient × 1e38 overflows float32
    before = _weights(model)
    opt = LossScaledOptimizer(TorchOptimizer(torch.optim.SGD(model.parameters(), lr=0.1)), init_scale=1e38)
    settings = PPOUpdateSettings(num_epochs=1, num_minibatches=1, clip_range=0.2, vf_coef=0.5, ent_coef=0.01,
                                 whiten_advantages=False)
    stats = ppo_update(batch, evaluate, opt, settings)
    assert stats["loss_scale_overflows"] == 1 and stats["minibatch_steps"] == 0
    assert opt.loss_scale == 5e37
    after = _weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    state = opt.state_dict()
    fresh = LossScaledOptimizer(TorchOptimizer(torch.optim.SGD(model.parameters(), lr=0.1)))
    fresh.load_state_dict(state)
    assert fresh.loss_scale == 5e37


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_ppo_runs_on_each_architecture_built_from_its_config(architecture, tmp_path):
    policy = build_causal_lm(tmp_path / architecture, WORDS, architecture, hidden=32, layers=2, heads=4,
                             kv_heads=2 if architecture in ("llama", "qwen2") else None, positions=64)
    # Random byte-level output seldom spells a word: reward its letters 'e', which it does produce.
    trainer = RLHFTrainer(_config(str(policy), attn_implementation="sdpa"), prompts=PROMPTS,
                          rewards=[lambda prompts, completions: [float(c.count("e")) for c in completions]],
                          run_dir=tmp_path / "run")
    assert trainer.policy.config.model_type == architecture
    before = _weights(trainer.policy)
    summary = trainer.learn()
    assert summary["updates"] == 2
    after = _weights(trainer.policy)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    for row in trainer.history:
        assert all(row[k] == row[k] for k in ("policy_loss", "value_loss", "kl", "grad_norm"))
    assert (tmp_path / "run" / "policy" / "config.json").exists()
