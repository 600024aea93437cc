"""An example helper, not a part of the library: tiny language models built from nothing, for tests,
demos and benchmarks on machines without a model hub: a word-level tokenizer over a given vocabulary and a small GPT-2, saved with
``save_pretrained`` so everything downstream loads them like any hub model."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")


def build_word_tokenizer(words: Iterable[str]) -> Any:
    """A whitespace-split word-level tokenizer: one id per word, plus PAD/UNK/BOS/EOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in list(SPECIAL_TOKENS) + list(words):
        vocab.setdefault(token, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )
    tokenizer.padding_side = "left"
    return tokenizer


def build_tiny_gpt2(
    directory: str | Path,
    words: Iterable[str],
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_positions: int = 64,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised GPT-2 and its word tokenizer to ``directory``; returns it."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from ppokit.rlhf.models import quiet_transformers

    quiet_transformers()
    directory = Path(directory)
    tokenizer = build_word_tokenizer(words)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_positions,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
