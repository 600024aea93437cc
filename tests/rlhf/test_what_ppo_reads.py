"""Computing only what PPO reads: the sampling loop, logits at completion positions only, the sliced
log-sum-exp and its backward pass, padding columns dropped per minibatch, and ``old_logprobs: sampling``.
Each must give what the full computation gives (exactly, or to float rounding where stated)."""

from __future__ import annotations

import pytest
import torch

from ppokit.rlhf.config import RLHFConfig
from ppokit.rlhf.models import generation, logprobs
from ppokit.rlhf.models.generation import encode_prompts, full_width, sample
from ppokit.rlhf.models.loading import load_causal_lm, load_tokenizer
from ppokit.rlhf.models.logprobs import completion_logits_of, token_entropy, token_logprobs
from ppokit.rlhf.ppo.trainer import RLHFTrainer
from tests.rlhf.helpers import PROMPTS

pytest.importorskip("transformers")

RULE = "tests.rlhf.helpers:pleasant_minus_unpleasant"
MIXED = ["describe the cat :", "describe the very big old green horse :", "describe the dog :",
         "describe the happy red bird :"]


@pytest.fixture(scope="module")
def lm(tiny_lm):
    tokenizer = load_tokenizer(tiny_lm)
    model = load_causal_lm(tiny_lm, torch.float32, torch.device("cpu"))
    with torch.no_grad():  # sharpen the near-uniform fresh model so EOS and long rows both occur
        model.lm_head.weight.mul_(4.0)
    return tokenizer, model.eval()


class _WithoutLogitsToKeep(torch.nn.Module):
    """A causal LM whose forward names neither a cache nor ``logits_to_keep`` (older models)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config
        self.generation_config = model.generation_config
        self.train(model.training)  # a new module starts in training mode, which would switch dropout on

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False, **kwargs):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=use_cache, **kwargs)

    def generate(self, **kwargs):
        return self.model.generate(**kwargs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_sampling_loop_draws_what_generate_draws(lm, seed):
    tokenizer, model = lm
    ids, mask = encode_prompts(tokenizer, MIXED * 4, torch.device("cpu"))
    torch.manual_seed(seed)
    ours, _ = sample(model, tokenizer, ids, mask, max_new_tokens=10, temperature=0.7)
    after_ours = torch.rand(3)
    torch.manual_seed(seed)
    theirs, _ = generation._sample_with_generate(model, tokenizer, ids, mask, 10, 0.7, False, False)
    assert generation._cache_argument(model) is not None  # the loop, not generate, made `ours`
    assert torch.equal(ours.input_ids, theirs.input_ids)
    assert torch.equal(ours.completion_mask, theirs.completion_mask)
    assert torch.equal(torch.rand(3), after_ours)  # the same random draws, so what follows is the same too
    assert ours.has_eos.any() and not ours.has_eos.all()  # rows that stopped early and rows that ran on


def test_a_model_without_a_cache_argument_samples_through_generate(lm):
    tokenizer, model = lm
    wrapped = _WithoutLogitsToKeep(model)
    assert generation._cache_argument(wrapped) is None
    ids, mask = encode_prompts(tokenizer, MIXED, torch.device("cpu"))
    torch.manual_seed(4)
    via_generate, _ = sample(wrapped, tokenizer, ids, mask, max_new_tokens=8, temperature=1.0)
    torch.manual_seed(4)
    via_loop, _ = sample(model, tokenizer, ids, mask, max_new_tokens=8, temperature=1.0)
    assert torch.equal(via_generate.input_ids, via_loop.input_ids)


@pytest.mark.parametrize("loop", [True, False])
def test_sampling_scores_are_the_logprobs_and_entropy_of_the_drawn_tokens(lm, loop):
    tokenizer, model = lm
    ids, mask = encode_prompts(tokenizer, MIXED * 2, torch.device("cpu"))
    torch.manual_seed(5)
    chosen = model if loop else _WithoutLogitsToKeep(model)
    batch, scores = sample(chosen, tokenizer, ids, mask, max_new_tokens=9, temperature=0.8, keep_scores=True)
    assert scores is not None
    with torch.no_grad():
        logits, _ = completion_logits_of(model, batch.input_ids, batch.attention_mask, batch.position_ids,
                                         batch.prompt_length)
    valid = batch.completion_mask
    recomputed = token_logprobs(logits, batch.completion_ids, 0.8) * valid
    # The KV-cache pass and the full pass differ only in float rounding.
    assert torch.allclose(scores.logp, recomputed, atol=1e-5)
    assert torch.allclose(scores.entropy, token_entropy(logits, 0.8) * valid, atol=1e-5)
    assert (scores.logp[~valid] == 0).all()


def test_logits_at_completion_positions_are_the_full_logits_sliced(lm):
    tokenizer, model = lm
    ids, mask = encode_prompts(tokenizer, MIXED, torch.device("cpu"))
    torch.manual_seed(6)
    batch, _ = sample(model, tokenizer, ids, mask, max_new_tokens=7, temperature=1.0)
    args = (batch.input_ids, batch.attention_mask, batch.position_ids, batch.prompt_length)
    with torch.no_grad():
        kept, _ = completion_logits_of(model, *args)
        sliced, _ = completion_logits_of(_WithoutLogitsToKeep(model), *args)
        full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                     position_ids=batch.position_ids).logits
    assert logprobs.keeps_logits(model) and not logprobs.keeps_logits(_WithoutLogitsToKeep(model))
    assert kept.shape == (len(MIXED), batch.completion_ids.shape[1], full.shape[-1])
    assert torch.allclose(kept, full[:, batch.prompt_length - 1: -1], atol=1e-6)
    assert torch.equal(sliced, full[:, batch.prompt_length - 1: -1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_logprobs_and_their_gradient_match_a_float64_log_softmax(dtype, monkeypatch):
    monkeypatch.setattr(logprobs, "_SLICE_ELEMENTS", 3 * 50)  # several slices, the last one short
    torch.manual_seed(7)
    logits = (torch.randn(4, 5, 50) * 3).to(dtype).requires_grad_(True)
    tokens = torch.randint(0, 50, (4, 5))
    weights = torch.randn(4, 5)
    ours = token_logprobs(logits, tokens, 0.7)
    (ours * weights).sum().backward()
    exact64 = logits.detach().double().requires_grad_(True)
    reference = torch.log_softmax(exact64 / 0.7, -1).gather(-1, tokens[..., None]).squeeze(-1)
    (reference * weights.double()).sum().backward()
    assert ours.dtype == torch.float32
    rtol = 1e-5 if dtype == torch.float32 else 1e-2  # bf16 gradients are stored in bf16
    assert torch.allclose(ours.double(), reference, atol=1e-5)
    assert logits.grad is not None and logits.grad.dtype == dtype
    assert torch.allclose(logits.grad.double(), exact64.grad, rtol=rtol, atol=1e-6)
    with torch.no_grad():
        entropy = token_entropy(logits, 0.7)
    p64 = torch.softmax(exact64.detach() / 0.7, -1)
    assert torch.allclose(entropy.double(), -(p64 * p64.log()).sum(-1), atol=1e-4)


def test_a_minibatch_without_its_padding_columns_gives_the_same_logprobs(lm):
    tokenizer, model = lm
    ids, mask = encode_prompts(tokenizer, MIXED * 3, torch.device("cpu"))
    torch.manual_seed(8)
    batch, _ = sample(model, tokenizer, ids, mask, max_new_tokens=12, temperature=1.0)
    with torch.no_grad():
        logits, _ = completion_logits_of(model, batch.input_ids, batch.attention_mask, batch.position_ids,
                                         batch.prompt_length)
        whole = token_logprobs(logits, batch.completion_ids)
    trimmed_somewhere = False
    for rows in (torch.tensor([0, 2]), torch.tensor([1, 3, 5]), torch.tensor([4, 8, 10, 2])):
        part = batch.select(rows)
        trimmed_somewhere |= part.input_ids.shape[1] < batch.input_ids.shape[1]
        with torch.no_grad():
            logits, _ = completion_logits_of(model, part.input_ids, part.attention_mask, part.position_ids,
                                             part.prompt_length)
            back = full_width(token_logprobs(logits, part.completion_ids), batch.completion_ids.shape[1])
        valid = batch.completion_mask[rows]
        assert torch.allclose(back[valid], whole[rows][valid], atol=1e-5)
        assert (back[~valid] == 0).all() or part.completion_ids.shape[1] == batch.completion_ids.shape[1]
    assert trimmed_somewhere  # the rows chosen above do leave columns out


def _trainer(tiny_lm, tmp_path, **changes):
    values = {"policy": tiny_lm, "rewards": [RULE], "total_updates": 2, "batch_size": 8, "num_minibatches": 2,
              "max_new_tokens": 6, "learning_rate": 1e-3, "kl_coef": 0.05, "progress": False,
              "tensorboard": False, "torch_threads": 1, "device": "cpu", "seed": 0, "sample_every": 0}
    values.update(changes)
    return RLHFTrainer(RLHFConfig(**values), prompts=PROMPTS, run_dir=tmp_path / "run")


@pytest.mark.parametrize("value_model", ["separate", "head"])
def test_old_logprobs_from_sampling_skip_the_policy_pass_and_log_the_first_ratio(tiny_lm, tmp_path, value_model,
                                                                                 monkeypatch):
    trainer = _trainer(tiny_lm, tmp_path, old_logprobs="sampling", value_model=value_model)
    real = trainer.models.policy_forward
    calls = []

    def counted(batch):
        calls.append(torch.is_grad_enabled())
        return real(batch)

    monkeypatch.setattr(trainer.models, "policy_forward", counted)
    record = trainer.update()
    rollout_passes = calls.count(False)
    # Separate critic: no policy pass in the rollout; value head: one, for the values only.
    assert rollout_passes == (1 if value_model == "head" else 0)
    assert 0 <= record["first_ratio_deviation"] < 1e-4  # sampling and training passes agree to rounding
    assert record["first_ratio_deviation"] > 0 or value_model == "head"


def test_the_default_recomputes_so_the_first_ratio_is_one(tiny_lm, tmp_path):
    from ppokit.rlhf.ppo.rollout import collect

    trainer = _trainer(tiny_lm, tmp_path)
    assert trainer.config.old_logprobs == "recompute"
    c = trainer.config
    batch = collect(trainer.models, trainer.tokenizer, trainer.reward, trainer.prompts.next(), c, trainer.device)
    rows = torch.tensor([5, 1, 6, 2])  # a minibatch, with its padding columns dropped
    with torch.no_grad():
        logp, _, values = trainer._evaluate(batch)(rows)
    valid = batch.mask[rows]
    assert torch.allclose(logp[valid], batch.logp[rows][valid], atol=1e-6)
    assert torch.allclose(values[valid], batch.values[rows][valid], atol=1e-6)
    assert "first_ratio_deviation" not in trainer.update()


def test_old_logprobs_sampling_changes_only_the_old_logprobs(tiny_lm, tmp_path):
    recompute = _trainer(tiny_lm, tmp_path / "a")
    sampling = _trainer(tiny_lm, tmp_path / "b", old_logprobs="sampling")
    torch.manual_seed(0)
    prompts = recompute.prompts.next()
    from ppokit.rlhf.ppo.rollout import collect

    torch.manual_seed(11)
    a = collect(recompute.models, recompute.tokenizer, recompute.reward, prompts, recompute.config, recompute.device)
    torch.manual_seed(11)
    b = collect(sampling.models, sampling.tokenizer, sampling.reward, prompts, sampling.config, sampling.device)
    assert torch.equal(a.sequences.input_ids, b.sequences.input_ids)
    assert torch.allclose(a.logp * a.mask, b.logp, atol=1e-5)
    assert torch.equal(a.ref_logp, b.ref_logp) and torch.equal(a.values, b.values)
    assert not torch.equal(a.logp * a.mask, b.logp)  # taken from another pass, not copied


@pytest.mark.parametrize("value_init", ["policy", "reward"])
def test_critics_and_reward_models_compute_no_vocabulary_logits(tiny_lm, tmp_path, value_init):
    from transformers import AutoModelForSequenceClassification

    from ppokit.rlhf.ppo.rollout import collect

    reward_dir = tmp_path / "reward"
    torch.manual_seed(1)
    AutoModelForSequenceClassification.from_pretrained(tiny_lm, num_labels=1).save_pretrained(reward_dir)
    load_tokenizer(tiny_lm).save_pretrained(reward_dir)
    trainer = _trainer(tiny_lm, tmp_path, rewards=[str(reward_dir)], value_init=value_init)
    vocab = len(trainer.tokenizer)
    critic, scorer = trainer.models.critic, trainer.reward.sources[0].model
    widest: list[int] = []

    def record(module, inputs, output):
        tensors = [output] if isinstance(output, torch.Tensor) else [
            t for t in (output.values() if isinstance(output, dict) else output if isinstance(output, tuple) else [])
            if isinstance(t, torch.Tensor)]
        widest.extend(t.shape[-1] for t in tensors if t.dim() >= 2)

    hooks = [m.register_forward_hook(record) for model in (critic, scorer) for m in model.modules()]
    collect(trainer.models, trainer.tokenizer, trainer.reward, trainer.prompts.next(), trainer.config, trainer.device)
    for hook in hooks:
        hook.remove()
    assert widest and vocab not in widest  # hidden widths and scalars only, never [.., vocab]
    assert vocab not in {32, 96, 128, 1}  # the tiny model's widths: the check above can tell them apart
