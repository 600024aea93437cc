"""Per-token log-probabilities and entropies over a vocabulary, computed only where PPO reads them.

Two savings, neither of which changes what is computed:

- **Logits only at the completion's positions.** A causal LM's head (a third of GPT-2 small's
  weights) would otherwise project every prompt position too, and PPO throws those logits away.
  :func:`completion_logits_of` asks the model for the positions that predict completion tokens
  (transformers' ``logits_to_keep``) and slices the full logits only for a model without it.
- **No float32 log-softmax over the vocabulary.** :func:`token_logprobs` reads the chosen token's
  logit and a log-sum-exp computed a slice of rows at a time; its backward pass rebuilds the softmax
  a slice at a time too, so neither a ``[batch, length, vocab]`` float32 copy of the logits nor a
  log-softmax is kept for the backward pass (with bf16 logits the copy is twice their size).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import Tensor

#: Elements of one slice of float32 work (rows × vocabulary): 16 MiB, whatever the vocabulary.
_SLICE_ELEMENTS = 1 << 22


def _rows_per_slice(vocab: int) -> int:
    return max(1, _SLICE_ELEMENTS // max(vocab, 1))


class _TokenLogProb(torch.autograd.Function):
    r"""``log softmax(z / T)[y]`` per row of ``z``, with the gradient
    :math:`\partial/\partial z_v = (\mathbb{1}[v = y] - \pi_T(v)) / T`."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, tokens: Tensor, temperature: float) -> Tensor:
        vocab = logits.shape[-1]
        flat, picked_ids = logits.reshape(-1, vocab), tokens.reshape(-1, 1)
        lse = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
        step = _rows_per_slice(vocab)
        for start in range(0, flat.shape[0], step):
            lse[start:start + step] = torch.logsumexp(flat[start:start + step].float() / temperature, dim=-1)
        picked = flat.gather(-1, picked_ids).squeeze(-1).float() / temperature
        ctx.save_for_backward(logits, tokens, lse)
        ctx.temperature = temperature
        return (picked - lse).view(tokens.shape)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None]:
        logits, tokens, lse = ctx.saved_tensors
        temperature = ctx.temperature
        vocab = logits.shape[-1]
        flat, picked_ids = logits.reshape(-1, vocab), tokens.reshape(-1, 1)
        scale = grad.reshape(-1, 1).float() / temperature
        out = torch.empty_like(flat)
        step = _rows_per_slice(vocab)
        for start in range(0, flat.shape[0], step):
            rows = slice(start, start + step)
            probs = torch.exp(flat[rows].float() / temperature - lse[rows, None])
            piece = probs.mul_(scale[rows]).neg_()
            piece.scatter_add_(-1, picked_ids[rows], scale[rows])
            out[rows] = piece
        return out.view(logits.shape), None, None


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    r"""Log-probability (float32) of each token under ``softmax(logits / T)``.

    .. math:: \log \pi_T(y_t) = z_{y_t}/T - \log \textstyle\sum_v \exp(z_v / T)

    The log-sum-exp runs over slices of rows in float32, so no full-vocabulary float32 tensor is
    built, and the backward pass keeps only the logits and one number per row.
    """
    return _TokenLogProb.apply(logits, tokens, float(temperature))


def token_entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    r"""Entropy :math:`-\sum_v \pi_T(v)\log\pi_T(v) = \log Z - \sum_v \pi_T(v)\, z_v/T` of each
    position's temperature-scaled distribution (float32).

    Without gradients (entropy only logged) it runs a slice of rows at a time; with them (an
    entropy bonus) autograd needs the whole graph anyway.
    """
    if torch.is_grad_enabled() and logits.requires_grad:
        logp = torch.log_softmax(logits.float() / temperature, dim=-1)
        return -(logp.exp() * logp).sum(-1)
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
    step = _rows_per_slice(vocab)
    for start in range(0, flat.shape[0], step):
        logp = torch.log_softmax(flat[start:start + step].float() / temperature, dim=-1)
        out[start:start + step] = -(logp.exp() * logp).sum(-1)
    return out.view(logits.shape[:-1])


def completion_positions(prompt_length: int, total_length: int, device: torch.device) -> Tensor:
    """The positions whose logits predict the completion tokens: position ``t`` predicts token ``t + 1``."""
    return torch.arange(prompt_length - 1, total_length - 1, device=device)


@functools.lru_cache(maxsize=64)
def _forward_parameters(model_class: Any) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(model_class.forward).parameters)
    except (TypeError, ValueError, AttributeError):  # a forward without a readable signature
        return frozenset()


def forward_takes(model: Any, *names: str) -> bool:
    """Whether the forward of ``model`` (a transformers model, or a peft model around one) names
    every one of ``names`` among its parameters."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(names) <= _forward_parameters(type(base))  # type: ignore[arg-type]


def keeps_logits(model: Any) -> bool:
    """Whether ``model`` can project only chosen positions through its head (``logits_to_keep``)."""
    return forward_takes(model, "logits_to_keep")


def completion_logits_of(model: Any, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor,
                         prompt_length: int, **kwargs: Any) -> tuple[Tensor, Any]:
    """``(logits, output)``: the logits that predict the completion tokens (``[B, R, vocab]``) and
    the model's output (for ``hidden_states``), computing only those positions where the model allows."""
    positions = completion_positions(prompt_length, input_ids.shape[1], input_ids.device)
    if keeps_logits(model):
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    use_cache=False, logits_to_keep=positions, **kwargs)
        return out.logits, out
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                **kwargs)
    return out.logits[:, prompt_length - 1: -1], out
