"""Anchor benchmark: TRL 1.12's PPO trainer (``trl.experimental.ppo``) on CPU.

Measures wall-clock seconds per PPO step for a tiny, locally built GPT-2 so that
ppokit's RLHF trainer can be compared against the reference implementation on
the same shapes. Nothing is downloaded: the tokenizer is built from scratch as
a WordLevel vocabulary of synthetic pseudo-words and the models are randomly
initialised (``torch.manual_seed(0)``) from a tiny GPT-2 config
(2 layers, 128 wide, 4 heads, vocabulary ``--vocab-size``, default 512).

Set up the separate benchmark venv first (it pins TRL and friends)::

    bash benchmarks/make_bench_venv.sh

Then, from the repository root::

    .venv-bench/bin/python benchmarks/rlhf_trl_anchor.py \\
        --batch 8 --response-length 24 --epochs 4 --steps 6 --threads 1 \\
        [--no-forced-gc] [--lora]

What one "step" is here: one iteration of TRL's ``PPOTrainer.train`` loop, i.e.
one rollout of ``--batch`` prompts (sampled generation of exactly
``--response-length`` tokens, then no-grad forwards of the reference policy,
the value model and the reward model) followed by ``--epochs`` PPO epochs over
that batch with a single minibatch (one forward/backward/optimizer step of
policy + value model per epoch). Steps are timed between consecutive
``on_step_end`` callbacks, so each timed interval contains exactly one full loop
iteration including TRL's two per-step ``gc.collect()`` calls; the first step
(warm-up) is excluded from the median.

TRL settings that matter for a fair comparison (all set explicitly below):

* fp32 everywhere: ``bf16=False`` (TRL's config defaults to ``bf16=True``) and
  ``gradient_checkpointing=False`` (TRL's default is ``True``; the PPO loop
  never enables it anyway, we just make it explicit).
* No stop token (``stop_token=None``, generation ``eos_token_id=None``), so
  every response is generated to the full ``--response-length``. TRL does treat
  the first sampled *pad* token as the end of a response (everything after it
  is masked out of the losses, though still computed), so the share of
  "valid" tokens can be slightly below 1; it is reported as
  ``valid_token_fraction`` / ``valid_tokens_per_s``. ``tokens_per_s`` is the
  nominal ``batch * response_length / s_per_step_median``.
* Policy and value model are two separate GPT-2s (TRL's PolicyAndValueWrapper,
  no shared trunk); old log-probs come from the generation scores (no extra
  policy forward); reference, value and reward each do one extra forward per
  rollout.
* No evaluation, no sample-generation tables, no checkpoints, ``report_to=[]``.

``--no-forced-gc`` replaces ``gc`` and ``empty_cache`` *inside TRL's PPO trainer
module only* by no-ops, so TRL runs without its forced per-step
``gc.collect()`` / ``torch.cuda.empty_cache()``; Python's automatic GC stays on.

``--lora`` passes a ``peft.LoraConfig`` (r=8, alpha=16, on GPT-2's ``c_attn``)
as TRL's ``peft_config``. TRL then wraps the policy in a PeftModel and, since
no ``ref_model`` is given, computes reference log-probs with the adapter
disabled (no separate reference model). The value model is still fully trained.

Output: log lines go to stderr; exactly one JSON line goes to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import statistics
import sys
import tempfile
import time

N_PROMPTS = 128
PROMPT_TOKENS = 8


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8, help="prompts per PPO step (rollout batch)")
    p.add_argument("--response-length", type=int, default=24, help="generated tokens per prompt")
    p.add_argument("--epochs", type=int, default=4, help="PPO epochs per step (num_ppo_epochs)")
    p.add_argument("--steps", type=int, default=6, help="PPO steps to run (first one is warm-up)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--vocab-size", type=int, default=512, help="tokenizer / model vocabulary size")
    p.add_argument(
        "--no-forced-gc",
        dest="forced_gc",
        action="store_false",
        help="no-op TRL's per-step gc.collect() and empty_cache() calls",
    )
    p.add_argument("--lora", action="store_true", help="train a LoRA adapter on c_attn via TRL's peft_config")
    p.add_argument("--model-dir", help="policy (and tokenizer) directory to load instead of the tiny GPT-2 (rlhf_gpu.py)")
    p.add_argument("--reward-dir", help="sequence-classification reward model directory (with --model-dir)")
    p.add_argument("--prompts-file", help="JSON with 'input_ids': the prompts (with --model-dir; rlhf_gpu.py writes it)")
    p.add_argument("--lora-targets", nargs="+", default=["c_attn"], help="LoRA target modules")
    p.add_argument("--device", default="cpu", help="'cpu' or 'cuda'")
    p.add_argument("--bf16", action="store_true", help="TRL's bf16 mixed precision")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--minibatches", type=int, default=1, help="num_mini_batches")
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error("--steps must be at least 2 (the first step is warm-up)")
    return args


def log(msg: str) -> None:
    print(f"[trl-anchor] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- #
# Tiny local tokenizer, models and prompts
# --------------------------------------------------------------------------- #


def synthetic_words(n: int) -> list[str]:
    """Deterministic pseudo-words ('ba', 'ke', 'bake', ...) to fill a WordLevel vocabulary."""
    consonants = "bdfgklmnprstvz"
    vowels = "aeiou"
    syllables = [c + v for c in consonants for v in vowels]  # 70
    words = list(syllables)
    for a in syllables:
        for b in syllables:
            if len(words) >= n:
                return words[:n]
            words.append(a + b)
    return words[:n]


def build_tokenizer(vocab_size: int, save_dir: str):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<bos>", "<eos>"]
    words = synthetic_words(vocab_size - len(specials))
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        padding_side="left",  # TRL's PPO expects left-padded queries
    )
    fast.save_pretrained(save_dir)
    return PreTrainedTokenizerFast.from_pretrained(save_dir), words


def build_models(tokenizer, save_dir: str, lora: bool):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        n_layer=2,
        n_embd=128,
        n_head=4,
        n_positions=128,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(save_dir)

    policy = AutoModelForCausalLM.from_pretrained(save_dir)
    # With LoRA, TRL computes reference log-probs by disabling the adapter.
    ref_policy = None if lora else AutoModelForCausalLM.from_pretrained(save_dir)
    # Reward and value models: same trunk, fresh (seeded) scalar head, as TRL's examples do.
    reward_model = AutoModelForSequenceClassification.from_pretrained(save_dir, num_labels=1)
    value_model = AutoModelForSequenceClassification.from_pretrained(save_dir, num_labels=1)
    for m in (policy, ref_policy, reward_model, value_model):
        if m is not None:
            m.float()
    policy.generation_config.pad_token_id = tokenizer.pad_token_id
    return config, policy, ref_policy, reward_model, value_model


def load_models(model_dir: str, reward_dir: str, lora: bool):
    """The policy, reference, reward and value models from directories (rlhf_gpu.py builds them)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    policy = AutoModelForCausalLM.from_pretrained(model_dir)
    ref_policy = None if lora else AutoModelForCausalLM.from_pretrained(model_dir)
    reward_model = AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1)
    value_model = AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1)
    return policy.config, policy, ref_policy, reward_model, value_model


def build_prompts(tokenizer, words: list[str], length: int = PROMPT_TOKENS):
    import random

    from datasets import Dataset

    rng = random.Random(0)
    texts = [" ".join(rng.choice(words) for _ in range(length)) for _ in range(N_PROMPTS)]
    input_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert all(len(ids) == length for ids in input_ids)
    return Dataset.from_dict({"input_ids": input_ids})


# --------------------------------------------------------------------------- #
# Instrumentation of TRL (wrapping only; no TRL code is copied)
# --------------------------------------------------------------------------- #


class _NoGC:
    """Stand-in for the ``gc`` module inside TRL's PPO trainer module."""

    @staticmethod
    def collect(*_args, **_kwargs) -> int:
        return 0


def instrument_trl(ppo_module, forced_gc: bool, pad_token_id: int) -> dict:
    """Patch names inside ``trl.experimental.ppo.ppo_trainer``; return the counters they fill."""
    import torch

    stats = {"gc_seconds": 0.0, "generated_tokens": 0, "valid_tokens": 0,
             "generate_s": 0.0, "score_s": 0.0, "forward_s": 0.0}

    if forced_gc:
        real_gc = ppo_module.gc

        class _TimedGC:
            @staticmethod
            def collect(*a, **k):
                t0 = time.perf_counter()
                try:
                    return real_gc.collect(*a, **k)
                finally:
                    stats["gc_seconds"] += time.perf_counter() - t0

        ppo_module.gc = _TimedGC
    else:
        ppo_module.gc = _NoGC
        ppo_module.empty_cache = lambda: None

    real_batch_generation = ppo_module.batch_generation

    def counting_batch_generation(model, queries, *a, **k):
        t0 = time.perf_counter()
        query_responses, logits = real_batch_generation(model, queries, *a, **k)
        stats["generate_s"] += time.perf_counter() - t0
        responses = query_responses[:, queries.shape[1] :]
        is_pad = responses == pad_token_id
        # TRL treats everything from the first pad token on as padding.
        n_rows, n_cols = responses.shape
        first_pad = torch.where(is_pad.any(1), is_pad.float().argmax(1), torch.full((n_rows,), n_cols))
        stats["generated_tokens"] += responses.numel()
        stats["valid_tokens"] += int(first_pad.sum())
        return query_responses, logits

    ppo_module.batch_generation = counting_batch_generation

    # The phases of ppokit's table: rollout forwards (reference, value model) without gradients,
    # scoring (the reward model, marked by main()), and the rest of the step is the update.
    real_forward, real_get_reward = ppo_module.forward, ppo_module.get_reward

    def timed_forward(model, *a, **k):
        if torch.is_grad_enabled():  # the PPO epochs' forward: part of the update
            return real_forward(model, *a, **k)
        t0 = time.perf_counter()
        try:
            return real_forward(model, *a, **k)
        finally:
            stats["forward_s"] += time.perf_counter() - t0

    def timed_get_reward(model, *a, **k):
        t0 = time.perf_counter()
        try:
            return real_get_reward(model, *a, **k)
        finally:
            stats["score_s" if getattr(model, "_bench_is_reward", False) else "forward_s"] += time.perf_counter() - t0

    ppo_module.forward, ppo_module.get_reward = timed_forward, timed_get_reward
    return stats


PHASES = ("generate_s", "score_s", "forward_s")


def make_step_timer(stats: dict):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall-clock time between consecutive ``on_step_end`` calls (first interval starts at train begin)."""

        def __init__(self):
            self.last = None
            self.step_seconds: list[float] = []
            self.step_gc_seconds: list[float] = []
            self.step_valid_tokens: list[int] = []
            self.step_phases: list[dict[str, float]] = []
            self._phase_mark = {k: 0.0 for k in PHASES}
            self._gc_mark = 0.0
            self._tok_mark = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.last = time.perf_counter()
            self._gc_mark = stats["gc_seconds"]
            self._tok_mark = stats["valid_tokens"]
            self._phase_mark = {k: stats[k] for k in PHASES}

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            self.step_seconds.append(now - self.last)
            self.step_gc_seconds.append(stats["gc_seconds"] - self._gc_mark)
            self.step_valid_tokens.append(stats["valid_tokens"] - self._tok_mark)
            phases = {k: stats[k] - self._phase_mark[k] for k in PHASES}
            phases["update_s"] = self.step_seconds[-1] - self.step_gc_seconds[-1] - sum(phases.values())
            self.step_phases.append(phases)
            self._phase_mark = {k: stats[k] for k in PHASES}
            self.last = now
            self._gc_mark = stats["gc_seconds"]
            self._tok_mark = stats["valid_tokens"]
            log(f"step {state.global_step}: {self.step_seconds[-1]:.3f} s (forced gc {self.step_gc_seconds[-1]:.3f} s)")

    return StepTimer()


# --------------------------------------------------------------------------- #


def main(argv=None) -> int:
    args = parse_args(argv)
    # Pin thread pools before torch is imported, then again through torch.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

    import torch

    torch.set_num_threads(args.threads)

    import transformers
    import trl
    import trl.experimental.ppo.ppo_trainer as ppo_module
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    peft_config = None
    if args.lora:
        try:
            from peft import LoraConfig
        except ImportError:
            log("--lora needs peft, which is not installed in this venv")
            return 2
        peft_config = LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.0, target_modules=args.lora_targets,
            fan_in_fan_out=args.lora_targets == ["c_attn"], task_type="CAUSAL_LM"
        )

    with tempfile.TemporaryDirectory(prefix="trl-anchor-") as tmp:
        if args.model_dir:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(args.model_dir, padding_side="left")
            from datasets import Dataset

            config, policy, ref_policy, reward_model, value_model = load_models(args.model_dir, args.reward_dir,
                                                                                args.lora)
            policy.generation_config.pad_token_id = tokenizer.pad_token_id
            dataset = Dataset.from_dict({"input_ids": json.loads(open(args.prompts_file).read())["input_ids"]})
        else:
            model_dir = os.path.join(tmp, "tiny-gpt2")
            tokenizer, words = build_tokenizer(args.vocab_size, model_dir)
            config, policy, ref_policy, reward_model, value_model = build_models(tokenizer, model_dir, args.lora)
            dataset = build_prompts(tokenizer, words)
        prompt_length = len(dataset[0]["input_ids"])
        log(
            f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}; "
            f"{config.model_type} layers={config.num_hidden_layers} width={config.hidden_size} vocab={config.vocab_size}; "
            f"{len(dataset)} prompts of {prompt_length} tokens; threads={torch.get_num_threads()}"
        )

        ppo_args = PPOConfig(
            output_dir=os.path.join(tmp, "out"),
            use_cpu=args.device == "cpu",
            bf16=args.bf16,
            fp16=False,
            gradient_checkpointing=args.gradient_checkpointing,
            seed=0,
            # One step = one rollout of `batch` prompts, one minibatch, `epochs` PPO epochs.
            per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=1,
            num_mini_batches=args.minibatches,
            local_rollout_forward_batch_size=args.batch,
            total_episodes=args.steps * args.batch,
            num_ppo_epochs=args.epochs,
            response_length=args.response_length,
            stop_token=None,
            stop_token_id=None,
            missing_eos_penalty=None,
            # No evaluation, sample tables, checkpoints or reporting.
            num_sample_generations=0,
            eval_strategy="no",
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            logging_steps=1,
            dataloader_num_workers=0,
        )

        stats = instrument_trl(ppo_module, args.forced_gc, tokenizer.pad_token_id)
        timer = make_step_timer(stats)
        trainer = PPOTrainer(
            args=ppo_args,
            processing_class=tokenizer,
            model=policy,
            ref_model=ref_policy,
            reward_model=reward_model,
            train_dataset=dataset,
            value_model=value_model,
            callbacks=[timer],
            peft_config=peft_config,
        )
        trainer.reward_model._bench_is_reward = True  # scoring, in the phase table
        n_trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        log(
            f"mixed_precision={trainer.accelerator.mixed_precision} device={trainer.accelerator.device} "
            f"peft={trainer.is_peft_model} trainable_params={n_trainable} "
            f"batch_size={ppo_args.batch_size} mini_batch_size={ppo_args.mini_batch_size} "
            f"num_total_batches={ppo_args.num_total_batches} forced_gc={args.forced_gc} "
            f"gc_tracked_objects={len(gc.get_objects())}"
        )

        # TRL's PrinterCallback prints metrics with print(); keep stdout for the JSON line.
        with contextlib.redirect_stdout(sys.stderr):
            trainer.train()

    steps = timer.step_seconds
    timed = steps[1:]
    s_med = statistics.median(timed)
    gc_med = statistics.median(timer.step_gc_seconds[1:])
    # Share of sampled tokens that precede the first sampled pad token (what TRL's loss masks keep).
    valid_fraction = sum(timer.step_valid_tokens[1:]) / (args.batch * args.response_length * len(timed))
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    result = {
        "library": "trl",
        "version": trl.__version__,
        "s_per_step_median": round(s_med, 4),
        "s_per_step_all": [round(s, 4) for s in steps],
        # Nominal: every response is sampled to the full response_length.
        "tokens_per_s": round(args.batch * args.response_length / s_med, 1),
        # Same rate counting only tokens before the first sampled pad token (TRL masks the rest).
        "valid_tokens_per_s": round(valid_fraction * args.batch * args.response_length / s_med, 1),
        "valid_token_fraction": round(valid_fraction, 4),
        "forced_gc_s_per_step_median": round(gc_med, 4),
        # Medians per step (first left out): generation, reward model, reference and value forwards,
        # and the update (the PPO epochs and the rest of the step, forced collection not counted).
        "phases_s": {k: round(statistics.median(p[k] for p in timer.step_phases[1:]), 4)
                     for k in (*PHASES, "update_s")},
        "peak_rss_mib": round(peak_rss_mib, 1),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        "batch": args.batch,
        "response_length": args.response_length,
        "epochs": args.epochs,
        "num_mini_batches": args.minibatches,
        "forced_gc": args.forced_gc,
        "lora": args.lora,
        "threads": args.threads,
        "vocab_size": config.vocab_size,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
