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


@torch.no_grad()
def sample(
    model: Any,
    tokenizer: Any,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    max_new_tokens: int,
    temperature: float,
    synced: bool = False,
) -> Completions:
    """Sample completions with the KV cache, stopping each row at EOS.

    ``synced``: the model is sharded over the processes (FSDP), so each of its forward passes needs
    every process: they all keep stepping until every process's completions have ended.

    Sampling is from ``softmax(logits / temperature)`` over the whole vocabulary (top-k and top-p
    off), so the log-probs computed later at the same temperature are those of the sampling
    distribution.
    """
    from transformers import GenerationConfig

    eos = tokenizer.eos_token_id
    config = GenerationConfig(
        do_sample=True, temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
        eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, use_cache=True,
    )
    was_training = model.training
    model.eval()
    extra = {"synced_gpus": True} if synced else {}
    out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config, **extra)
    model.train(was_training)
    prompt_length = prompt_ids.shape[1]
    completion_ids = out[:, prompt_length:]
    if completion_ids.shape[1] == 0:  # every row hit EOS at once is impossible; guard anyway
        completion_ids = torch.full((out.shape[0], 1), tokenizer.pad_token_id, dtype=out.dtype, device=out.device)
    mask, has_eos = completion_mask(completion_ids, eos)
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


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    r"""Log-probability of each token under ``softmax(logits / T)``.

    .. math:: \log \pi_T(y_t) = z_{y_t}/T - \log \textstyle\sum_v \exp(z_v / T)

    computed as a gather minus a logsumexp, without materialising the full log-softmax.
    """
    scaled = logits.float() / temperature
    picked = scaled.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(scaled, dim=-1)


def token_entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    r"""Entropy :math:`-\sum_v \pi_T(v)\log\pi_T(v)` of each position's temperature-scaled distribution."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def decode(tokenizer: Any, ids: Tensor, mask: Tensor | None = None) -> list[str]:
    """Texts of the rows of ``ids`` (valid tokens only), special tokens removed."""
    rows = ids.tolist()
    if mask is not None:
        rows = [[t for t, m in zip(row, mrow) if m] for row, mrow in zip(rows, mask.tolist())]
    return tokenizer.batch_decode(rows, skip_special_tokens=True)
