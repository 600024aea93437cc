"""The process-wide settings both front ends share: device, dtype, seeding and threads.

One place, so that a control run and an RLHF run resolve ``device: auto`` the same way, seed the
same generators, and (when torch.distributed arrives) learn their rank here too.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from ppokit.errors import ConfigError


def resolve_device(name: str, field: str = "device") -> torch.device:
    """``'auto'`` (CUDA when available, else the CPU), ``'cpu'``, ``'cuda'``, ``'cuda:N'`` or ``'mps'``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"config field {field!r} = {name!r} is not a device ('auto', 'cpu', 'cuda', 'cuda:N')") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config field {field!r} = {name!r}: CUDA is not available on this machine")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``'auto'`` is bfloat16 on a GPU that supports it and float32 everywhere else."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's global and torch's generators (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(count: int) -> None:
    """torch's intra-op threads; 0 keeps torch's default."""
    if count > 0:
        torch.set_num_threads(count)


def setup(seed: int, device: str, threads: int) -> torch.device:
    """Threads, seeds and device for a run, in that order; returns the device."""
    set_threads(threads)
    seed_everything(seed)
    return resolve_device(device)
