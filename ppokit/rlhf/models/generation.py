"""Sampling completions and reading per-token log-probs back, consistently.

The log-probs PPO needs are those of the distribution the tokens were *sampled* from: the policy's
logits divided by the sampling temperature, with no top-k/top-p truncation. Generation therefore
runs with exactly those settings, and :func:`token_logprobs` applies the same temperature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ppokit.rlhf.models.loading import position_ids_from_mask
from ppokit.rlhf.models.logprobs import forward_takes


@dataclass
class Completions:
    """A batch of prompts and their sampled completions, left-padded prompts then completions."""

    input_ids: Tensor          # [B, P + R]: prompt (left-padded) then completion (right-padded)
    attention_mask: Tensor     # [B, P + R]: 1 on real prompt tokens and on valid completion tokens
    prompt_length: int         # P
    completion_ids: Tensor     # [B, R]
    completion_mask: Tensor    # [B, R] bool: tokens up to and including the first EOS
    has_eos: Tensor            # [B] bool: the completion emitted EOS within max_new_tokens

    @property
    def position_ids(self) -> Tensor:
        return position_ids_from_mask(self.attention_mask)

    @property
    def lengths(self) -> Tensor:
        return self.completion_mask.sum(-1)

    def select(self, rows: Tensor | slice) -> Completions:
        """The given rows, without the columns that are padding in every one of them: prompt
        columns left of every row's first prompt token, and completion columns after every row's
        last valid token. Causal attention and mask-counted positions make the kept tokens' outputs
        those of the full rows; read them back into full width with :func:`full_width`."""
        mask, completion = self.attention_mask[rows], self.completion_mask[rows]
        first = int(mask[:, : self.prompt_length].any(0).long().argmax())  # a prompt has a real token
        valid_columns = completion.any(0).nonzero()
        end = int(valid_columns[-1]) + 1 if len(valid_columns) else 1
        columns = slice(first, self.prompt_length + end)
        return Completions(
            input_ids=self.input_ids[rows][:, columns], attention_mask=mask[:, columns],
            prompt_length=self.prompt_length - first, completion_ids=self.completion_ids[rows][:, :end],
            completion_mask=completion[:, :end], has_eos=self.has_eos[rows],
        )


def full_width(values: Tensor, length: int) -> Tensor:
    """``[B, r, ...]`` per-token values of a :meth:`Completions.select` read back to ``length``
    completion columns (zeros where every row was padding)."""
    missing = length - values.shape[1]
    if missing == 0:
        return values
    pad = values.new_zeros((values.shape[0], missing, *values.shape[2:]))
    return torch.cat([values, pad], dim=1)


def encode_prompts(tokenizer: Any, prompts: Sequence[str], device: torch.device) -> tuple[Tensor, Tensor]:
    """Left-pad a batch of prompts: generation appends to the right, so every row's last prompt
    token must sit in the same column."""
    tokenizer.padding_side = "left"
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def completion_mask(completion_ids: Tensor, eos_token_id: int | Sequence[int]) -> tuple[Tensor, Tensor]:
    """``(mask, has_eos)``: valid tokens are those up to and including the first EOS."""
    eos_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    is_eos = torch.zeros_like(completion_ids, dtype=torch.bool)
    for eos in eos_ids:
        is_eos |= completion_ids == eos
    # Tokens after the first EOS are those with an EOS strictly before them.
    eos_before = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    return ~eos_before, is_eos.any(-1)


@dataclass
class SamplingScores:
    """What the sampling pass saw of each sampled token (``old_logprobs: sampling``): ``[B, R]`` float32."""

    #: ``log softmax(z / T)[y]`` of each sampled token, from the KV-cache logits it was drawn from.
    logp: Tensor
    #: The entropy of each step's sampling distribution.
    entropy: Tensor


@torch.no_grad()
def sample(
    model: Any,
    tokenizer: Any,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    max_new_tokens: int,
    temperature: float,
    synced: bool = False,
    keep_scores: bool = False,
) -> tuple[Completions, SamplingScores | None]:
    """Sample completions with the KV cache, stopping each row at EOS; with ``keep_scores``, also
    the log-prob and entropy of each sampled token under the distribution it was drawn from.

    Sampling is from ``softmax(logits / temperature)`` over the whole vocabulary (top-k and top-p
    off), so the log-probs computed later at the same temperature are those of the sampling
    distribution. The loop draws exactly what transformers' ``generate`` draws for the same seed
    (one ``multinomial`` over every row per step, a finished row's token replaced by pad, stopping
    once every row has ended); it leaves out ``generate``'s per-step machinery, which on small
    models costs more than the forward pass. A model whose forward cannot take the cache and
    positions this way goes through ``generate``.

    ``synced``: the model is sharded over the processes (FSDP), so each of its forward passes needs
    every process: they all keep stepping until every process's completions have ended.
    """
    cache_arg = _cache_argument(model)
    if cache_arg is None:
        return _sample_with_generate(model, tokenizer, prompt_ids, prompt_mask, max_new_tokens, temperature,
                                     synced, keep_scores)
    from transformers import DynamicCache

    eos_ids = torch.tensor(_eos_list(tokenizer.eos_token_id), device=prompt_ids.device)
    pad = tokenizer.pad_token_id
    was_training = model.training
    model.eval()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cache = DynamicCache(config=base.config)
    mask = prompt_mask
    positions = position_ids_from_mask(mask)
    out = model(input_ids=prompt_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                logits_to_keep=1, **{cache_arg: cache})
    unfinished = torch.ones(prompt_ids.shape[0], dtype=torch.bool, device=prompt_ids.device)
    tokens: list[Tensor] = []
    logps: list[Tensor] = []
    entropies: list[Tensor] = []
    positions = positions[:, -1:]
    done_here = False
    for step in range(max_new_tokens):
        if not done_here:
            scores = out.logits[:, -1].float() / temperature
            probs = torch.softmax(scores, dim=-1)
            drawn = torch.multinomial(probs, num_samples=1).squeeze(1)
            if keep_scores:
                log_probs = torch.log_softmax(scores, dim=-1)
                logps.append(log_probs.gather(-1, drawn[:, None]).squeeze(-1))
                entropies.append(-(probs * log_probs).sum(-1))
            drawn = torch.where(unfinished, drawn, pad)
            tokens.append(drawn)
            unfinished &= ~torch.isin(drawn, eos_ids)
            done_here = not bool(unfinished.any())
        if step == max_new_tokens - 1 or not _any_running(synced, done_here, prompt_ids.device):
            break
        # A finished process (synced) steps with its last tokens: the others' forward passes need it.
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        positions = positions + 1
        out = model(input_ids=tokens[-1][:, None], attention_mask=mask, position_ids=positions, use_cache=True,
                    logits_to_keep=1, **{cache_arg: cache})
    del cache, out
    model.train(was_training)
    completion_ids = torch.stack(tokens, dim=1)
    completions = _completions(prompt_ids, prompt_mask, completion_ids, tokenizer)
    if not keep_scores:
        return completions, None
    valid = completions.completion_mask
    return completions, SamplingScores(torch.stack(logps, dim=1) * valid, torch.stack(entropies, dim=1) * valid)


def _eos_list(eos: int | Sequence[int]) -> list[int]:
    return [eos] if isinstance(eos, int) else list(eos)


def _any_running(synced: bool, done_here: bool, device: torch.device) -> bool:
    """Whether this process, or with ``synced`` any process of the sharded run, is still sampling
    (every process asks at every step, so the exchanges pair up)."""
    if not synced:
        return not done_here
    import torch.distributed as dist

    flag = torch.tensor(0.0 if done_here else 1.0, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.SUM)
    return bool(flag.item() > 0)


def _cache_argument(model: Any) -> str | None:
    """The name under which the model's forward takes a KV cache (``cache`` in recent transformers,
    ``past_key_values`` before), when it also takes positions and ``logits_to_keep`` so that the
    sampling loop can drive it; None otherwise."""
    if not forward_takes(model, "position_ids", "logits_to_keep"):
        return None
    return next((name for name in ("cache", "past_key_values") if forward_takes(model, name)), None)


def _sample_with_generate(model: Any, tokenizer: Any, prompt_ids: Tensor, prompt_mask: Tensor, max_new_tokens: int,
                          temperature: float, synced: bool, keep_scores: bool) -> tuple[Completions, SamplingScores | None]:
    """:func:`sample` through transformers' ``generate``, for models the loop cannot drive."""
    from transformers import GenerationConfig

    eos = tokenizer.eos_token_id
    config = GenerationConfig(
        do_sample=True, temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
        eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, use_cache=True,
        return_dict_in_generate=keep_scores, output_scores=keep_scores,
    )
    was_training = model.training
    model.eval()
    extra = {"synced_gpus": True} if synced else {}
    out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config, **extra)
    model.train(was_training)
    sequences = out.sequences if keep_scores else out
    completions = _completions(prompt_ids, prompt_mask, sequences[:, prompt_ids.shape[1]:], tokenizer)
    if not keep_scores:
        return completions, None
    scores = torch.stack(out.scores, dim=1).float()  # the processed scores: logits / T
    log_probs = torch.log_softmax(scores, dim=-1)
    logp = log_probs.gather(-1, completions.completion_ids[:, :scores.shape[1], None]).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    valid = completions.completion_mask[:, :scores.shape[1]]
    return completions, SamplingScores(logp * valid, entropy * valid)


def _completions(prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor, tokenizer: Any) -> Completions:
    prompt_length = prompt_ids.shape[1]
    if completion_ids.shape[1] == 0:  # max_new_tokens 0 is refused by the config; guard anyway
        completion_ids = torch.full((prompt_ids.shape[0], 1), tokenizer.pad_token_id, dtype=prompt_ids.dtype,
                                    device=prompt_ids.device)
    mask, has_eos = completion_mask(completion_ids, tokenizer.eos_token_id)
    # Tokens after EOS are pad; setting them explicitly keeps the rows tidy when pad != what
    # generate filled in.
    completion_ids = completion_ids.masked_fill(~mask, tokenizer.pad_token_id)
    return Completions(
        input_ids=torch.cat([prompt_ids, completion_ids], dim=1),
        attention_mask=torch.cat([prompt_mask, mask.to(prompt_mask.dtype)], dim=1),
        prompt_length=prompt_length,
        completion_ids=completion_ids,
        completion_mask=mask,
        has_eos=has_eos,
    )


def completion_logits(logits: Tensor, prompt_length: int) -> Tensor:
    """The logits that predict the completion tokens: position ``t`` predicts token ``t + 1``."""
    return logits[:, prompt_length - 1 : -1]


def decode(tokenizer: Any, ids: Tensor, mask: Tensor | None = None) -> list[str]:
    """Texts of the rows of ``ids`` (valid tokens only), special tokens removed."""
    rows = ids.tolist()
    if mask is not None:
        rows = [[t for t, m in zip(row, mrow) if m] for row, mrow in zip(rows, mask.tolist())]
    return tokenizer.batch_decode(rows, skip_special_tokens=True)
