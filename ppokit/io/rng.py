"""Every random number generator a run draws from, captured and restored for exact resume."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from ppokit.io.state_codec import decode, encode


def rng_state() -> dict[str, Any]:
    """Python's, numpy's legacy global and torch's (CPU and every CUDA device) generator states, as JSON."""
    state: dict[str, Any] = {
        "python": encode(random.getstate()),
        "numpy": encode(np.random.get_state(legacy=True)),
        "torch": encode(torch.get_rng_state().numpy()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [encode(s.numpy()) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(decode(state["python"]))
    np.random.set_state(decode(state["numpy"]))
    torch.set_rng_state(torch.from_numpy(decode(state["torch"])))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.from_numpy(decode(s)) for s in state["cuda"]])
