"""RLHF PPO at a real model size: ppokit against TRL 1.12's ``trl.experimental.ppo``, one fresh process each.

    bash benchmarks/make_bench_venv.sh                    # once: .venv-bench with TRL 1.12
    .venv/bin/python benchmarks/rlhf_gpu.py --device cuda  # the issue's setting: Qwen2-0.5B shape, 64 × 128 + 128
    .venv/bin/python benchmarks/rlhf_gpu.py --size small --batch 8 --prompt-length 16 --response-length 16

The models are built here, once, from a config with seeded random weights (no hub): a policy of the
``--size`` shape (``qwen2-0.5b``: 24 layers, width 896, 14 heads with 2 KV heads, MLP 4864, a
151,936-token vocabulary, tied embeddings, 494 M parameters; ``gpt2-124m``: GPT-2 small; ``small``:
Qwen2 at 2 layers, width 128), and a reward model of the same shape (a sequence classifier on the policy's
trunk). The critic is a separate model initialised from the reward model on both sides (TRL's
layout). Prompts are exactly ``--prompt-length`` tokens; completions run to ``--response-length``
(no stop token on the TRL side; ppokit stops a row at EOS, which random weights rarely sample).
One step = generate, score, reference/value/old-policy forward passes, ``--epochs`` PPO epochs over
``--minibatches`` minibatches.

Variants: ppokit and TRL as given, each also with LoRA (r 8 on q_proj/v_proj) and with gradient
checkpointing; on CUDA both use bf16 mixed precision (``--precision``). Each variant runs in its own
process; the table gives seconds per step (median, first step left out), ppokit's split into
generation, scoring, forward passes and update, tokens/s and peak memory (GPU: the allocator's peak;
CPU: peak RSS).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_run import run  # noqa: E402

SIZES = {
    "qwen2-0.5b": {"arch": "qwen2", "hidden": 896, "layers": 24, "heads": 14, "kv_heads": 2, "intermediate": 4864,
                   "vocab": 151_936},
    "gpt2-124m": {"arch": "gpt2", "hidden": 768, "layers": 12, "heads": 12, "kv_heads": None, "intermediate": 3072,
                  "vocab": 50_257},
    "small": {"arch": "qwen2", "hidden": 128, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 512,
              "vocab": 2048},
}


def words_for(n: int) -> list[str]:
    """``n`` distinct pseudo-words of two and three syllables ('baba', 'babake', ...)."""
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    words = [a + b for a in syllables for b in syllables]
    words += [w + c for w in words for c in syllables]
    return words[:n]


def build_models(size: str, directory: Path, prompt_length: int, n_prompts: int = 128) -> tuple[Path, Path, Path]:
    """Write the policy (with a byte-level BPE tokenizer), a reward model of the same shape and the
    prompts (texts and their ids, exactly ``prompt_length`` tokens each); returns the three paths."""
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from ppokit.rlhf.tiny import build_bpe_tokenizer, causal_lm_config

    shape = SIZES[size]
    policy_dir, reward_dir = directory / "policy", directory / "reward"
    tokenizer = build_bpe_tokenizer(words_for(shape["vocab"] // 4), vocab_size=shape["vocab"])
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    config = causal_lm_config(shape["arch"], shape["vocab"], shape["hidden"], shape["layers"], shape["heads"],
                              shape["kv_heads"], shape["intermediate"],
                              positions=1024 if shape["arch"] == "gpt2" else 4096, special=special)
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_config(config)
    print(f"policy: {sum(p.numel() for p in policy.parameters()) / 1e6:.0f} M parameters, tokenizer "
          f"{len(tokenizer)} tokens", file=sys.stderr)
    policy.save_pretrained(policy_dir)
    tokenizer.save_pretrained(policy_dir)
    del policy
    torch.manual_seed(1)
    reward = AutoModelForSequenceClassification.from_pretrained(policy_dir, num_labels=1)
    reward.config.pad_token_id = tokenizer.pad_token_id
    reward.save_pretrained(reward_dir)
    tokenizer.save_pretrained(reward_dir)

    # Words that are one token after a space, so a prompt of L of them is exactly L tokens.
    single = [w for w in words_for(min(4000, shape["vocab"] // 4)) if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1]
    rng = random.Random(0)
    texts = ["".join(" " + rng.choice(single) for _ in range(prompt_length)) for _ in range(n_prompts)]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert all(len(row) == prompt_length for row in ids), "prompt words must be single tokens"
    prompts = directory / "prompts.json"
    prompts.write_text(json.dumps({"texts": texts, "input_ids": ids}))
    return policy_dir, reward_dir, prompts


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="qwen2-0.5b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--prompt-length", type=int, default=128)
    p.add_argument("--response-length", type=int, default=128)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--minibatches", type=int, default=4)
    p.add_argument("--steps", type=int, default=4, help="PPO steps per run; the first is warm-up")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=["no", "bf16"], default=None, help="default: bf16 on CUDA, no on CPU")
    p.add_argument("--variants", nargs="+", default=["base", "lora", "gc", "lora+gc"],
                   help="any of base, lora, gc (gradient checkpointing), lora+gc")
    p.add_argument("--no-trl", action="store_true", help="ppokit only (no .venv-bench needed)")
    p.add_argument("--trl-python", type=Path, default=ROOT / ".venv-bench" / "bin" / "python",
                   help="the Python with TRL 1.12 (default: .venv-bench's)")
    p.add_argument("--sampling", action="store_true", help="also ppokit with old_logprobs: sampling (TRL's way)")
    p.add_argument("--before", type=Path, help="also ppokit from this checkout (PYTHONPATH), e.g. a git worktree")
    p.add_argument("--json", help="write every run's result here")
    return p


def precision_of(args: argparse.Namespace) -> str:
    return args.precision or ("bf16" if args.device.startswith("cuda") else "no")


def runs(args: argparse.Namespace, policy_dir: Path, reward_dir: Path, prompts: Path,
         trl_py: Path | None) -> list[tuple[str, str, Path, str, list[str]]]:
    """Every run of the comparison, in order: ``(variant, library, python, script, arguments)``;
    TRL's only with ``trl_py``. (benchmarks/gpu_check.py runs the same list.)"""
    precision = precision_of(args)
    common = ["--batch", str(args.batch), "--response-length", str(args.response_length),
              "--epochs", str(args.epochs), "--steps", str(args.steps), "--threads", str(args.threads),
              "--model-dir", str(policy_dir), "--reward-dir", str(reward_dir),
              "--prompts-file", str(prompts), "--device", args.device,
              "--lora-targets", *(["c_attn"] if SIZES[args.size]["arch"] == "gpt2" else ["q_proj", "v_proj"]),
              "--minibatches", str(args.minibatches)]
    out = []
    for variant in args.variants:
        flags = (["--lora"] if "lora" in variant else []) + (["--gradient-checkpointing"] if "gc" in variant else [])
        ours = common + flags + ["--mixed-precision", precision]
        if getattr(args, "before", None):
            out.append((variant, "ppokit-before", Path(sys.executable), "rlhf_ppokit.py", ours))
        out.append((variant, "ppokit", Path(sys.executable), "rlhf_ppokit.py", ours))
        if getattr(args, "sampling", False):
            out.append((variant, "ppokit-sampling", Path(sys.executable), "rlhf_ppokit.py",
                        ours + ["--old-logprobs", "sampling"]))
        if trl_py is not None:
            out.append((variant, "trl", trl_py, "rlhf_trl_anchor.py",
                        common + flags + ["--no-forced-gc"] + (["--bf16"] if precision == "bf16" else [])))
    return out


def table(results: list[dict]) -> str:
    """The Markdown table of the runs' results (each with ``variant`` and ``side`` added)."""
    lines = ["| variant | library | s / step | generate | score | forward | update | tokens / s | peak memory MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        phases = r.get("phases_s") or {}
        update = "update_s" if r["side"] == "trl" else "epochs_s"  # TRL's anchor: the step less the other phases
        split = [f"{phases[k]:.2f}" if k in phases else "–" for k in ("generate_s", "score_s", "forward_s", update)]
        memory = r.get("peak_gpu_mib") or r["peak_rss_mib"]
        lines.append(f"| {r['variant']} | {r['side']} | {r['s_per_step_median']:.2f} | {' | '.join(split)} | "
                     f"{r['tokens_per_s']:.0f} | {memory:.0f} |")
    return "\n".join(lines)


def main() -> int:
    args = parser().parse_args()
    precision = precision_of(args)
    trl_py = None if args.no_trl else args.trl_python
    if trl_py is not None and not trl_py.exists():
        sys.exit(f"{trl_py} missing: run bash benchmarks/make_bench_venv.sh, or pass --no-trl")
    results = []
    with tempfile.TemporaryDirectory(prefix="rlhf-gpu-") as tmp:
        policy_dir, reward_dir, prompts = build_models(args.size, Path(tmp), args.prompt_length)
        for variant, library, py, script, argv in runs(args, policy_dir, reward_dir, prompts, trl_py):
            env = {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(args.before.resolve() if library == "ppokit-before" else ROOT)}
            result = run(py, script, argv, env=env)
            result.update(variant=variant, side=library)
            results.append(result)
            print(f"{library} {variant}: {result['s_per_step_median']:.3f} s/step", file=sys.stderr, flush=True)

    print(f"\nsize {args.size}, device {args.device}, {args.batch} prompts × {args.prompt_length} + {args.response_length} "
          f"tokens, {args.epochs} epochs × {args.minibatches} minibatches, precision {precision}\n")
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
