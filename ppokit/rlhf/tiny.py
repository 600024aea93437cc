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

    from ppokit.rlhf.models.loading import quiet_transformers

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


def build_bpe_tokenizer(words: Iterable[str], vocab_size: int | None = None) -> Any:
    """A byte-level BPE tokenizer trained on ``words`` (each becomes one token when the vocabulary is
    large enough), plus PAD/UNK/BOS/EOS. transformers maps Llama, Qwen2 and GPT-NeoX directories to
    their own tokenizer classes, which read a byte-level BPE correctly but not a word-level one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = list(dict.fromkeys(words))
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    size = vocab_size or len(SPECIAL_TOKENS) + len(alphabet) + 4 * len(words)
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=alphabet,
                                  show_progress=False)
    # Each word both starting a text and after a space, as prompts and completions use them.
    core.train_from_iterator([w for word in words for w in (word, " " + word)], trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )
    tokenizer.padding_side = "left"
    return tokenizer


#: Architectures :func:`build_causal_lm` knows how to shape, by transformers ``model_type``.
ARCHITECTURES = ("gpt2", "llama", "qwen2", "gpt_neox")


def causal_lm_config(architecture: str, vocab_size: int, hidden: int, layers: int, heads: int,
                     kv_heads: int | None = None, intermediate: int | None = None, positions: int = 2048,
                     special: dict[str, int] | None = None) -> Any:
    """A transformers config of ``architecture`` with the given shape (the field names differ by
    architecture; this is the one place that knows them)."""
    from transformers import AutoConfig

    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture {architecture!r}: expected one of {', '.join(ARCHITECTURES)}")
    intermediate = intermediate or 4 * hidden
    special = dict(special or {})
    if architecture == "gpt2":
        shape: dict[str, Any] = {"n_embd": hidden, "n_layer": layers, "n_head": heads, "n_inner": intermediate,
                                 "n_positions": positions}
    else:
        shape = {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
                 "intermediate_size": intermediate, "max_position_embeddings": positions}
        if architecture in ("llama", "qwen2"):
            shape["num_key_value_heads"] = kv_heads or heads
        if architecture == "qwen2":
            shape["tie_word_embeddings"] = True  # as Qwen2-0.5B
    return AutoConfig.for_model(architecture, vocab_size=vocab_size, **shape, **special)


def build_causal_lm(directory: str | Path, words: Iterable[str], architecture: str = "gpt2", hidden: int = 64,
                    layers: int = 2, heads: int = 4, kv_heads: int | None = None, intermediate: int | None = None,
                    positions: int = 2048, seed: int = 0) -> Path:
    """Write a randomly initialised causal LM of ``architecture`` (any of :data:`ARCHITECTURES`,
    built ``from_config``: a real model's arithmetic and memory) and a byte-level BPE tokenizer
    trained on ``words`` to ``directory``."""
    from transformers import AutoModelForCausalLM

    from ppokit.rlhf.models.loading import quiet_transformers

    quiet_transformers()
    directory = Path(directory)
    tokenizer = build_bpe_tokenizer(words)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    config = causal_lm_config(architecture, len(tokenizer), hidden, layers, heads, kv_heads, intermediate,
                              positions, special)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
