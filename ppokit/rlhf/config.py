"""Configuration of the three RLHF stages: one dataclass per trainer, every field documented.

The same :mod:`ppokit.configuration` machinery as control runs builds them from YAML, ``--set``
overrides or code, and rejects a bad value with a message naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from ppokit.config_fields import shared
from ppokit.configuration import AT_LEAST_1, NON_NEGATIVE, POSITIVE, adapt, doc, given_fields, records_given, validate
from ppokit.core.choices import DistBackend, KLEstimator, OnNonFinite, ScheduleKind
from ppokit.errors import ConfigError
from ppokit.io.trackers import TrackerName
from ppokit.urls import redact_url, url_scheme

#: G for grpo and rloo when the config leaves num_generations to them (they compare a prompt's completions).
GROUP_GENERATIONS = 4

#: Fields that name files or directories; a run directory records them as absolute paths.
PATH_FIELDS = ("model", "data", "eval_data", "policy", "reference", "rewards")
#: Fields a resumed PPO run may change: its budget, and how it is watched and saved. Every other
#: field shaped the run so far; changing it on resume is refused.
RESUMABLE_FIELDS = frozenset({
    "total_updates", "run_dir", "progress", "tensorboard", "checkpoint_every", "checkpoint_minutes",
    "keep_checkpoints", "sample_every", "num_samples", "on_nonfinite", "device", "torch_threads",
    "trust_remote_code", "trackers", "dist_backend", "dist_timeout", "reward_timeout", "reward_retries",
    "reward_batch_size", "reward_workers", "reward_pool",
})

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
PreferenceFormat = Literal["auto", "pairs", "rankings", "ratings"]


#: Fields a resumed SFT or reward-training run may change: how it is watched, saved and run. Every
#: other field shaped the run so far (epochs too: the learning rate decays over all of them).
SUPERVISED_RESUMABLE_FIELDS = frozenset({
    "run_dir", "progress", "tensorboard", "trackers", "checkpoint_every", "checkpoint_minutes", "keep_checkpoints",
    "eval_every", "device", "torch_threads", "trust_remote_code", "dist_backend", "dist_timeout",
})


class LoRASettings(Protocol):
    """The ``lora_*`` fields a config with LoRA adapters has (:func:`ppokit.rlhf.models.lora.with_lora`)."""

    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_target_modules: list[str] | None


@dataclass
class LMRuntime:
    """Fields every RLHF stage shares: where the run goes and how models are loaded."""

    seed: int = shared("seed", default=0)
    device: str = shared("device", default="auto")
    dtype: Dtype = doc("Model weights dtype: 'auto' (float32 on CPU, bfloat16 on GPUs that support it), 'float32', 'bfloat16', 'float16'.", default="auto")
    torch_threads: int = shared("torch_threads", default=0)
    trust_remote_code: bool = doc("Allow a hub model's own Python code to run when loading it. Off unless you trust the model.", default=False)
    run_dir: str | None = shared("run_dir", default=None)
    tensorboard: bool = shared("tensorboard", default=True)
    trackers: list[TrackerName] = shared("trackers", default_factory=list)
    progress: bool = shared("progress", default=True)
    skip_bad_rows: bool = doc("Skip malformed data rows (and count them) instead of stopping at the first.", default=False)
    dist_backend: DistBackend = shared("dist_backend", default="auto")
    dist_timeout: float = shared("dist_timeout", default=600.0)


@dataclass
class SupervisedConfig(LMRuntime):
    """What SFT and reward training share: the model, optimiser steps over epochs of the data, LoRA,
    evaluation and checkpoints."""

    model: str = shared("model", default="")
    data: str = shared("data", default="")
    eval_data: str | None = shared("eval_data", default=None)
    prompt_column: str = shared("prompt_column", default="prompt")
    max_length: int = shared("max_length", default=512)
    epochs: int = shared("epochs", default=1)
    batch_size: int = shared("batch_size", default=8)
    weight_decay: float = shared("weight_decay", default=0.0)
    max_grad_norm: float = shared("max_grad_norm", default=1.0)
    gradient_accumulation_steps: int = shared("gradient_accumulation_steps", default=1)
    lora: bool = shared("lora", default=False)
    lora_r: int = shared("lora_r", default=8)
    lora_alpha: int = shared("lora_alpha", default=16)
    lora_dropout: float = shared("lora_dropout", default=0.0)
    lora_target_modules: list[str] | None = shared("lora_target_modules", default=None)
    eval_every: int = shared("eval_every", default=0)
    checkpoint_every: int = shared("checkpoint_every", default=0)
    checkpoint_minutes: float = shared("checkpoint_minutes", default=10.0)
    keep_checkpoints: int = shared("keep_checkpoints", default=2)

    def __post_init__(self) -> None:
        validate(self)  # each field's type, choices and rule; what follows concerns several fields
        if not self.model:
            raise ConfigError("config field 'model' is required: a hub id or a local model directory")
        if self.gradient_accumulation_steps > self.batch_size:
            raise ConfigError(f"config field 'gradient_accumulation_steps' = {self.gradient_accumulation_steps} is "
                              f"invalid: the batch of {self.batch_size} cannot be split into more micro-batches than "
                              "it has rows")


@records_given
@dataclass
class SFTConfig(SupervisedConfig):
    """Supervised fine-tuning of a causal LM on prompt/response pairs (loss on the response only)."""

    response_column: str = shared("response_column", default="response")
    learning_rate: float = shared("learning_rate", default=5e-5)
    add_eos: bool = doc("Append the EOS token to every response so the model learns to stop.", default=True)
    eval_fraction: float = shared("eval_fraction", default=0.0)


@records_given
@dataclass
class RewardConfig(SupervisedConfig):
    """Reward-model training from human preferences: pairs, K-way rankings or scalar ratings."""

    learning_rate: float = shared("learning_rate", default=1e-5)
    eval_fraction: float = shared("eval_fraction", default=0.1)
    format: PreferenceFormat = doc("'pairs' (prompt, chosen, rejected), 'rankings' (prompt, responses, ranking), 'ratings' (prompt, response, rating) or 'auto' (from the columns).", default="auto")
    chosen_column: str = doc("Column of the preferred response (pairs).", default="chosen")
    rejected_column: str = doc("Column of the dispreferred response (pairs).", default="rejected")
    responses_column: str = doc("Column of the list of K responses (rankings).", default="responses")
    ranking_column: str = doc("Column of the K ranks, aligned with responses, 1 = best; equal ranks are ties (rankings).", default="ranking")
    response_column: str = shared("response_column", default="response")
    rating_column: str = doc("Column of the numeric rating, higher = better (ratings).", default="rating")
    ratings_as: Literal["pairs", "regression"] = doc("'pairs' (within a prompt, the higher-rated response is preferred) or 'regression' (fit the standardised rating).", default="pairs")
    head: Literal["classification", "value_head"] = doc("'classification' (AutoModelForSequenceClassification, num_labels=1) or 'value_head' (a linear head on a causal LM's last hidden state).", default="classification")


@records_given
@dataclass
class RLHFConfig(LMRuntime):
    """PPO on a causal LM: generate completions for prompts, score them, and update the policy."""

    # --- models ---
    policy: str = doc("Hub id or directory of the policy to train (usually the SFT model).", default="")
    reference: str | None = doc("Frozen reference model; null = a frozen copy of the starting policy (with LoRA: the adapter-free base).", default=None)
    rewards: list[str] = doc("Reward sources: reward-model directories (from `ppokit rlhf reward`, or a sequence-classification model) Python callables 'module:function(prompts, completions) -> list[float]' and/or reward servers 'http(s)://host:port/path' (POST {prompts, completions} -> {scores}).", default_factory=list)
    reward_weights: list[float] | None = doc("Weight of each reward source, in order; null weights them all 1.", default=None)
    value_model: Literal["separate", "head", "lora"] = doc("'separate' (a critic network of its own), 'head' (a value head on the policy's trunk) or 'lora' (LoRA adapters and a value head on a frozen copy of the trunk named by value_init). Not used by the critic-free advantages.", default="separate")
    value_init: Literal["reward", "policy"] = doc("Initialise a separate or LoRA critic from 'reward' (the first reward model) or 'policy'.", default="reward")
    share_reward_trunk: bool = doc("With value_model: lora and value_init: reward, the critic's adapters sit on the reward model's own weights (the reward scores with them switched off): one trunk for both.", default=False)
    offload_frozen: bool = doc("Keep the frozen roles (reference, reward models) in CPU memory and move each to the device only while it runs.", default=False)
    frozen_dtype: Dtype = doc("Weights dtype of the frozen roles (reference, reward models); 'auto' uses dtype.", default="auto")
    mixed_precision: Literal["no", "bf16", "fp16"] = doc("Autocast the forward passes to bf16 or fp16 with the weights kept in dtype (use dtype: float32); fp16 adds dynamic loss scaling. 'no' runs in dtype.", default="no")
    gradient_checkpointing: bool = doc("Recompute the trainable models' activations in the backward pass instead of storing them (less memory, ~30% more compute).", default=False)
    attn_implementation: str | None = doc("Attention kernel passed to transformers: 'sdpa', 'eager', 'flash_attention_2' (when installed); null lets transformers choose.", default=None)
    lora: bool = shared("lora", default=False)
    lora_r: int = shared("lora_r", default=8)
    lora_alpha: int = shared("lora_alpha", default=16)
    lora_dropout: float = shared("lora_dropout", default=0.0)
    lora_target_modules: list[str] | None = shared("lora_target_modules", default=None)

    # --- data ---
    data: str = shared("data", default="")
    prompt_column: str = shared("prompt_column", default="prompt")
    max_prompt_length: int = doc("Maximum prompt tokens; longer prompts are an error (or skipped).", default=256, rule=AT_LEAST_1)

    # --- reward sources ---
    reward_timeout: float = doc("Seconds one reward call may take before it fails: a function call, or one attempt of an HTTP request (a deadline for connecting, sending and the whole answer).", default=60.0, rule=POSITIVE)
    reward_retries: int = doc("Retries of a failed HTTP reward request (connection error, missed deadline, 5xx), with exponential backoff (0.5 s doubling, at most 30 s).", default=3, rule=NON_NEGATIVE)
    reward_batch_size: int = doc("Completions per HTTP reward request.", default=64, rule=AT_LEAST_1)
    reward_workers: int = doc("Concurrent calls of each reward function (the batch split into this many chunks) or server (requests in flight); 1 calls them one batch at a time.", default=1, rule=AT_LEAST_1)
    reward_pool: Literal["thread", "process"] = doc("Where concurrent reward-function calls run: 'thread', or 'process' (worker processes, for pure-Python functions the GIL serialises; 'module:function' rewards only).", default="thread")

    # --- generation ---
    max_new_tokens: int = doc("Maximum completion tokens per prompt.", default=32, rule=AT_LEAST_1)
    temperature: float = doc("Sampling temperature; log-probs are computed at the same temperature.", default=1.0, rule=POSITIVE)
    old_logprobs: Literal["recompute", "sampling"] = doc("Where the old policy's log-probs (the PPO ratio's denominator) come from: 'recompute' (a forward pass over the sampled batch, so the first minibatch's ratio is exactly 1) or 'sampling' (the KV-cache logits the tokens were drawn from: one policy forward pass fewer per update, as TRL does; the first minibatch's deviation is logged as first_ratio_deviation). With value_model: head the forward pass runs anyway, for the values.", default="recompute")
    missing_eos_penalty: float | None = doc("Subtract this from the score of a completion that never emits EOS; null disables.", default=None, rule=NON_NEGATIVE)

    # --- reward shaping ---
    kl_coef: float = shared("kl_coef", default=0.05)
    kl_estimator: KLEstimator = doc("Per-token KL estimator where the KL is in the reward: 'k1' (log-ratio) or 'k3' (non-negative, low variance); a KL loss term always uses k3.", default="k1")
    adaptive_kl: bool = shared("adaptive_kl", default=False)
    kl_target: float = shared("kl_target", default=6.0)
    kl_horizon: int = doc("Horizon (in completions) of the adaptive β controller.", default=10_000, rule=AT_LEAST_1)
    score_clip: float | None = doc("Clip the combined score to ±this; null disables.", default=None, rule=POSITIVE)

    # --- advantages ---
    advantage: Literal["gae", "grpo", "rloo", "reinforce_pp"] = doc("Advantage estimator: 'gae' (a critic, GAE over tokens), or critic-free (no critic built, trained or saved) 'grpo' (group-relative), 'rloo' (leave-one-out baseline), 'reinforce_pp' (REINFORCE++: batch-normalised returns).", default="gae")
    num_generations: int = doc("G: completions sampled per prompt, so an update trains on batch_size × G completions (grpo and rloo compare a prompt's G completions; need G ≥ 2).", default=1, rule=AT_LEAST_1)
    kl_in: Literal["auto", "reward", "loss"] = doc("Where the KL to the reference goes: 'reward' (a per-token penalty), 'loss' (a k3 term weighted by kl_coef in the loss), or 'auto' (as each method defines it: loss for grpo, reward otherwise).", default="auto")

    # --- PPO ---
    total_updates: int = doc("PPO updates to run (one update = generate for batch_size prompts, score, K epochs of minibatches).", default=100, rule=AT_LEAST_1)
    batch_size: int = shared("batch_size", default=8)
    num_minibatches: int = shared("num_minibatches", default=1)
    num_epochs: int = shared("num_epochs", default=4)
    gamma: float = shared("gamma", default=1.0)
    gae_lambda: float = shared("gae_lambda", default=0.95)
    whiten_advantages: bool = shared("whiten_advantages", default=True)
    clip_range: float = shared("clip_range", default=0.2)
    clip_range_vf: float | None = shared("clip_range_vf", default=0.2)
    vf_coef: float = shared("vf_coef", default=0.1)
    ent_coef: float = shared("ent_coef", default=0.0)
    target_kl: float | None = shared("target_kl", default=None)
    learning_rate: float = shared("learning_rate", default=1e-5)
    lr_schedule: ScheduleKind = shared("lr_schedule", default="constant")
    weight_decay: float = shared("weight_decay", default=0.0)
    max_grad_norm: float = shared("max_grad_norm", default=1.0)
    gradient_accumulation_steps: int = shared("gradient_accumulation_steps", default=1)

    # --- logging ---
    sample_every: int = doc("Log sample completions every this many updates; 0 never.", default=10, rule=NON_NEGATIVE)
    num_samples: int = doc("How many sample completions to log each time.", default=3, rule=NON_NEGATIVE)
    checkpoint_every: int = shared("checkpoint_every", default=0)
    checkpoint_minutes: float = shared("checkpoint_minutes", default=10.0)
    keep_checkpoints: int = shared("keep_checkpoints", default=2)
    on_nonfinite: OnNonFinite = shared("on_nonfinite", default="stop")

    # --- several processes ---
    sharding: Literal["none", "fsdp"] = doc("With several processes: 'none' (each keeps the whole policy and critic; gradients averaged) or 'fsdp' (PyTorch FSDP2 shards them, their gradients and optimizer state; not with lora). One process: unsharded either way.", default="none")

    def __post_init__(self) -> None:
        validate(self)  # each field's type, choices and rule; what follows concerns several fields
        self._adapt_to_given()
        if not self.policy:
            raise ConfigError("config field 'policy' is required: a hub id or a local model directory")
        if self.batch_size % self.num_minibatches:
            raise ConfigError(
                f"config field 'num_minibatches' = {self.num_minibatches} does not divide batch_size = {self.batch_size}"
            )
        if self.advantage in ("grpo", "rloo") and self.num_generations < 2:
            raise ConfigError(f"config field 'advantage' = {self.advantage!r} compares completions of the same prompt: "
                              f"set num_generations to at least 2 (it is {self.num_generations})")
        if (self.batch_size * self.num_generations) % (self.num_minibatches * self.gradient_accumulation_steps):
            raise ConfigError(
                f"config field 'gradient_accumulation_steps' = {self.gradient_accumulation_steps}: num_minibatches × "
                f"gradient_accumulation_steps must divide the completions per update (batch_size × num_generations = "
                f"{self.batch_size * self.num_generations})")
        if self.advantage != "gae" and (self.share_reward_trunk or self.value_model != "separate"):
            raise ConfigError(f"config field 'advantage' = {self.advantage!r} trains no critic: value_model "
                              f"({self.value_model!r}) and share_reward_trunk do not apply; leave them at their defaults")
        if self.share_reward_trunk and not (self.value_model == "lora" and self.value_init == "reward"):
            raise ConfigError("config field 'share_reward_trunk' needs value_model: lora and value_init: reward "
                              "(the critic's adapters sit on the reward model's weights)")
        if self.mixed_precision != "no" and self.dtype not in ("float32", "auto"):
            raise ConfigError(f"config field 'mixed_precision' = {self.mixed_precision!r} autocasts float32 weights: "
                              f"set dtype: float32 (it is {self.dtype!r})")
        if self.sharding == "fsdp" and self.lora:
            raise ConfigError("config field 'sharding' = 'fsdp' does not combine with lora: true (the adapters are small; "
                              "train them data-parallel with sharding: none)")
        if self.sharding == "fsdp" and self.value_model == "lora" and self.advantage == "gae":
            raise ConfigError("config field 'sharding' = 'fsdp' does not combine with value_model: lora (the critic's "
                              "adapters are small; train them data-parallel with sharding: none)")
        for i, spec in enumerate(self.rewards):
            scheme = url_scheme(spec)
            if scheme is not None and scheme not in ("http", "https"):
                raise ConfigError(f"config field 'rewards'[{i}] = {redact_url(spec)!r}: unsupported URL scheme {scheme!r}; "
                                  "a reward server is http://host[:port]/path or https://...")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            raise ConfigError(
                f"reward_weights has {len(self.reward_weights)} entries but rewards has {len(self.rewards)}; "
                "give one weight per reward source"
            )

    def _adapt_to_given(self) -> None:
        """Fit the fields the user left to their defaults to the ones they set (each change noted,
        ``configuration.adapted_notes``, and recorded in config.yaml); a conflict between fields the
        user set is refused by the checks after."""
        given = given_fields(self)
        if self.advantage in ("grpo", "rloo") and self.num_generations < 2 and "num_generations" not in given:
            adapt(self, "num_generations", GROUP_GENERATIONS,
                  f"advantage {self.advantage!r} compares completions of the same prompt")
        completions = self.batch_size * self.num_generations
        if "num_minibatches" not in given:
            fits = [d for d in range(1, self.batch_size + 1) if self.batch_size % d == 0
                    and completions % (d * self.gradient_accumulation_steps) == 0 and d <= self.num_minibatches]
            if fits and fits[-1] != self.num_minibatches:
                adapt(self, "num_minibatches", fits[-1], f"it and gradient_accumulation_steps = "
                      f"{self.gradient_accumulation_steps} must divide the batch ({self.batch_size} prompts, "
                      f"{completions} completions)")
        if completions % (self.num_minibatches * self.gradient_accumulation_steps) and \
                "gradient_accumulation_steps" not in given and completions % self.num_minibatches == 0:
            per_minibatch = completions // self.num_minibatches
            adapt(self, "gradient_accumulation_steps",
                  max(d for d in range(1, self.gradient_accumulation_steps + 1) if per_minibatch % d == 0),
                  f"it must divide each minibatch's {per_minibatch} completions")
