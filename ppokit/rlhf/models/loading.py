"""Loading language models and the scalar-head models built on them (value and reward models).

Every loader takes a hub id or a local directory and passes ``trust_remote_code`` through only as
the user set it. A *scalar-head model* is a transformer trunk plus a linear head that reads one
number off each position's last hidden state: per token it is a critic, at the last token a reward
model.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ppokit import runtime
from ppokit.errors import CheckpointError, ConfigError
from ppokit.io.atomic import strict_json
from ppokit.rlhf.config import LMRuntime
from ppokit.rlhf.models.logprobs import completion_logits_of

log = logging.getLogger("ppokit")

#: Written next to a reward model saved by ppokit: head type and output normalisation.
REWARD_META = "ppokit_reward.json"
HEAD_WEIGHTS = "scalar_head.safetensors"


def quiet_transformers() -> None:
    """Silence transformers' per-load reports and progress bars; ppokit reports what matters."""
    import warnings

    import transformers

    # peft calls an API transformers has deprecated; the warning is for peft's authors, not users.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    # peft notices GPT-2's Conv1D layers and sets fan_in_fan_out itself; nothing for the user to do.
    warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False", category=UserWarning)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def setup_runtime(config: LMRuntime) -> tuple[torch.device, torch.dtype]:
    """Apply the shared runtime fields (threads, seeds, device, dtype); returns ``(device, dtype)``."""
    quiet_transformers()
    device = runtime.setup(config.seed, config.device, config.torch_threads)
    return device, runtime.resolve_dtype(config.dtype, device)


def _load_error(kind: str, name: str, err: Exception, attn_implementation: str | None = None) -> Exception:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    # transformers refuses an unknown kernel, or one this model or machine cannot run, while loading:
    # that is the config field's fault, not the model's.
    if attn_implementation is not None and ("attn_implementation" in first or "attention" in first.lower()):
        return ConfigError(f"config field 'attn_implementation' = {attn_implementation!r} cannot load {kind} "
                           f"{name!r}: {first}")
    hint = ""
    if not Path(name).exists():
        hint = " (not a local directory; as a hub id it needs network access to the hub)"
    return CheckpointError(f"could not load {kind} {name!r}{hint}: {first}")


def load_tokenizer(name: str, trust_remote_code: bool = False) -> Any:
    """The tokenizer of ``name``, with a pad token (EOS when it has none) and left padding."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001 - transformers raises OSError, ValueError, ...
        raise _load_error("tokenizer", name, err) from None
    # A model directory without its tokenizer files loads as an empty tokenizer that turns every
    # text into nothing; everything downstream would then "train" on nothing.
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)) + 1:
        raise CheckpointError(f"tokenizer of {name!r} has a vocabulary of {len(tokenizer)} token(s): the directory "
                              "is probably missing its tokenizer files (tokenizer.json, or vocab.json and merges.txt)")
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise CheckpointError(f"tokenizer {name!r} has neither a pad nor an EOS token; add one before training")
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise CheckpointError(f"tokenizer {name!r} has no EOS token, so completions could never end; add one")
    tokenizer.padding_side = "left"
    return tokenizer


def model_positions(name: str, trust_remote_code: bool = False) -> int | None:
    """How many positions (tokens) the model ``name`` can attend over, from its config; None when
    the config does not say (rotary models without a stated limit)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001 - transformers raises OSError, ValueError, ...
        raise _load_error("model config", name, err) from None
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def length_limit(max_length: int, name: str, positions: int | None, reserve: int = 0) -> int:
    """``max_length`` capped to what the model ``name`` can take (``positions``, less ``reserve``
    tokens kept for generation): longer rows are then reported as too long instead of crashing inside
    the model."""
    if positions is None:
        return max_length
    room = positions - reserve
    if room < 1:
        raise ConfigError(f"config field 'max_new_tokens' = {reserve} leaves no room for a prompt in the {positions} "
                          f"positions of {name!r}")
    return min(max_length, room)


def check_tokenizes(tokenizer: Any, texts: list[str], model: str, what: str, sample: int = 256) -> None:
    """Stop when ``texts`` (a sample of them) tokenize to nothing, or to nothing but unknown tokens:
    training on that would report success while learning nothing."""
    probe = [t for t in texts[:sample] if t.strip()]
    if not probe:
        return
    unknown = tokenizer.unk_token_id
    ids = tokenizer(probe, add_special_tokens=False)["input_ids"]
    if all(not row or all(i == unknown for i in row) for row in ids):
        raise CheckpointError(
            f"the tokenizer of {model!r} turns the {what} into nothing but unknown tokens (e.g. {probe[0][:40]!r} -> "
            f"{ids[0][:8]}): is it the tokenizer this data is written for, with all its files?")


def fuse_activations(model: nn.Module) -> nn.Module:
    r"""Swap GPT-2's Python-level tanh-GELU for torch's fused kernel of the same formula.

    ``NewGELUActivation`` computes :math:`\tfrac12 x(1 + \tanh(\sqrt{2/\pi}(x + 0.044715x^3)))` in
    five separate tensor ops; ``gelu(x, approximate='tanh')`` is that formula in one kernel, forward
    and backward (BENCHMARKS.md has what it saved on the benchmark GPT-2).
    """
    from transformers.activations import GELUTanh, NewGELUActivation

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is NewGELUActivation:
                setattr(module, name, GELUTanh())
    return model


def pretrained_options(dtype: torch.dtype, trust_remote_code: bool, attn_implementation: str | None) -> dict[str, Any]:
    """The keyword arguments of every ``from_pretrained`` here: ``attn_implementation`` only when set,
    so that transformers' own choice stands otherwise."""
    options: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation is not None:
        options["attn_implementation"] = attn_implementation
    return options


def load_causal_lm(name: str, dtype: torch.dtype, device: torch.device, trust_remote_code: bool = False,
                   attn_implementation: str | None = None) -> Any:
    """A ``transformers`` causal LM from a hub id or a directory, with GPT-2's GELU fused."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            name, **pretrained_options(dtype, trust_remote_code, attn_implementation))
    except Exception as err:  # noqa: BLE001
        raise _load_error("causal LM", name, err, attn_implementation) from None
    return fuse_activations(model).to(device)


def load_trunk(name: str | Path, dtype: torch.dtype, trust_remote_code: bool = False,
               attn_implementation: str | None = None) -> Any:
    """The bare transformer (``AutoModel``) of a hub id or a directory, with GPT-2's GELU fused."""
    from transformers import AutoModel

    try:
        trunk = AutoModel.from_pretrained(name, **pretrained_options(dtype, trust_remote_code, attn_implementation))
    except Exception as err:  # noqa: BLE001
        raise _load_error("model trunk", str(name), err, attn_implementation) from None
    return fuse_activations(trunk)


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that count only real tokens, so a left-padded row starts at position 0.

    Without them a left-padded prompt would be read at positions shifted by its padding, and its
    log-probs would differ from the same prompt unpadded.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def pad_right(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token rows into ``(ids, mask)``."""
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def trunk_of(model: nn.Module) -> nn.Module:
    """The bare transformer inside a ``*ForCausalLM`` / ``*ForSequenceClassification`` model."""
    prefix = getattr(model, "base_model_prefix", None)
    trunk = getattr(model, prefix, None) if prefix else None
    if trunk is None:
        raise ConfigError(f"cannot find the transformer trunk of {type(model).__name__} (base_model_prefix={prefix!r})")
    return trunk


def hidden_size_of(model: nn.Module) -> int:
    config = model.config
    for name in ("hidden_size", "n_embd", "d_model"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    raise ConfigError(f"cannot tell the hidden size of {type(model).__name__} from its config")


class ScalarHeadModel(nn.Module):
    """A transformer trunk and a linear head giving one number per position.

    ``forward`` returns ``[batch, seq]`` values; :meth:`last_token` reads the value at each row's
    last real token (a right-padded batch), which is what a reward model outputs.
    """

    def __init__(self, trunk: nn.Module, hidden_size: int, head: nn.Linear | None = None) -> None:
        super().__init__()
        self.trunk: Any = trunk  # a transformers model
        self.head = head if head is not None else nn.Linear(hidden_size, 1)
        if head is None:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    @property
    def config(self) -> Any:
        return self.trunk.config

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None = None) -> Tensor:
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        hidden = self.trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=False).last_hidden_state
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)

    def last_token(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        values = self(input_ids, attention_mask)
        last = attention_mask.long().sum(-1).clamp_min(1) - 1
        return values.gather(1, last.unsqueeze(1)).squeeze(1)

    def save(self, path: str | Path, state: dict[str, Tensor] | None = None) -> None:
        """The trunk (``save_pretrained``) and the head; ``state``: this model's weights gathered from a
        sharded copy (``trunk.*``, ``head.*``), written in place of its own."""
        from safetensors.torch import save_file

        path = Path(path)
        if state is None:
            self.trunk.save_pretrained(path)
            head = self.head.state_dict()
        else:
            self.trunk.save_pretrained(path, state_dict={k[6:]: v for k, v in state.items() if k.startswith("trunk.")})
            head = {k[5:]: v for k, v in state.items() if k.startswith("head.")}
        save_file({k: v.detach().cpu().contiguous() for k, v in head.items()}, path / HEAD_WEIGHTS)

    @classmethod
    def from_causal_lm(cls, model: nn.Module) -> ScalarHeadModel:
        """A value model on a causal LM's trunk, with a zero-initialised head (values start at 0)."""
        return cls(trunk_of(model), hidden_size_of(model))

    @classmethod
    def from_sequence_classifier(cls, model: nn.Module) -> ScalarHeadModel:
        """Per-token values from a ``*ForSequenceClassification`` reward model: its trunk and its
        score head, so a critic initialised from the reward model starts out predicting scores."""
        score = getattr(model, "score", None) or getattr(model, "classifier", None)
        if not isinstance(score, nn.Linear) or score.out_features != 1:
            raise ConfigError(
                f"{type(model).__name__} has no single-output linear 'score' head to initialise a critic from; "
                "set value_init: policy"
            )
        head = nn.Linear(score.in_features, 1, bias=score.bias is not None)
        head.load_state_dict(score.state_dict())
        head = head.to(score.weight.device, score.weight.dtype)
        return cls(trunk_of(model), score.in_features, head)

    @classmethod
    def load(cls, path: str | Path, dtype: torch.dtype, device: torch.device, trust_remote_code: bool = False,
             attn_implementation: str | None = None) -> ScalarHeadModel:
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / HEAD_WEIGHTS).is_file():
            raise CheckpointError(f"{path}: no {HEAD_WEIGHTS}; not a ppokit scalar-head model directory")
        trunk = load_trunk(path, dtype, trust_remote_code, attn_implementation)
        state = load_file(path / HEAD_WEIGHTS)
        if "weight" not in state or state["weight"].ndim != 2:
            raise CheckpointError(f"{path / HEAD_WEIGHTS}: not a linear head's weights")
        head = nn.Linear(state["weight"].shape[1], 1, bias="bias" in state)
        head.load_state_dict(state)
        return cls(trunk, head.in_features, head).to(device=device, dtype=dtype)

    def merged(self) -> ScalarHeadModel:
        """A copy with the LoRA adapters on the trunk (``value_model: lora``) merged into its weights: an
        ordinary scalar-head model that :meth:`load` reads back. The live model is left as it is (an
        in-place merge and unmerge would round the frozen weights)."""
        trunk = copy.deepcopy(self.trunk).merge_and_unload()
        return ScalarHeadModel(trunk, self.head.in_features, self.head)


class PolicyWithValueHead(nn.Module):
    """A causal LM and a value head on its last hidden state: one forward pass gives both the
    next-token logits and a value per position (``value_model: head``)."""

    def __init__(self, lm: Any) -> None:
        super().__init__()
        self.lm: Any = lm  # a transformers causal LM (or a peft model around one)
        base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
        self.value_head = nn.Linear(hidden_size_of(base), 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        param = next(lm.parameters())
        self.value_head.to(param.device)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=False, output_hidden_states=True)
        hidden = out.hidden_states[-1]
        values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)
        return out.logits, values

    def completion(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor,
                   prompt_length: int) -> tuple[Tensor, Tensor]:
        """Logits and values at the positions that predict the completion tokens only."""
        logits, out = completion_logits_of(self.lm, input_ids, attention_mask, position_ids, prompt_length,
                                           output_hidden_states=True)
        hidden = out.hidden_states[-1][:, prompt_length - 1: -1]
        values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)
        return logits, values


# ---- reward models ----------------------------------------------------------------------------

class RewardModel(nn.Module):
    """A scalar reward for whole texts: a sequence classifier (num_labels=1) or a scalar-head model,
    with the output normalisation it was saved with, ``(r - mean) / std``."""

    def __init__(self, model: nn.Module, kind: str, mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        self.model: Any = model  # a ScalarHeadModel, or a transformers sequence classifier
        self.kind = kind
        self.mean = float(mean)
        self.std = float(std)

    def raw(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Unnormalised rewards of right-padded rows."""
        if self.kind == "value_head":
            return self.model.last_token(input_ids, attention_mask)
        position_ids = position_ids_from_mask(attention_mask)
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        if logits.shape[-1] != 1:
            raise ConfigError(f"reward model outputs {logits.shape[-1]} labels; a reward model needs num_labels=1")
        return logits[:, 0]

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return (self.raw(input_ids, attention_mask) - self.mean) / self.std

    def save(self, path: str | Path, tokenizer: Any) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.kind == "value_head":
            self.model.save(path)
        else:
            self.model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        meta = {"format": 1, "head": self.kind, "mean": self.mean, "std": self.std}
        (path / REWARD_META).write_text(strict_json(meta, indent=2) + "\n", encoding="utf-8")


def new_reward_model(base: str, head: str, dtype: torch.dtype, device: torch.device, pad_token_id: int,
                     trust_remote_code: bool = False) -> RewardModel:
    """A reward model to train, starting from the weights of ``base`` (a causal LM or classifier)."""
    if head == "value_head":
        lm = load_causal_lm(base, dtype, device, trust_remote_code)
        return RewardModel(ScalarHeadModel.from_causal_lm(lm).to(device), "value_head")
    from transformers import AutoModelForSequenceClassification

    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            base, num_labels=1, dtype=dtype, trust_remote_code=trust_remote_code
        )
    except Exception as err:  # noqa: BLE001
        raise _load_error("sequence classifier", base, err) from None
    model.config.pad_token_id = pad_token_id  # the classifier finds each row's last token by it
    return RewardModel(fuse_activations(model).to(device), "classification")


def load_reward_model(path: str, dtype: torch.dtype, device: torch.device, trust_remote_code: bool = False,
                      attn_implementation: str | None = None) -> RewardModel:
    """A reward model saved by ppokit (with its normalisation), or any sequence-classification
    model with one label (hub id or directory), used as it is."""
    meta_path = Path(path) / REWARD_META
    meta: dict[str, Any] = {"head": "classification", "mean": 0.0, "std": 1.0}
    if meta_path.is_file():
        try:
            meta.update(json.loads(meta_path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{meta_path}, line {err.lineno}: broken JSON ({err.msg})") from None
        if meta.get("head") not in ("classification", "value_head"):
            raise CheckpointError(f"{meta_path}: unknown head {meta.get('head')!r}")
        if not (isinstance(meta.get("std"), (int, float)) and meta["std"] > 0):
            raise CheckpointError(f"{meta_path}: 'std' must be a positive number, got {meta.get('std')!r}")
    if meta["head"] == "value_head":
        model: Any = ScalarHeadModel.load(path, dtype, device, trust_remote_code, attn_implementation)
    else:
        from transformers import AutoModelForSequenceClassification

        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                path, **pretrained_options(dtype, trust_remote_code, attn_implementation))
        except Exception as err:  # noqa: BLE001
            raise _load_error("reward model", path, err, attn_implementation) from None
        if model.config.num_labels != 1:
            raise CheckpointError(f"reward model {path!r} has {model.config.num_labels} labels; a reward model needs 1")
        model = fuse_activations(model).to(device)
    return RewardModel(model, meta["head"], meta["mean"], meta["std"]).eval()
