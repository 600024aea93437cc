"""Where the score comes from: reward models, Python callables, and weighted sums of them.

A *reward source* maps ``(prompts, completions)`` texts to one score per completion. ppokit has two
kinds, a trained reward model and a plain Python callable, and any weighted sum of them. Sources
read text rather than token ids so a reward model with its own tokenizer works, and a callable
sees what a person would read.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ppokit.errors import ConfigError, TrainingError
from ppokit.rlhf.common import pad_right

RewardFn = Callable[[list[str], list[str]], Sequence[float]]


def real_numbers(values: Any, source: str) -> list[float]:
    """``values`` as floats when it is a sequence (list, tuple, 1-D array or tensor) of real numbers
    (ints, floats, NumPy or torch scalars); anything else, a dict or a string among them, is an error
    naming ``source`` and the offending type rather than something quietly coerced."""
    if isinstance(values, (np.ndarray, Tensor)):
        if isinstance(values, np.ndarray):
            real = values.dtype.kind in "iuf"
        else:
            real = values.dtype != torch.bool and not values.is_complex()
        if values.ndim != 1 or not real:
            raise TrainingError(f"{source} must return a 1-D sequence of real numbers, got a {values.ndim}-D "
                                f"{type(values).__name__} of {values.dtype}")
        return [float(v) for v in values.tolist()]
    if not isinstance(values, (list, tuple)):
        raise TrainingError(f"{source} must return a list of numbers, got {type(values).__name__}")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, (Tensor, np.ndarray)) and v.ndim == 0:
            v = v.item()
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TrainingError(f"{source} returned a {type(v).__name__} ({v!r:.40}) at position {i}; scores must be "
                                "real numbers (int, float, or a NumPy/torch scalar)")
        out.append(float(v))
    return out


class CallableReward:
    """A Python function ``fn(prompts, completions) -> list[float]``, given directly or as
    ``'module:function'`` (the module is imported; a file path is not executed)."""

    def __init__(self, fn: RewardFn | str) -> None:
        if isinstance(fn, str):
            self.name = fn
            fn = import_callable(fn)
        else:
            self.name = getattr(fn, "__qualname__", repr(fn))
        self.fn = fn

    def __call__(self, prompts: list[str], completions: list[str]) -> Tensor:
        try:
            values = self.fn(list(prompts), list(completions))
        except Exception as err:  # noqa: BLE001 - the user's code; report it with its name
            raise TrainingError(f"reward function {self.name} raised {type(err).__name__}: {err}") from err
        values = real_numbers(values, f"reward function {self.name}")
        if len(values) != len(completions):
            raise TrainingError(
                f"reward function {self.name} returned {len(values)} scores for {len(completions)} completions"
            )
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            raise TrainingError(f"reward function {self.name} returned a non-finite score ({values[bad[0]]}) for completion {bad[0]}")
        return torch.tensor(values, dtype=torch.float32)


def reward_import(spec: object) -> str | None:
    """The module that building the reward source ``spec`` would import (a ``'module:function'``
    string that is not an existing path); None for a reward-model directory or a Python object."""
    if isinstance(spec, str) and ":" in spec and not Path(spec).exists():
        return spec.partition(":")[0] or spec
    return None


def import_callable(spec: str) -> RewardFn:
    """``'package.module:function'`` → the function, with a clear error for each way it can fail."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"reward {spec!r}: expected 'module:function'")
    # Like other 'module:attr' loaders (uvicorn, gunicorn), look in the working directory too, so a
    # rules.py next to the user's data works from the console script.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"reward {spec!r}: cannot import module {module_name!r}: {err}") from None
    fn: Any = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ConfigError(f"reward {spec!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ConfigError(f"reward {spec!r}: {attr!r} is not callable")
    return fn


class RewardModelScorer:
    """Scores texts with a reward model: tokenises prompt + completion with the reward model's own
    tokenizer (right-padded), reads the normalised scalar."""

    def __init__(self, path: str, dtype: torch.dtype, device: torch.device, trust_remote_code: bool = False,
                 batch_size: int = 64) -> None:
        from ppokit.rlhf.models import load_reward_model, load_tokenizer

        self.name = path
        self.tokenizer = load_tokenizer(path, trust_remote_code)
        self.model = load_reward_model(path, dtype, device, trust_remote_code)
        if self.model.kind == "classification" and self.model.model.config.pad_token_id is None:
            self.model.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.requires_grad_(False)
        self.device = device
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str]) -> Tensor:
        scores = []
        for start in range(0, len(prompts), self.batch_size):
            ids, mask = encode_pairs(self.tokenizer, prompts[start:start + self.batch_size],
                                     completions[start:start + self.batch_size], self.device)
            scores.append(self.model(ids, mask).float().cpu())
        return torch.cat(scores)


def encode_pairs(tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], device: torch.device,
                 max_length: int | None = None) -> tuple[Tensor, Tensor]:
    """Right-padded ``prompt + response`` token ids, tokenised in two parts and joined, the way the
    policy produced them (a joint tokenisation could merge across the boundary)."""
    p_ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    r_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    rows = [p + r for p, r in zip(p_ids, r_ids)]
    if max_length is not None:
        rows = [row[:max_length] for row in rows]
    ids, mask = pad_right(rows, tokenizer.pad_token_id)
    return ids.to(device), mask.to(device)


class CombinedReward:
    """The weighted sum :math:`s = \\sum_i w_i\\, s_i(x, y)` of several reward sources."""

    def __init__(self, sources: Sequence[Any], weights: Sequence[float] | None = None) -> None:
        if not sources:
            raise ConfigError(
                "no reward source: set 'rewards' to a reward-model directory or a 'module:function' callable"
            )
        # Plain functions get CallableReward's checks (length, finiteness, a named error).
        self.sources = [s if isinstance(s, (CallableReward, RewardModelScorer)) else CallableReward(s) for s in sources]
        self.weights = [1.0] * len(self.sources) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.sources):
            raise ConfigError(f"{len(self.weights)} reward weights for {len(self.sources)} reward sources")

    def __call__(self, prompts: list[str], completions: list[str]) -> tuple[Tensor, dict[str, float]]:
        total = torch.zeros(len(completions))
        parts = {}
        for i, (source, weight) in enumerate(zip(self.sources, self.weights)):
            score = source(prompts, completions).float().cpu()
            total += weight * score
            if len(self.sources) > 1:
                parts[f"score_{i}"] = float(score.mean())
        return total, parts


def build_reward(specs: Sequence[Any], weights: Sequence[float] | None, dtype: torch.dtype,
                 device: torch.device, trust_remote_code: bool = False) -> CombinedReward:
    """Reward sources from config entries: a directory (or hub id) is a reward model,
    ``'module:function'`` or a Python callable is a function."""
    sources: list[CallableReward | RewardModelScorer] = []
    for spec in specs:
        if callable(spec):
            sources.append(CallableReward(spec))
        elif reward_import(spec) is not None:
            sources.append(CallableReward(str(spec)))
        elif isinstance(spec, str):
            sources.append(RewardModelScorer(spec, dtype, device, trust_remote_code))
        else:
            raise ConfigError(f"reward source {spec!r}: expected a directory, a 'module:function' or a callable")
    return CombinedReward(sources, weights)
