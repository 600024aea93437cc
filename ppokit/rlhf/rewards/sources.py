"""Where the score comes from: reward models, Python callables, and weighted sums of them.

A *reward source* maps ``(prompts, completions)`` texts to one score per completion. ppokit has three
kinds, a trained reward model, a plain Python callable and an HTTP endpoint
(:mod:`ppokit.rlhf.rewards.remote`), and any weighted sum of them. Sources read text rather than
token ids so a reward model with its own tokenizer works, and a callable sees what a person would read.

Callables, and how a slow one runs concurrently, live in :mod:`ppokit.rlhf.rewards.functions`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from ppokit.errors import ConfigError
from ppokit.rlhf.config import RLHFConfig
from ppokit.rlhf.models.loading import pad_right
from ppokit.rlhf.rewards.functions import (  # noqa: F401 - re-exported: the reward sources' one import
    CallableReward,
    RewardFn,
    RewardPool,
    import_callable,
    real_numbers,
    reward_import,
    split_batch,
)
from ppokit.rlhf.rewards.remote import HTTPReward
from ppokit.urls import url_scheme


class RewardModelScorer:
    """Scores texts with a reward model: tokenises prompt + completion with the reward model's own
    tokenizer (right-padded), reads the normalised scalar."""

    def __init__(self, path: str, dtype: torch.dtype, device: torch.device, trust_remote_code: bool = False,
                 batch_size: int = 64, attn_implementation: str | None = None) -> None:
        from ppokit.rlhf.models.loading import load_reward_model, load_tokenizer, model_positions

        self.name = path
        #: Tokens past the model's positions are cut off (else the position embedding fails with an
        #: IndexError); None when its config states no limit.
        self.max_length = model_positions(path, trust_remote_code)
        self.tokenizer = load_tokenizer(path, trust_remote_code)
        self.model = load_reward_model(path, dtype, device, trust_remote_code, attn_implementation)
        if self.model.kind == "classification" and self.model.model.config.pad_token_id is None:
            self.model.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.requires_grad_(False)
        self.device = device
        self.batch_size = batch_size
        #: ``offload_frozen``: the model waits in CPU memory between scoring calls (:meth:`offload`).
        self.offloaded: Any = None
        #: ``share_reward_trunk``: the critic's LoRA adapters on this model's trunk (:meth:`share_trunk`).
        self.shared_adapters: Any = None

    def offload(self) -> None:
        """Keep the model in CPU memory and put it on the device only while it scores."""
        from ppokit.rlhf.models.offload import CPUOffload

        self.offloaded = CPUOffload(self.model, self.device)

    def share_trunk(self, adapters: Any) -> None:
        """The critic's LoRA adapters (a peft model) now sit on this model's trunk: score with them switched
        off, so the scores are the reward model's own whatever the critic learns."""
        if self.offloaded is not None:
            raise ConfigError(f"reward model {self.name!r} is offloaded to the CPU; it cannot also be the critic's trunk")
        self.shared_adapters = adapters

    @contextlib.contextmanager
    def _scoring_model(self) -> Iterator[Any]:
        """The reward model as it scores: on the device, without the critic's adapters."""
        with contextlib.ExitStack() as stack:
            if self.offloaded is not None:
                stack.enter_context(self.offloaded.on_device())
            if self.shared_adapters is not None:
                stack.enter_context(self.shared_adapters.disable_adapter())
            yield self.model

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str]) -> Tensor:
        scores = []
        with self._scoring_model() as model:
            for start in range(0, len(prompts), self.batch_size):
                ids, mask = encode_pairs(self.tokenizer, prompts[start:start + self.batch_size],
                                         completions[start:start + self.batch_size], self.device, self.max_length)
                scores.append(model(ids, mask).float().cpu())
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
                "no reward source: set 'rewards' to a reward-model directory, a 'module:function' callable or an "
                "http(s):// reward server"
            )
        # Plain functions get CallableReward's checks (length, finiteness, a named error).
        self.sources = [s if isinstance(s, (CallableReward, RewardModelScorer, HTTPReward)) else CallableReward(s)
                        for s in sources]
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

    def close(self) -> None:
        """Stop what the sources started (a reward function's worker processes)."""
        for source in self.sources:
            if isinstance(source, CallableReward):
                source.close()


def reward_options(config: RLHFConfig) -> dict[str, Any]:
    """:func:`build_reward`'s keyword options from an :class:`~ppokit.rlhf.config.RLHFConfig`."""
    return {"attn_implementation": config.attn_implementation, "timeout": config.reward_timeout,
            "retries": config.reward_retries, "batch_size": config.reward_batch_size,
            "workers": config.reward_workers, "pool": config.reward_pool}


def build_reward(specs: Sequence[Any], weights: Sequence[float] | None, dtype: torch.dtype,
                 device: torch.device, trust_remote_code: bool = False,
                 attn_implementation: str | None = None, *, timeout: float | None = None, retries: int = 3,
                 batch_size: int = 64, workers: int = 1, pool: RewardPool = "thread") -> CombinedReward:
    """Reward sources from config entries: ``http://…`` or ``https://…`` is a reward server, a directory
    (or hub id) is a reward model, ``'module:function'`` or a Python callable is a function.

    The keywords are the config's ``reward_*`` fields: ``timeout`` (seconds per function call or HTTP
    request; None lets a function take as long as it takes, and gives a request 60 s), ``retries`` and
    ``batch_size`` (HTTP), ``workers`` (concurrent calls of each function or server) and ``pool``
    (``'thread'`` or ``'process'``, for functions)."""
    sources: list[CallableReward | RewardModelScorer | HTTPReward] = []
    for spec in specs:
        if isinstance(spec, (CallableReward, RewardModelScorer, HTTPReward)):
            sources.append(spec)
        elif callable(spec):
            sources.append(CallableReward(spec, workers=workers, timeout=timeout, pool=pool))
        elif url_scheme(spec) is not None:  # http(s), or a scheme HTTPReward refuses by name
            sources.append(HTTPReward(str(spec), timeout=60.0 if timeout is None else timeout, retries=retries,
                                      batch_size=batch_size, workers=workers))
        elif reward_import(spec) is not None:
            sources.append(CallableReward(str(spec), workers=workers, timeout=timeout, pool=pool))
        elif isinstance(spec, str):
            sources.append(RewardModelScorer(spec, dtype, device, trust_remote_code,
                                             attn_implementation=attn_implementation))
        else:
            raise ConfigError(f"reward source {spec!r}: expected a directory, a 'module:function', an http(s):// URL "
                              "or a callable")
    return CombinedReward(sources, weights)
