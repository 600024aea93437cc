"""Collecting one RLHF batch: generate completions, score them, and read off what PPO needs.

    prompts ──repeat each G times (num_generations), a prompt's G rows adjacent
            ──generate (policy, KV cache)──▶ completions
            ──score (reward sources)──────▶ s, with the EOS penalty and the score clip
            ──forward passes──────────────▶ log π_old, log π_ref, V_old (with a critic), entropy
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ppokit.rlhf.config import RLHFConfig
from ppokit.rlhf.models import precision
from ppokit.rlhf.models.generation import Completions, decode, encode_prompts, sample
from ppokit.rlhf.models.logprobs import token_entropy, token_logprobs
from ppokit.rlhf.ppo.advantages import uses_critic
from ppokit.rlhf.ppo.roles import PPOModels
from ppokit.rlhf.rewards.sources import CombinedReward


@dataclass
class RolloutBatch:
    """One batch of completions and everything measured on it; token tensors are ``[B, T]``."""

    #: The prompt of each completion: each of the update's prompts ``num_generations`` times in a row.
    prompts: list[str]
    #: The completions as text, as the reward sources read them.
    completions: list[str]
    #: The token ids, masks and positions of prompts + completions.
    sequences: Completions
    #: The score of each completion after the EOS penalty and the clip: ``[B]``.
    scores: Tensor
    #: The mean score before the EOS penalty and the clip, and each reward source's mean.
    raw_score_mean: float
    score_parts: dict[str, float]
    #: Log-probabilities of the sampled tokens under the policy and the reference.
    logp: Tensor
    ref_logp: Tensor
    #: The critic's values (float32; zeros without a critic).
    values: Tensor
    #: The policy's per-token entropy.
    entropy: Tensor
    #: Seconds spent generating, scoring and in the forward passes.
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def mask(self) -> Tensor:
        return self.sequences.completion_mask

    @property
    def tokens(self) -> Tensor:
        return self.sequences.completion_ids


def collect(models: PPOModels, tokenizer: Any, reward: CombinedReward, prompts: list[str],
            config: RLHFConfig, device: torch.device) -> RolloutBatch:
    """Generate, score and run the forward passes for one batch of ``prompts``: ``num_generations``
    completions of each, adjacent (the groups that grpo and rloo compare)."""
    c = config
    t_start = time.perf_counter()
    prompts = [p for p in prompts for _ in range(c.num_generations)]
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, device)
    from_sampling = c.old_logprobs == "sampling"
    with precision.autocast(c.mixed_precision, device):
        sequences, sampled = sample(models.policy, tokenizer, prompt_ids, prompt_mask, c.max_new_tokens,
                                    c.temperature, synced=models.sharded, keep_scores=from_sampling)
    tokens = sequences.completion_ids
    t_generated = time.perf_counter()

    completions = decode(tokenizer, tokens, sequences.completion_mask)
    with precision.autocast(c.mixed_precision, device):
        scores, score_parts = reward(prompts, completions)
    raw_score_mean = float(scores.mean())
    scores = scores.to(device)
    if c.missing_eos_penalty is not None:
        scores = scores - c.missing_eos_penalty * (~sequences.has_eos).to(scores.dtype)
    if c.score_clip is not None:
        scores = scores.clamp(-c.score_clip, c.score_clip)
    t_scored = time.perf_counter()

    with torch.no_grad(), precision.autocast(c.mixed_precision, device):
        values = None
        if sampled is not None:  # old_logprobs: sampling
            logp, entropy = sampled.logp, sampled.entropy
            if models.with_head is not None:  # the values need the policy's trunk anyway
                _, values = models.policy_forward(sequences)
        else:
            logits, values = models.policy_forward(sequences)
            logp = token_logprobs(logits, tokens, c.temperature)
            entropy = token_entropy(logits, c.temperature)
            del logits
        if values is None:  # a separate critic, or none (critic-free advantages: nothing to value)
            values = models.values(sequences) if uses_critic(c.advantage) else torch.zeros_like(logp)
        ref_logp = token_logprobs(models.reference_logits(sequences), tokens, c.temperature)
    t_forward = time.perf_counter()
    return RolloutBatch(
        prompts=prompts, completions=completions, sequences=sequences, scores=scores,
        raw_score_mean=raw_score_mean, score_parts=score_parts, logp=logp, ref_logp=ref_logp,
        values=values.float(), entropy=entropy,
        timings={"generate_s": t_generated - t_start, "score_s": t_scored - t_generated,
                 "forward_s": t_forward - t_scored},
    )
