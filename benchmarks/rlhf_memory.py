"""What each RLHF memory option saves: peak memory of one PPO update, one fresh process per option.

    nice .venv/bin/python benchmarks/rlhf_memory.py                      # all options, GPT-2-small shape
    .venv/bin/python benchmarks/rlhf_memory.py --layers 1 --width 32 --heads 2 --options separate,head  # smoke

The models are built from a config with random weights (no hub here), which has the arithmetic and
memory of the real ones: a GPT-2-shaped causal LM (default 12 layers × 768 wide, ~85M parameters in
its blocks; the vocabulary is the demo's ~45 words, so the embeddings are small) as the policy, and a
sequence classifier of the same shape as the reward model. Each option then runs, in a process of its
own, the same ``--updates`` PPO updates (``--batch`` prompts, up to ``--new-tokens`` sampled tokens
each, one epoch over one minibatch). Two by default: AdamW creates its state at the first step, after
the first backward pass, so only from the second update on do the optimiser state and the activations
coexist, as they do for the rest of a run. The random generator is reseeded after the models are
built, so every option samples the same completions (a LoRA initialisation draws random numbers
first; with its zero-initialised B matrices the policy's distribution is the same). It reports

- ``peak_mib``: the peak resident memory of the process (``ru_maxrss``) minus its resident memory
  after the imports, before any model was loaded: what the models, gradients, optimiser state and
  activations took at their highest;
- on a CUDA device also ``peak_gpu_mib`` (``torch.cuda.max_memory_allocated``).

On a CPU transformers memory-maps the safetensors files: a frozen model's weights count in the
resident memory once its forward pass has touched them (a cast to another dtype makes a copy). The
children run with ``MALLOC_MMAP_THRESHOLD_=65536``: glibc then serves every block of 64 KiB or more
with its own mapping and unmaps it when freed, so the resident memory follows the live tensors. With
glibc's default (a threshold that grows as large blocks are freed) freed activations stay in the heap
and the peak remembers an earlier phase's layout rather than what the option itself needs.

Every option starts from the baseline (a separate critic initialised from the reward model, float32,
a frozen reference copy) and changes what its name says. On a CPU ``offload_frozen`` moves nothing
(the device is the CPU): it is reported as measured. One process per option, one after another, so
the figures do not disturb each other; run it with ``nice`` on a shared machine.

Output: a Markdown table on stderr and one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

#: Each option's config fields on top of the baseline's, in the table's order.
OPTIONS: dict[str, dict[str, object]] = {
    "separate": {},
    "head": {"value_model": "head"},
    "lora_policy": {"lora": True},
    "lora_critic": {"value_model": "lora"},
    "share_reward_trunk": {"value_model": "lora", "share_reward_trunk": True},
    "offload_frozen": {"offload_frozen": True},
    "frozen_bf16": {"frozen_dtype": "bfloat16"},
    "gradient_checkpointing": {"gradient_checkpointing": True},
    "all_of_them": {"lora": True, "value_model": "lora", "share_reward_trunk": True, "frozen_dtype": "bfloat16",
                    "gradient_checkpointing": True, "offload_frozen": True},
}
LABELS = {
    "separate": "separate critic (baseline)",
    "head": "value head on the policy",
    "lora_policy": "LoRA policy (reference = adapter-free policy)",
    "lora_critic": "LoRA critic (frozen trunk copy)",
    "share_reward_trunk": "LoRA critic on the reward model's trunk",
    "offload_frozen": "offload_frozen",
    "frozen_bf16": "frozen_dtype: bfloat16",
    "gradient_checkpointing": "gradient_checkpointing",
    "all_of_them": "LoRA policy + shared-trunk LoRA critic + bf16 frozen + checkpointing + offload",
}


def rss_mib() -> float:
    """The process's resident memory now (Linux: /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def build_models(directory: Path, layers: int, width: int, heads: int, seed: int) -> tuple[Path, Path]:
    """A GPT-2-shaped policy and a reward model of the same shape, random weights, saved with their tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from ppokit.rlhf.demo import WORDS
    from ppokit.rlhf.tiny import build_word_tokenizer

    tokenizer = build_word_tokenizer(WORDS)
    config = AutoConfig.for_model("gpt2", n_layer=layers, n_embd=width, n_head=heads, n_positions=1024,
                                  vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    policy, reward = directory / "policy", directory / "reward"
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(policy)
    config.num_labels = 1
    AutoModelForSequenceClassification.from_config(config).save_pretrained(reward)
    for path in (policy, reward):
        tokenizer.save_pretrained(path)
    return policy, reward


def measure(option: str, policy: str, reward: str, batch: int, new_tokens: int, threads: int, device: str,
            updates: int) -> dict:
    """``updates`` PPO updates with ``option``, in this process; the peak memory over what the imports took."""
    import peft  # noqa: F401 - imported before the baseline, like everything else
    import torch
    import transformers  # noqa: F401

    from ppokit.rlhf.config import RLHFConfig
    from ppokit.rlhf.demo import NOUNS
    from ppokit.rlhf.ppo.trainer import RLHFTrainer

    torch.set_num_threads(threads)
    prompts = [{"prompt": f"describe the {NOUNS[i % len(NOUNS)]} :"} for i in range(batch)]
    config = RLHFConfig(
        policy=policy, rewards=[reward], value_init="reward", total_updates=updates, batch_size=batch, num_minibatches=1,
        num_epochs=1, max_new_tokens=new_tokens, dtype="float32", device=device, torch_threads=threads, seed=0,
        progress=False, tensorboard=False, sample_every=0, lora_target_modules=["c_attn", "c_proj", "c_fc"],
        **OPTIONS[option],  # type: ignore[arg-type]
    )
    with tempfile.TemporaryDirectory(prefix="ppokit-memory-") as run_dir:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        before = rss_mib()
        trainer = RLHFTrainer(config, prompts=prompts, run_dir=run_dir)
        torch.manual_seed(1)  # the same completions whatever the models' construction drew
        records = [trainer.update() for _ in range(updates)]
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        trainable = sum(p.numel() for p in trainer.models.trainable.parameters() if p.requires_grad)
    return {
        "option": option, "peak_mib": round(peak - before, 1), "rss_before_mib": round(before, 1),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        "trainable_params": trainable, "response_length": [r["response_length"] for r in records],
        "loss": [r["loss"] for r in records], "device": device,
    }


def table(rows: list[dict]) -> str:
    base = next((r["peak_mib"] for r in rows if r["option"] == "separate"), None)
    gpu = any(r["peak_gpu_mib"] is not None for r in rows)
    head = "| option | peak memory (MiB) | vs baseline | trainable parameters |" + (" peak GPU (MiB) |" if gpu else "")
    lines = [head, "|---|---:|---:|---:|" + ("---:|" if gpu else "")]
    for r in rows:
        delta = f"{100 * (r['peak_mib'] / base - 1):+.0f}%" if base else ""
        cells = f"| {LABELS[r['option']]} | {r['peak_mib']:,.0f} | {delta} | {r['trainable_params'] / 1e6:.1f}M |"
        lines.append(cells + (f" {r['peak_gpu_mib']:,.0f} |" if gpu else ""))
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--batch", type=int, default=16, help="prompts in the update")
    p.add_argument("--new-tokens", type=int, default=64, help="max_new_tokens")
    p.add_argument("--updates", type=int, default=2, help="PPO updates per option")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--options", default=",".join(OPTIONS), help=f"comma-separated, from {', '.join(OPTIONS)}")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: measure this option in this process
    p.add_argument("--policy", help=argparse.SUPPRESS)
    p.add_argument("--reward", help=argparse.SUPPRESS)
    return p


def child_command(option: str, policy: Path, reward: Path, args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The command and environment of the fresh process that measures ``option`` (benchmarks/gpu_check.py
    runs them too)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    common = ["--batch", str(args.batch), "--new-tokens", str(args.new_tokens), "--updates", str(args.updates),
              "--threads", str(args.threads),
              "--device", args.device, "--policy", str(policy), "--reward", str(reward)]
    return [sys.executable, str(Path(__file__).resolve()), "--child", option, *common], env


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.child:
        row = measure(args.child, args.policy, args.reward, args.batch, args.new_tokens, args.threads, args.device,
                      args.updates)
        print(json.dumps(row), flush=True)
        return 0

    options = [o.strip() for o in args.options.split(",") if o.strip()]
    unknown = [o for o in options if o not in OPTIONS]
    if unknown:
        p.error(f"unknown option(s) {', '.join(unknown)}; choose from {', '.join(OPTIONS)}")
    from ppokit.rlhf.models.loading import quiet_transformers

    quiet_transformers()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ppokit-memory-models-") as tmp:
        policy, reward = build_models(Path(tmp), args.layers, args.width, args.heads, seed=0)
        for option in options:
            cmd, env = child_command(option, policy, reward, args)
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"option {option!r} failed (exit {proc.returncode})")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{option}: {row['peak_mib']:.0f} MiB", file=sys.stderr, flush=True)
            rows.append(row)
    import torch

    shape = {"layers": args.layers, "width": args.width, "heads": args.heads, "batch": args.batch,
             "new_tokens": args.new_tokens, "updates": args.updates, "threads": args.threads, "device": args.device, "torch": torch.__version__}
    print(table(rows), file=sys.stderr)
    print(json.dumps({"shape": shape, "rows": rows}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
