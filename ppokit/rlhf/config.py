"""Configuration of the three RLHF stages: one dataclass per trainer, every field documented.

The same :mod:`ppokit.configuration` machinery as control runs builds them from YAML, ``--set``
overrides or code, and rejects a bad value with a message naming the field.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from ppokit.configuration import check_choices, check_runtime, check_types, doc
from ppokit.core.choices import DistBackend, KLEstimator, OnNonFinite, ScheduleKind
from ppokit.errors import ConfigError
from ppokit.io.trackers import TrackerName

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


def _at_least_1(v: float) -> bool:
    return v >= 1


def _positive(v: float) -> bool:
    return v > 0


def _non_negative(v: float) -> bool:
    return v >= 0


def _unit(v: float) -> bool:
    return 0.0 <= v <= 1.0


AT_LEAST_1 = (_at_least_1, "must be at least 1")
POSITIVE = (_positive, "must be positive")
NON_NEGATIVE = (_non_negative, "must not be negative")
UNIT = (_unit, "must lie in [0, 1]")


def _check_ranges(config: object, rules: Mapping[str, tuple[Callable[[float], bool], str]]) -> None:
    """Each named field must pass its rule; None passes where the field may be null (it disables)."""
    for name, (ok, allowed) in rules.items():
        value = getattr(config, name)
        if value is not None and not ok(value):
            raise ConfigError(f"config field {name!r} = {value!r} is invalid: {allowed}")


_SUPERVISED_RULES = {"max_length": AT_LEAST_1, "epochs": AT_LEAST_1, "batch_size": AT_LEAST_1,
                     "learning_rate": POSITIVE, "weight_decay": NON_NEGATIVE, "max_grad_norm": NON_NEGATIVE,
                     "gradient_accumulation_steps": AT_LEAST_1, "eval_every": NON_NEGATIVE,
                     "eval_fraction": (lambda v: 0.0 <= v < 1.0, "must lie in [0, 1)"),
                     "checkpoint_every": NON_NEGATIVE, "checkpoint_minutes": NON_NEGATIVE,
                     "keep_checkpoints": AT_LEAST_1, "lora_r": AT_LEAST_1, "lora_alpha": POSITIVE,
                     "lora_dropout": (lambda v: 0.0 <= v < 1.0, "must lie in [0, 1)")}
#: Fields a resumed SFT or reward-training run may change: how it is watched, saved and run. Every
#: other field shaped the run so far (epochs too: the learning rate decays over all of them).
SUPERVISED_RESUMABLE_FIELDS = frozenset({
    "run_dir", "progress", "tensorboard", "trackers", "checkpoint_every", "checkpoint_minutes", "keep_checkpoints",
    "eval_every", "device", "torch_threads", "trust_remote_code", "dist_backend", "dist_timeout",
})


def _check_supervised(config: SFTConfig | RewardConfig) -> None:
    """The checks SFT and reward training share (after the runtime fields')."""
    if not config.model:
        raise ConfigError("config field 'model' is required: a hub id or a local model directory")
    _check_ranges(config, _SUPERVISED_RULES)
    if config.gradient_accumulation_steps > config.batch_size:
        raise ConfigError(f"config field 'gradient_accumulation_steps' = {config.gradient_accumulation_steps} is "
                          f"invalid: the batch of {config.batch_size} cannot be split into more micro-batches than it "
                          "has rows")


class LoRASettings(Protocol):
    """The ``lora_*`` fields a config with LoRA adapters has (:func:`ppokit.rlhf.models.lora.with_lora`)."""

    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_target_modules: list[str] | None


@dataclass
class LMRuntime:
    """Fields every RLHF stage shares: where the run goes and how models are loaded."""

    seed: int = doc("Seed for torch, numpy, Python and data shuffling.", default=0)
    device: str = doc("'auto' (cuda when available), 'cpu', 'cuda' or 'cuda:N'.", default="auto")
    dtype: Dtype = doc("Model weights dtype: 'auto' (float32 on CPU, bfloat16 on GPUs that support it), 'float32', 'bfloat16', 'float16'.", default="auto")
    torch_threads: int = doc("torch intra-op threads; 0 keeps torch's default.", default=0)
    trust_remote_code: bool = doc("Allow a hub model's own Python code to run when loading it. Off unless you trust the model.", default=False)
    run_dir: str | None = doc("Where the run is written; null picks runs/<stage>__seed<N>__<time>.", default=None)
    tensorboard: bool = doc("Write TensorBoard event files into the run directory.", default=True)
    trackers: list[TrackerName] = doc("Experiment trackers that also get the config, metrics, summary and model: [wandb], [mlflow] or both (README, Trackers).", default_factory=list)
    progress: bool = doc("Show a progress bar.", default=True)
    skip_bad_rows: bool = doc("Skip malformed data rows (and count them) instead of stopping at the first.", default=False)
    dist_backend: DistBackend = doc("torch.distributed backend with several processes (--nproc, torchrun): 'auto' (NCCL on CUDA, gloo on a CPU), 'gloo' or 'nccl'.", default="auto")
    dist_timeout: float = doc("Seconds a process waits for the others in a collective before the job fails (a process that stopped answering).", default=600.0)

    def _check_runtime(self) -> None:
        check_types(self)
        check_choices(self)
        check_runtime(self)
        if not self.dist_timeout > 0:
            raise ConfigError(f"config field 'dist_timeout' = {self.dist_timeout!r} is invalid: must be a positive number of seconds")


@dataclass
class SFTConfig(LMRuntime):
    """Supervised fine-tuning of a causal LM on prompt/response pairs (loss on the response only)."""

    model: str = doc("Hub id or local directory of the causal LM to fine-tune.", default="")
    data: str = doc("JSONL, JSON, CSV or Parquet file of prompt/response rows.", default="")
    prompt_column: str = doc("Column holding the prompt text.", default="prompt")
    response_column: str = doc("Column holding the response text.", default="response")
    max_length: int = doc("Maximum tokens of prompt + response (+ EOS); longer rows are an error (or skipped).", default=512)
    epochs: int = doc("Passes over the data.", default=1)
    batch_size: int = doc("Sequences per optimiser step, over all processes (each takes its share; the loss is the token mean over all of them).", default=8)
    learning_rate: float = doc("AdamW learning rate (linear decay to 0).", default=5e-5)
    weight_decay: float = doc("AdamW weight decay.", default=0.0)
    max_grad_norm: float = doc("Global gradient-norm clip; 0 disables it.", default=1.0)
    add_eos: bool = doc("Append the EOS token to every response so the model learns to stop.", default=True)
    gradient_accumulation_steps: int = doc("Micro-batches each batch is split into (gradients summed, weighted by their share of the batch's response tokens, before one optimiser step): the same step, less activation memory.", default=1)
    lora: bool = doc("Train LoRA adapters (peft) instead of all weights; the saved model has them merged in (the adapter alone goes to model_adapter/).", default=False)
    lora_r: int = doc("LoRA rank.", default=8)
    lora_alpha: int = doc("LoRA scaling α (peft takes an integer).", default=16)
    lora_dropout: float = doc("LoRA dropout.", default=0.0)
    lora_target_modules: list[str] | None = doc("Module names that get adapters; null lets peft pick for known architectures.", default=None)
    eval_data: str | None = doc("Held-out prompt/response file for the evaluation loss; null holds out eval_fraction of the prompts (0: no evaluation).", default=None)
    eval_fraction: float = doc("Fraction of prompts held out for the evaluation loss when eval_data is null; 0 trains on every row.", default=0.0)
    eval_every: int = doc("Log the evaluation loss (token-mean NLL of the held-out responses) every this many optimiser steps; 0: at the end of each epoch only.", default=0)
    checkpoint_every: int = doc("Save a resumable checkpoint (weights or adapter, optimizer, schedule, data position, RNGs) every this many optimiser steps; 0: only by time, at the end and on Ctrl-C.", default=0)
    checkpoint_minutes: float = doc("Also save one when this many minutes have passed since the last; 0 disables.", default=10.0)
    keep_checkpoints: int = doc("How many checkpoints to keep (oldest removed first).", default=2)

    def __post_init__(self) -> None:
        self._check_runtime()
        _check_supervised(self)


@dataclass
class RewardConfig(LMRuntime):
    """Reward-model training from human preferences: pairs, K-way rankings or scalar ratings."""

    model: str = doc("Hub id or directory to start from (usually the SFT model).", default="")
    data: str = doc("JSONL, JSON, CSV or Parquet file of preferences.", default="")
    eval_data: str | None = doc("Held-out preference file; null holds out eval_fraction of the prompts.", default=None)
    eval_fraction: float = doc("Fraction of prompts held out for the pairwise-accuracy report when eval_data is null.", default=0.1)
    format: PreferenceFormat = doc("'pairs' (prompt, chosen, rejected), 'rankings' (prompt, responses, ranking), 'ratings' (prompt, response, rating) or 'auto' (from the columns).", default="auto")
    prompt_column: str = doc("Column holding the prompt.", default="prompt")
    chosen_column: str = doc("Column of the preferred response (pairs).", default="chosen")
    rejected_column: str = doc("Column of the dispreferred response (pairs).", default="rejected")
    responses_column: str = doc("Column of the list of K responses (rankings).", default="responses")
    ranking_column: str = doc("Column of the K ranks, aligned with responses, 1 = best; equal ranks are ties (rankings).", default="ranking")
    response_column: str = doc("Column of the rated response (ratings).", default="response")
    rating_column: str = doc("Column of the numeric rating, higher = better (ratings).", default="rating")
    ratings_as: Literal["pairs", "regression"] = doc("'pairs' (within a prompt, the higher-rated response is preferred) or 'regression' (fit the standardised rating).", default="pairs")
    head: Literal["classification", "value_head"] = doc("'classification' (AutoModelForSequenceClassification, num_labels=1) or 'value_head' (a linear head on a causal LM's last hidden state).", default="classification")
    max_length: int = doc("Maximum tokens of prompt + response; longer rows are an error (or skipped).", default=512)
    epochs: int = doc("Passes over the training pairs.", default=1)
    batch_size: int = doc("Pairs (or rated rows) per optimiser step, over all processes (each takes its share).", default=8)
    learning_rate: float = doc("AdamW learning rate (linear decay to 0).", default=1e-5)
    weight_decay: float = doc("AdamW weight decay.", default=0.0)
    max_grad_norm: float = doc("Global gradient-norm clip; 0 disables it.", default=1.0)
    gradient_accumulation_steps: int = doc("Micro-batches each batch is split into (gradients summed, weighted by their share of the batch's pairs, before one optimiser step): the same step, less activation memory.", default=1)
    lora: bool = doc("Train LoRA adapters (peft) on the trunk instead of all its weights; the new scalar head trains fully. The saved model has them merged in (the adapter and head alone go to model_adapter/).", default=False)
    lora_r: int = doc("LoRA rank.", default=8)
    lora_alpha: int = doc("LoRA scaling α (peft takes an integer).", default=16)
    lora_dropout: float = doc("LoRA dropout.", default=0.0)
    lora_target_modules: list[str] | None = doc("Module names that get adapters; null lets peft pick for known architectures.", default=None)
    eval_every: int = doc("Log the evaluation loss and pairwise accuracy on the held-out pairs every this many optimiser steps; 0: at the end of each epoch only.", default=0)
    checkpoint_every: int = doc("Save a resumable checkpoint (weights or adapter, optimizer, schedule, data position, RNGs) every this many optimiser steps; 0: only by time, at the end and on Ctrl-C.", default=0)
    checkpoint_minutes: float = doc("Also save one when this many minutes have passed since the last; 0 disables.", default=10.0)
    keep_checkpoints: int = doc("How many checkpoints to keep (oldest removed first).", default=2)

    def __post_init__(self) -> None:
        self._check_runtime()
        _check_supervised(self)


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
    lora: bool = doc("Train LoRA adapters (peft) instead of all policy weights; the reference is then the adapter-free base.", default=False)
    lora_r: int = doc("LoRA rank.", default=8)
    lora_alpha: int = doc("LoRA scaling α (peft takes an integer).", default=16)
    lora_dropout: float = doc("LoRA dropout.", default=0.0)
    lora_target_modules: list[str] | None = doc("Module names that get adapters; null lets peft pick for known architectures.", default=None)

    # --- data ---
    data: str = doc("JSONL, JSON, CSV or Parquet file of prompts.", default="")
    prompt_column: str = doc("Column holding the prompt text.", default="prompt")
    max_prompt_length: int = doc("Maximum prompt tokens; longer prompts are an error (or skipped).", default=256)

    # --- reward sources ---
    reward_timeout: float = doc("Seconds one reward call may take (a function call, or one HTTP request) before it fails.", default=60.0)
    reward_retries: int = doc("Retries of a failed HTTP reward request (connection error, timeout, 5xx), with exponential backoff.", default=3)
    reward_batch_size: int = doc("Completions per HTTP reward request.", default=64)
    reward_workers: int = doc("Concurrent calls of each reward function (the batch split into this many chunks) or server (requests in flight); 1 calls them one batch at a time.", default=1)
    reward_pool: Literal["thread", "process"] = doc("Where concurrent reward-function calls run: 'thread', or 'process' (worker processes, for pure-Python functions the GIL serialises; 'module:function' rewards only).", default="thread")

    # --- generation ---
    max_new_tokens: int = doc("Maximum completion tokens per prompt.", default=32)
    temperature: float = doc("Sampling temperature; log-probs are computed at the same temperature.", default=1.0)
    missing_eos_penalty: float | None = doc("Subtract this from the score of a completion that never emits EOS; null disables.", default=None)

    # --- reward shaping ---
    kl_coef: float = doc("β: weight of the KL to the reference, a per-token penalty in the reward or a loss term (kl_in); the initial value when adaptive.", default=0.05)
    kl_estimator: KLEstimator = doc("Per-token KL estimator where the KL is in the reward: 'k1' (log-ratio) or 'k3' (non-negative, low variance); a KL loss term always uses k3.", default="k1")
    adaptive_kl: bool = doc("Adapt β with the proportional controller of Ziegler et al. to reach kl_target.", default=False)
    kl_target: float = doc("Target KL per completion (nats, summed over tokens) for the adaptive β.", default=6.0)
    kl_horizon: int = doc("Horizon (in completions) of the adaptive β controller.", default=10_000)
    score_clip: float | None = doc("Clip the combined score to ±this; null disables.", default=None)

    # --- advantages ---
    advantage: Literal["gae", "grpo", "rloo", "reinforce_pp"] = doc("Advantage estimator: 'gae' (a critic, GAE over tokens), or critic-free (no critic built, trained or saved) 'grpo' (group-relative), 'rloo' (leave-one-out baseline), 'reinforce_pp' (REINFORCE++: batch-normalised returns).", default="gae")
    num_generations: int = doc("G: completions sampled per prompt, so an update trains on batch_size × G completions (grpo and rloo compare a prompt's G completions; need G ≥ 2).", default=1)
    kl_in: Literal["auto", "reward", "loss"] = doc("Where the KL to the reference goes: 'reward' (a per-token penalty), 'loss' (a k3 term weighted by kl_coef in the loss), or 'auto' (as each method defines it: loss for grpo, reward otherwise).", default="auto")

    # --- PPO ---
    total_updates: int = doc("PPO updates to run (one update = generate for batch_size prompts, score, K epochs of minibatches).", default=100)
    batch_size: int = doc("Prompts per PPO update, over all processes: each of N processes generates for batch_size / N of them (a multiple of N), so N processes take the update one process would.", default=8)
    num_minibatches: int = doc("Minibatches per PPO epoch; must divide batch_size (and each process's share of it).", default=1)
    num_epochs: int = doc("K: PPO epochs over each batch.", default=4)
    gamma: float = doc("Discount γ over tokens.", default=1.0)
    gae_lambda: float = doc("GAE λ over tokens.", default=0.95)
    whiten_advantages: bool = doc("Whiten gae's advantages over the valid tokens of the whole batch (once per update). The critic-free ones ignore it: grpo's are normalised per group and rloo's are leave-one-out differences (whitening would change the method); reinforce_pp always whitens (its definition).", default=True)
    clip_range: float = doc("ε of the clipped surrogate.", default=0.2)
    clip_range_vf: float | None = doc("Clip the value update to ±this around the rollout's values; null disables.", default=0.2)
    vf_coef: float = doc("c1: weight of the value loss.", default=0.1)
    ent_coef: float = doc("c2: weight of the entropy bonus.", default=0.0)
    target_kl: float | None = doc("Stop the epoch loop when a minibatch's KL to the rollout policy exceeds 1.5× this; null disables.", default=None)
    learning_rate: float = doc("AdamW learning rate (policy and value).", default=1e-5)
    lr_schedule: ScheduleKind = doc("'constant' or 'linear' (anneal to 0 over total_updates).", default="constant")
    weight_decay: float = doc("AdamW weight decay.", default=0.0)
    max_grad_norm: float = doc("Global gradient-norm clip; 0 disables it.", default=1.0)
    gradient_accumulation_steps: int = doc("Micro-batches each minibatch is split into (gradients summed before one optimiser step): same update, less activation memory.", default=1)

    # --- logging ---
    sample_every: int = doc("Log sample completions every this many updates; 0 never.", default=10)
    num_samples: int = doc("How many sample completions to log each time.", default=3)
    checkpoint_every: int = doc("Save a resumable checkpoint (models, optimizer, RNGs, prompt position) every this many updates; 0: only by time, at the end and on Ctrl-C.", default=0)
    checkpoint_minutes: float = doc("Also save one when this many minutes have passed since the last; 0 disables.", default=10.0)
    keep_checkpoints: int = doc("How many checkpoints to keep (oldest removed first).", default=2)
    on_nonfinite: OnNonFinite = doc("A NaN/inf loss or gradient: 'stop' the run with an error, or 'skip' that minibatch and count it.", default="stop")

    # --- several processes ---
    sharding: Literal["none", "fsdp"] = doc("With several processes: 'none' (each keeps the whole policy and critic; gradients averaged) or 'fsdp' (PyTorch FSDP2 shards them, their gradients and optimizer state; not with lora). One process: unsharded either way.", default="none")

    def __post_init__(self) -> None:
        self._check_runtime()
        if not self.policy:
            raise ConfigError("config field 'policy' is required: a hub id or a local model directory")
        _check_ranges(self, {
            **{name: AT_LEAST_1 for name in ("max_prompt_length", "max_new_tokens", "total_updates", "batch_size",
                                             "num_minibatches", "num_epochs", "kl_horizon", "lora_r",
                                             "keep_checkpoints", "num_generations", "reward_batch_size",
                                             "reward_workers", "gradient_accumulation_steps")},
            **{name: POSITIVE for name in ("temperature", "learning_rate", "kl_target", "lora_alpha", "target_kl",
                                           "clip_range_vf", "score_clip", "reward_timeout")},
            **{name: NON_NEGATIVE for name in ("kl_coef", "vf_coef", "ent_coef", "weight_decay", "max_grad_norm",
                                               "sample_every", "num_samples", "checkpoint_every",
                                               "checkpoint_minutes", "missing_eos_penalty", "reward_retries")},
            "gamma": UNIT, "gae_lambda": UNIT,
            "clip_range": (lambda v: 0.0 < v < 1.0, "must lie in (0, 1)"),
            "lora_dropout": (lambda v: 0.0 <= v < 1.0, "must lie in [0, 1)"),
        })
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
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            raise ConfigError(
                f"reward_weights has {len(self.reward_weights)} entries but rewards has {len(self.rewards)}; "
                "give one weight per reward source"
            )
