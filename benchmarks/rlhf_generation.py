"""Where RLHF generation spends its time: transformers' ``generate`` against ppokit's sampling loop,
and the loop split into prefill, decode forward passes and sampling, on the same model and seeds.

    .venv/bin/python benchmarks/rlhf_generation.py [--size tiny|gpt2-124m] [--batch 8] [--new-tokens 24]

``tiny`` is the GPT-2 of ``rlhf_trl_anchor.py`` (2 layers, width 128, 512 words); ``gpt2-124m`` is
GPT-2 small's shape with seeded random weights. Both ways sample the same tokens for a seed (checked
on every repeat: the script stops if they differ). Each repeat runs both, alternating which goes
first; the table gives the medians. The split times each part of the loop separately (with a CUDA
synchronisation per part on a GPU, which slows it a little), so its total is a little over the
loop's own time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=["tiny", "gpt2-124m"], default="tiny")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import rlhf_trl_anchor as anchor
    from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel

    from ppokit.rlhf.models import generation
    from ppokit.rlhf.models.generation import encode_prompts
    from ppokit.rlhf.models.loading import position_ids_from_mask, quiet_transformers

    quiet_transformers()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer, words = anchor.build_tokenizer(512, tmp)
    width, layers, heads, vocab = (128, 2, 4, len(tokenizer)) if args.size == "tiny" else (768, 12, 12, 50_257)
    config = GPT2Config(n_layer=layers, n_embd=width, n_head=heads, n_positions=1024, vocab_size=vocab,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).to(device).eval()
    texts = [tokenizer.decode(ids) for ids in anchor.build_prompts(tokenizer, words)["input_ids"]][: args.batch]
    ids, mask = encode_prompts(tokenizer, texts * (args.batch // len(texts) + 1), device)
    ids, mask = ids[: args.batch], mask[: args.batch]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    @torch.no_grad()
    def split_loop() -> dict[str, float]:
        """The loop's parts timed one by one (the same calls as generation.sample)."""
        parts = {"prefill": 0.0, "decode": 0.0, "sampling": 0.0}
        cache_arg = generation._cache_argument(model)
        assert cache_arg is not None
        t = time.perf_counter()
        cache = DynamicCache(config=model.config)
        positions = position_ids_from_mask(mask)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                    **{cache_arg: cache})
        sync()
        parts["prefill"] += time.perf_counter() - t
        running, attention, positions = torch.ones(len(ids), dtype=torch.bool, device=device), mask, positions[:, -1:]
        eos = torch.tensor([tokenizer.eos_token_id], device=device)
        for step in range(args.new_tokens):
            t = time.perf_counter()
            probs = torch.softmax(out.logits[:, -1].float() / args.temperature, dim=-1)
            drawn = torch.where(running, torch.multinomial(probs, 1).squeeze(1), tokenizer.pad_token_id)
            running &= ~torch.isin(drawn, eos)
            done = not bool(running.any())
            parts["sampling"] += time.perf_counter() - t
            if done or step == args.new_tokens - 1:
                break
            t = time.perf_counter()
            attention = torch.cat([attention, attention.new_ones(len(ids), 1)], dim=1)
            positions = positions + 1
            out = model(input_ids=drawn[:, None], attention_mask=attention, position_ids=positions, use_cache=True,
                        logits_to_keep=1, **{cache_arg: cache})
            sync()
            parts["decode"] += time.perf_counter() - t
        return parts

    rows: dict[str, list[float]] = {"generate": [], "loop": [], "prefill": [], "decode": [], "sampling": []}
    for repeat in range(args.repeats + 1):  # the first is warm-up
        order = ["generate", "loop"] if repeat % 2 else ["loop", "generate"]
        made = {}
        for way in order:
            torch.manual_seed(repeat)
            sync()
            t = time.perf_counter()
            if way == "loop":
                made[way], _ = generation.sample(model, tokenizer, ids, mask, args.new_tokens, args.temperature)
            else:
                made[way], _ = generation._sample_with_generate(model, tokenizer, ids, mask, args.new_tokens,
                                                                args.temperature, False, False)
            sync()
            if repeat:
                rows[way].append(time.perf_counter() - t)
        if not torch.equal(made["loop"].input_ids, made["generate"].input_ids):
            sys.exit(f"repeat {repeat}: the loop and generate sampled different tokens")
        torch.manual_seed(repeat)
        parts = split_loop()
        if repeat:
            for key, value in parts.items():
                rows[key].append(value)
    steps = made["loop"].completion_ids.shape[1]
    print(f"\n{args.size}, {args.batch} prompts × up to {args.new_tokens} new tokens (last repeat: {steps}), "
          f"device {args.device}, {args.threads} thread(s), torch {torch.__version__}, median of {args.repeats}\n")
    print("| way / part | ms |\n|---|---:|")
    for key, values in rows.items():
        print(f"| {key} | {1000 * statistics.median(values):.1f} |")
    ratio = statistics.median(rows["loop"]) / statistics.median(rows["generate"])
    print(f"\nloop / generate = {ratio:.2f}; identical tokens on every repeat")
    return 0


if __name__ == "__main__":
    sys.exit(main())
