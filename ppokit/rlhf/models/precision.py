"""Mixed precision for the RLHF stages: which dtype the weights keep, and the autocast around forward passes.

``mixed_precision: bf16`` or ``fp16`` keeps float32 weights (and optimiser moments) and runs the
matrix products of every forward pass in the half type under :func:`torch.autocast`; log-probs,
entropies and losses are computed in float32 from the logits (:mod:`ppokit.rlhf.models.generation` upcasts).
fp16's narrow exponent range needs the loss scaled up before the backward pass and the gradients
scaled back before they are clipped: :class:`~ppokit.core.optim.LossScaledOptimizer`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ppokit.core.optim import LossScaledOptimizer, Optimizer
from ppokit.errors import ConfigError
from ppokit.rlhf.config import RLHFConfig

HALF_TYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def weights_dtype(config: RLHFConfig, dtype: torch.dtype) -> torch.dtype:
    """The dtype the trainable weights load in: float32 under mixed precision when ``dtype`` is
    'auto' (which alone would pick bfloat16 weights on a GPU), else ``dtype``."""
    if config.mixed_precision != "no" and config.dtype == "auto":
        return torch.float32
    return dtype


def autocast(mode: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The autocast context of ``mode`` ('no', 'bf16', 'fp16') on ``device``; a no-op for 'no'."""
    if mode == "no":
        return contextlib.nullcontext()
    if mode == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"config field 'mixed_precision' = 'bf16': the GPU {torch.cuda.get_device_name(device)} "
                          "does not support bfloat16; use fp16")
    return torch.autocast(device_type=device.type, dtype=HALF_TYPES[mode])


def scaled_for(mode: str, optimizer: Optimizer) -> Optimizer:
    """``optimizer`` with dynamic loss scaling under fp16; unchanged otherwise (bf16 has float32's range)."""
    return LossScaledOptimizer(optimizer) if mode == "fp16" else optimizer
