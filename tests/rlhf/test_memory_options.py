"""The memory options of RLHF PPO on tiny models: frozen_dtype, attn_implementation, gradient_checkpointing,
value_model: lora, share_reward_trunk and offload_frozen. Each trains and saves; those that must not
change the numbers (checkpointing, offload, the shared trunk's scores, resume) are held to that."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ppokit.errors import ConfigError
from ppokit.rlhf.config import RLHFConfig
from ppokit.rlhf.ppo.trainer import RLHFTrainer
from tests.rlhf.helpers import PROMPTS, pleasant_minus_unpleasant

pytest.importorskip("transformers")
pytest.importorskip("peft")

RULE = "tests.rlhf.helpers:pleasant_minus_unpleasant"
TEXTS = (["describe the cat :", "describe the dog :"], ["good happy kind", "bad sad"])


@pytest.fixture(scope="module")
def reward_dirs(tiny_lm, tmp_path_factory):
    """Two untrained reward models on the tiny LM (a random head is all these tests need): a sequence
    classifier and a ppokit value-head model."""
    from transformers import AutoModelForSequenceClassification

    from ppokit.rlhf.models.loading import load_tokenizer, new_reward_model

    root = tmp_path_factory.mktemp("reward_models")
    tokenizer = load_tokenizer(tiny_lm)
    torch.manual_seed(1)
    classifier = AutoModelForSequenceClassification.from_pretrained(tiny_lm, num_labels=1)
    classifier.config.pad_token_id = tokenizer.pad_token_id
    classifier.save_pretrained(root / "classification")
    tokenizer.save_pretrained(root / "classification")
    torch.manual_seed(2)
    value_head = new_reward_model(tiny_lm, "value_head", torch.float32, torch.device("cpu"), tokenizer.pad_token_id)
    nn.init.normal_(value_head.model.head.weight, std=0.5)  # not the zero head a fresh one starts with
    value_head.save(root / "value_head", tokenizer)
    return {"classification": str(root / "classification"), "value_head": str(root / "value_head")}


def _config(policy, reward_dir=None, **changes):
    values = {"policy": policy, "rewards": [reward_dir, RULE] if reward_dir else [RULE], "total_updates": 2,
              "batch_size": 8, "num_minibatches": 2, "max_new_tokens": 6, "learning_rate": 1e-3, "kl_coef": 0.05,
              "progress": False, "tensorboard": False, "torch_threads": 1, "device": "cpu", "seed": 0,
              "sample_every": 0}
    values.update(changes)
    return RLHFConfig(**values)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


OPTIONS = {
    "lora_critic_from_reward": {"value_model": "lora"},
    "lora_critic_from_policy": {"value_model": "lora", "value_init": "policy"},
    "lora_critic_lora_policy": {"value_model": "lora", "lora": True, "lora_r": 4},
    "share_reward_trunk": {"value_model": "lora", "share_reward_trunk": True},
    "offload_frozen": {"offload_frozen": True},
    "frozen_dtype": {"frozen_dtype": "bfloat16"},
    "gradient_checkpointing": {"gradient_checkpointing": True},
    "gradient_checkpointing_lora": {"gradient_checkpointing": True, "lora": True, "lora_r": 4},
    "gradient_checkpointing_head": {"gradient_checkpointing": True, "value_model": "head"},
    "attn_implementation": {"attn_implementation": "eager"},
}


@pytest.mark.parametrize("option", list(OPTIONS))
def test_each_memory_option_trains_and_saves_usable_models(tiny_lm, reward_dirs, tmp_path, option):
    from ppokit.rlhf.models.loading import ScalarHeadModel, load_causal_lm

    trainer = RLHFTrainer(_config(tiny_lm, reward_dirs["classification"], **OPTIONS[option]), prompts=PROMPTS,
                          run_dir=tmp_path / "run")
    summary = trainer.learn()
    assert summary["updates"] == 2
    for row in trainer.history:
        for key in ("policy_loss", "value_loss", "loss", "score", "kl"):
            assert math.isfinite(row[key]), (key, row[key])
    cpu = torch.device("cpu")
    load_causal_lm(str(tmp_path / "run" / "policy"), torch.float32, cpu)
    ScalarHeadModel.load(tmp_path / "run" / "value_model", torch.float32, cpu)


def test_frozen_dtype_and_attn_implementation_reach_every_model(tiny_lm, reward_dirs, tmp_path):
    trainer = RLHFTrainer(_config(tiny_lm, reward_dirs["classification"], frozen_dtype="bfloat16",
                                  attn_implementation="eager"), prompts=PROMPTS, run_dir=tmp_path / "run")
    models, scorer = trainer.models, trainer.reward.sources[0]
    assert models.reference is not None and models.critic is not None
    assert next(models.reference.parameters()).dtype == torch.bfloat16
    assert next(scorer.model.parameters()).dtype == torch.bfloat16
    # What trains stays in dtype.
    assert {p.dtype for p in models.trainable.parameters()} == {torch.float32}
    configs = [models.policy.config, models.reference.config, models.critic.trunk.config, scorer.model.model.config]
    assert [c._attn_implementation for c in configs] == ["eager"] * 4
    default = RLHFTrainer(_config(tiny_lm, reward_dirs["classification"]), prompts=PROMPTS, run_dir=tmp_path / "d")
    assert default.models.policy.config._attn_implementation != "eager"  # so the check above can fail


def test_a_bad_attn_implementation_is_a_config_error_naming_the_field(tiny_lm, tmp_path):
    with pytest.raises(ConfigError, match="config field 'attn_implementation' = 'bogus'"):
        RLHFTrainer(_config(tiny_lm, attn_implementation="bogus"), prompts=PROMPTS, run_dir=tmp_path / "run")


# ---- gradient checkpointing -------------------------------------------------------------------

def _models(tiny_lm, **changes):
    from ppokit.rlhf.models.loading import quiet_transformers
    from ppokit.rlhf.ppo.roles import PPOModels
    from ppokit.rlhf.rewards.sources import CombinedReward

    quiet_transformers()
    torch.manual_seed(0)  # the same LoRA initialisation in both builds
    config = _config(tiny_lm, **changes)
    return PPOModels(config, CombinedReward([pleasant_minus_unpleasant]), torch.float32, torch.device("cpu"))


def _sample(models, tiny_lm):
    from ppokit.rlhf.models.generation import encode_prompts, sample
    from ppokit.rlhf.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_lm)
    ids, mask = encode_prompts(tokenizer, [p["prompt"] for p in PROMPTS[:4]], torch.device("cpu"))
    torch.manual_seed(3)
    return sample(models.policy, tokenizer, ids, mask, max_new_tokens=6, temperature=1.0)[0]


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    from ppokit.rlhf.models.recompute import transformer_blocks

    return [block.attn for block in transformer_blocks(model)]


@pytest.mark.parametrize("variant", [{}, {"lora": True, "lora_r": 4}, {"value_model": "head"},
                                     {"value_model": "lora", "value_init": "policy"}], ids=["full", "lora", "head",
                                                                                           "lora_critic"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_lm, variant):
    plain, checkpointed = _models(tiny_lm, **variant), _models(tiny_lm, gradient_checkpointing=True, **variant)
    batch = _sample(plain, tiny_lm)
    assert torch.equal(_sample(checkpointed, tiny_lm).input_ids, batch.input_ids)
    calls = {"n": 0}

    def count(module, args, kwargs):
        calls["n"] += 1

    results = []
    for models in (plain, checkpointed):
        handles = [m.register_forward_pre_hook(count, with_kwargs=True) for m in _attention_modules(models.trainable)]
        calls["n"] = 0
        logits, values = models.policy_forward(batch)
        if values is None:
            values = models.values(batch)
        loss = torch.logsumexp(logits, -1).mean() + values.square().mean()
        loss.backward()
        for h in handles:
            h.remove()
        grads = {n: p.grad.clone() for n, p in models.trainable.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads, calls["n"]))
    (loss_a, grads_a, calls_a), (loss_b, grads_b, calls_b) = results
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-5, atol=1e-7, msg=name)
    # The checkpointed blocks ran their attention again in the backward pass.
    assert calls_b == 2 * calls_a > 0


def test_generation_keeps_the_kv_cache_under_gradient_checkpointing(tiny_lm):
    models = _models(tiny_lm, gradient_checkpointing=True)
    lengths: list[int] = []
    attention = _attention_modules(models.policy)[0]
    handle = attention.register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1]))
    batch = _sample(models, tiny_lm)
    handle.remove()
    # The prompt once, then one new token per step: the cache holds the rest.
    assert len(lengths) == batch.completion_ids.shape[1] and lengths[1:] == [1] * (len(lengths) - 1)


# ---- LoRA critic and the shared reward trunk ----------------------------------------------------

def test_lora_critic_trains_adapters_and_head_on_a_frozen_trunk_and_saves_merged(tiny_lm, reward_dirs, tmp_path):
    from ppokit.rlhf.models.loading import ScalarHeadModel

    trainer = RLHFTrainer(_config(tiny_lm, reward_dirs["classification"], value_model="lora"), prompts=PROMPTS,
                          run_dir=tmp_path / "run")
    critic = trainer.models.critic
    trunk_before = {k: v.clone() for k, v in critic.trunk.get_base_model().state_dict().items() if "lora_" not in k}
    trainable = {n for n, p in critic.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable), trainable
    assert "head.weight" in trainable
    head_before = critic.head.weight.detach().clone()
    trainer.learn()
    trunk_after = {k: v for k, v in critic.trunk.get_base_model().state_dict().items() if "lora_" not in k}
    assert all(torch.equal(trunk_before[k], trunk_after[k]) for k in trunk_before)
    assert not torch.equal(critic.head.weight.detach(), head_before)
    assert any(float(p.detach().abs().max()) > 0 for n, p in critic.named_parameters() if "lora_B" in n)
    saved = ScalarHeadModel.load(tmp_path / "run" / "value_model", torch.float32, torch.device("cpu"))
    batch = _sample(trainer.models, tiny_lm)
    with torch.no_grad():
        torch.testing.assert_close(saved(batch.input_ids, batch.attention_mask),
                                   critic(batch.input_ids, batch.attention_mask), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["classification", "value_head"])
def test_shared_reward_trunk_is_one_copy_and_scores_do_not_move(tiny_lm, reward_dirs, tmp_path, kind):
    from ppokit.rlhf.models.loading import trunk_of

    trainer = RLHFTrainer(_config(tiny_lm, reward_dirs[kind], value_model="lora", share_reward_trunk=True),
                          prompts=PROMPTS, run_dir=tmp_path / "run")
    scorer, critic = trainer.reward.sources[0], trainer.models.critic
    reward_trunk = scorer.model.model.trunk if kind == "value_head" else trunk_of(scorer.model.model)
    assert critic.trunk.get_base_model() is reward_trunk  # no second copy
    before = scorer(*TEXTS)
    trainer.learn()
    lora_b = [p for n, p in critic.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.detach().abs().max()) > 0 for p in lora_b)  # the adapters did move...
    assert torch.equal(scorer(*TEXTS), before)  # ...and the reward model's scores did not
    # With the adapters on, the trunk computes something else: the scorer really switches them off.
    scorer.shared_adapters = None
    assert not torch.equal(scorer(*TEXTS), before)


def test_shared_reward_trunk_needs_a_reward_model(tiny_lm, tmp_path):
    with pytest.raises(ConfigError, match="share_reward_trunk' needs a reward model"):
        RLHFTrainer(_config(tiny_lm, value_model="lora", share_reward_trunk=True), prompts=PROMPTS,
                    run_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="share_reward_trunk' needs value_model: lora"):
        _config(tiny_lm, share_reward_trunk=True)
    with pytest.raises(ConfigError, match="'fsdp' does not combine with value_model: lora"):
        _config(tiny_lm, value_model="lora", sharding="fsdp")


@pytest.mark.parametrize("variant", [{"value_model": "lora"}, {"value_model": "lora", "share_reward_trunk": True}],
                         ids=["lora_critic", "shared_trunk"])
def test_lora_critic_resumes_bit_identically(tiny_lm, reward_dirs, tmp_path, variant):
    config = _config(tiny_lm, reward_dirs["classification"], total_updates=4, **variant)
    straight = RLHFTrainer(config, prompts=PROMPTS, run_dir=tmp_path / "straight")
    straight.learn()
    first = RLHFTrainer(config, prompts=PROMPTS, run_dir=tmp_path / "split")
    first.learn(callback=lambda record: record["update"] < 2)
    assert first.num_updates == 2 and not _same_weights(first.models.trainable, straight.models.trainable)
    resumed = RLHFTrainer(config, prompts=PROMPTS, run_dir=tmp_path / "split", resume=True)
    resumed.learn()
    assert resumed.num_updates == 4 and _same_weights(resumed.models.trainable, straight.models.trainable)


# ---- offload ----------------------------------------------------------------------------------

def _offload_round_trip(device: torch.device) -> None:
    from ppokit.rlhf.models.offload import CPUOffload

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    model[1].weight = model[0].bias  # a shared parameter moves once
    before = {k: v.clone() for k, v in model.state_dict().items()}
    offload = CPUOffload(model, device)
    pointers = [t.data_ptr() for t in [*model.parameters(), *model.buffers()]]
    with offload.on_device() as inside:
        assert inside is model
        tensors = [*model.parameters(), *model.buffers()]
        assert {t.device for t in tensors} == {device}
        assert all(t.data_ptr() != ptr for t, ptr in zip(tensors, pointers))  # copies, not the CPU tensors
        assert model[1].weight is model[0].bias
        x = torch.randn(3, 4, device=device)
        assert torch.equal(model.eval()(x).cpu(), _reference_output(before, x.cpu()))
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"cpu"}
    # The very CPU tensors of before: nothing is copied back, nothing changed.
    assert [t.data_ptr() for t in [*model.parameters(), *model.buffers()]] == pointers
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _reference_output(state, x):
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    model.load_state_dict(state)
    return model.eval()(x)


def test_cpu_offload_moves_the_weights_only_inside_the_block(monkeypatch):
    from ppokit.rlhf.models.offload import CPUOffload

    assert not CPUOffload(nn.Linear(2, 2), torch.device("cpu")).active  # on a CPU-only run: nothing to do
    # Force the round trip with the CPU as the "device": the copies in and the swap back are exercised.
    monkeypatch.setattr(CPUOffload, "active", True)
    _offload_round_trip(torch.device("cpu"))


@pytest.mark.cuda
def test_cpu_offload_round_trip_on_cuda():
    _offload_round_trip(torch.device("cuda", 0))


def test_offload_frozen_gives_bit_identical_training_and_frozen_models_wait_on_the_cpu(tiny_lm, reward_dirs, tmp_path):
    config = _config(tiny_lm, reward_dirs["classification"])
    plain = RLHFTrainer(config, prompts=PROMPTS, run_dir=tmp_path / "plain")
    plain.learn()
    offloaded = RLHFTrainer(_config(tiny_lm, reward_dirs["classification"], offload_frozen=True), prompts=PROMPTS,
                            run_dir=tmp_path / "offload")
    models, scorer = offloaded.models, offloaded.reward.sources[0]
    assert models.reference_offload is not None and scorer.offloaded is not None
    seen: list[str] = []

    def where(module, args, kwargs):
        seen.append(next(module.parameters()).device.type)

    handles = [models.reference.register_forward_pre_hook(where, with_kwargs=True),
               scorer.model.register_forward_pre_hook(where, with_kwargs=True)]
    offloaded.update()
    for h in handles:
        h.remove()
    # Each ran on the run's device during its phase, and is in CPU memory after it.
    assert seen == [offloaded.device.type] * 2
    for frozen in (models.reference, scorer.model):
        assert {p.device.type for p in frozen.parameters()} == {"cpu"}
    offloaded.learn()
    assert _same_weights(offloaded.models.trainable, plain.models.trainable)


def test_memory_benchmark_script_runs_each_option_in_its_own_process():
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "rlhf_memory.py"), "--layers", "1", "--width", "32",
                           "--heads", "2", "--batch", "2", "--new-tokens", "4", "--options", "separate,lora_critic"],
                          capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])["rows"]
    assert [r["option"] for r in rows] == ["separate", "lora_critic"]
    # Measured after the imports: small positive figures for a tiny model, not the interpreter's whole RSS.
    assert all(0 < r["peak_mib"] < r["rss_before_mib"] for r in rows)
    assert rows[1]["trainable_params"] < rows[0]["trainable_params"]
    assert "| separate critic (baseline) |" in proc.stderr
