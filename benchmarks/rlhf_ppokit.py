"""ppokit's side of the RLHF benchmark: seconds per PPO step on the tiny GPT-2 of
``rlhf_trl_anchor.py`` (same tokenizer, same seeded weights, same prompts), so the two runs differ
only in the library.

    .venv/bin/python benchmarks/rlhf_ppokit.py --batch 8 --response-length 24 --epochs 4 --steps 6 --threads 1 [--lora]
        [--old-logprobs sampling]

Settings mirror the anchor's TRL configuration: one step = generate ``--batch`` completions of up
to ``--response-length`` tokens at temperature 0.7 (TRL's default), score them with a reward model,
``--epochs`` PPO epochs over one minibatch of the whole batch, a separate critic initialised from
the reward model, a frozen reference copy (with ``--lora``: the adapter-free policy), fp32. A step is
timed from the end of the previous one to the end of this one (the loop's own logging included);
the first step is warm-up and left out of the median.

Output: one JSON line on stdout, logs on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--response-length", type=int, default=24)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--lora", action="store_true")
    p.add_argument("--value-head", action="store_true", help="value head on the policy instead of a separate critic")
    p.add_argument("--model-dir", help="policy (and tokenizer) directory instead of the tiny GPT-2 (rlhf_gpu.py)")
    p.add_argument("--reward-dir", help="reward model directory (with --model-dir)")
    p.add_argument("--prompts-file", help="JSON with 'texts': the prompts (with --model-dir; rlhf_gpu.py writes it)")
    p.add_argument("--lora-targets", nargs="+", default=["c_attn"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--minibatches", type=int, default=1)
    p.add_argument("--accumulation", type=int, default=1, help="gradient_accumulation_steps")
    p.add_argument("--old-logprobs", choices=["recompute", "sampling"], default="recompute",
                   help="where the old log-probs come from (sampling: TRL's way, one policy forward pass fewer)")
    args = p.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import rlhf_trl_anchor as anchor  # the shared tiny tokenizer, model and prompts
    from transformers import AutoModelForSequenceClassification, GPT2Config, GPT2LMHeadModel

    import ppokit
    from ppokit.rlhf.config import RLHFConfig
    from ppokit.rlhf.models.loading import quiet_transformers
    from ppokit.rlhf.ppo.trainer import RLHFTrainer

    quiet_transformers()
    with tempfile.TemporaryDirectory(prefix="ppokit-bench-") as tmp:
        if args.model_dir:
            from transformers import AutoTokenizer

            model_dir, reward_dir = args.model_dir, args.reward_dir
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            texts = json.loads(Path(args.prompts_file).read_text())["texts"]
            prompt_length = max(len(tokenizer(t)["input_ids"]) for t in texts)
        else:
            model_dir = os.path.join(tmp, "tiny-gpt2")
            tokenizer, words = anchor.build_tokenizer(args.vocab_size, model_dir)
            config = GPT2Config(n_layer=2, n_embd=128, n_head=4, n_positions=128, vocab_size=len(tokenizer),
                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id)
            torch.manual_seed(0)
            GPT2LMHeadModel(config).save_pretrained(model_dir)
            reward_dir = os.path.join(tmp, "reward")
            AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1).save_pretrained(reward_dir)
            tokenizer.save_pretrained(reward_dir)
            texts = [tokenizer.decode(ids) for ids in anchor.build_prompts(tokenizer, words)["input_ids"]]
            prompt_length = anchor.PROMPT_TOKENS
        prompts = [{"prompt": t} for t in texts]

        cfg = RLHFConfig(
            policy=model_dir, rewards=[reward_dir], total_updates=args.steps, batch_size=args.batch,
            num_epochs=args.epochs, max_new_tokens=args.response_length, temperature=0.7,
            learning_rate=3e-6, kl_coef=0.05, value_model="head" if args.value_head else "separate",
            value_init="reward", lora=args.lora, lora_r=8, lora_alpha=16, lora_target_modules=args.lora_targets,
            device=args.device, dtype="float32", torch_threads=args.threads, progress=False, tensorboard=False,
            sample_every=0, seed=0, mixed_precision=args.mixed_precision,
            gradient_checkpointing=args.gradient_checkpointing, num_minibatches=args.minibatches,
            gradient_accumulation_steps=args.accumulation, max_prompt_length=prompt_length,
            # Only when asked, so the script also measures a checkout from before the option existed.
            **({"old_logprobs": args.old_logprobs} if args.old_logprobs != "recompute" else {}),
        )
        trainer = RLHFTrainer(cfg, prompts=prompts, run_dir=os.path.join(tmp, "run"))
        marks = [time.perf_counter()]
        tokens = []
        trainer.learn(callback=lambda record: (marks.append(time.perf_counter()),
                                               tokens.append(record["response_length"] * args.batch)))
        phases = {key: round(statistics.median(r[key] for r in trainer.history[1:]), 4)
                  for key in ("generate_s", "score_s", "forward_s", "prepare_s", "epochs_s")}
    steps = [b - a for a, b in zip(marks, marks[1:])]
    s_med = statistics.median(steps[1:])
    valid_fraction = sum(tokens[1:]) / (args.batch * args.response_length * len(steps[1:]))
    result = {
        "library": "ppokit", "version": ppokit.__version__,
        "s_per_step_median": round(s_med, 4), "s_per_step_all": [round(s, 4) for s in steps],
        "tokens_per_s": round(args.batch * args.response_length / s_med, 1),
        "valid_tokens_per_s": round(valid_fraction * args.batch * args.response_length / s_med, 1),
        "valid_token_fraction": round(valid_fraction, 4),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        "phases_s": phases, "mixed_precision": args.mixed_precision,
        "gradient_checkpointing": args.gradient_checkpointing,
        "batch": args.batch, "response_length": args.response_length, "epochs": args.epochs,
        "num_mini_batches": 1, "lora": args.lora, "old_logprobs": args.old_logprobs, "value_head": args.value_head, "threads": args.threads,
        "torch": torch.__version__,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
