"""Gradient checkpointing that keeps the KV cache: each transformer block recomputed in the backward pass."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from ppokit.errors import ConfigError


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer layers of ``model`` (the classes its ``_no_split_modules`` names), outermost only."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    blocks: list[nn.Module] = []
    inside: list[str] = []
    for path, module in model.named_modules():
        if type(module).__name__ in names and not any(path.startswith(f"{outer}.") for outer in inside):
            blocks.append(module)
            inside.append(path)
    return blocks


def _recomputed(forward: Any, *args: Any, **kwargs: Any) -> Any:
    """``forward``, its activations dropped and recomputed in the backward pass when autograd records it."""
    if torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint

        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Recompute every transformer block's activations in the backward pass instead of storing them.

    transformers' own switch checkpoints only in training mode, and only by turning the KV cache off;
    ppokit keeps its models in eval mode (no dropout, so the rollout's log-probs and the update's
    agree) and samples with the cache. So each block's ``forward`` is wrapped instead: under autograd
    (the update's forward passes) it runs inside a non-reentrant :func:`torch.utils.checkpoint.checkpoint`,
    under ``no_grad`` (generation, the rollout's forward passes) it runs as it is, cache included. The
    non-reentrant form needs no input that requires grad, so a frozen trunk under LoRA adapters works
    without ``enable_input_require_grads``. Returns how many blocks were wrapped."""
    blocks = transformer_blocks(model)
    if not blocks:
        raise ConfigError(f"config field 'gradient_checkpointing': cannot find the transformer blocks of "
                          f"{type(model).__name__} (its _no_split_modules names none)")
    for block in blocks:
        forward = block.forward
        if not (isinstance(forward, functools.partial) and forward.func is _recomputed):  # not wrapped yet
            # An instance attribute: nn.Module.__call__ (and its hooks, FSDP's too) stays outside the recompute.
            block.forward = functools.partial(_recomputed, forward)
    return len(blocks)
