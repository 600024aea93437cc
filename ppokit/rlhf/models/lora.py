"""LoRA adapters (peft) on a model, from a config's ``lora_*`` fields: the policy's, a LoRA critic's,
and the supervised stages' models all get them here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ppokit.errors import ConfigError
from ppokit.rlhf.config import LoRASettings


def with_lora(model: Any, config: LoRASettings, task_type: str | None, modules_to_save: list[str] | None = None,
              what: str = "lora: true") -> Any:
    """``model`` with LoRA adapters (peft) from the config's ``lora_*`` fields: only the adapters, and
    the modules named in ``modules_to_save`` (trained whole), keep ``requires_grad``. ``what``: the
    setting that asked for them, for the messages."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:  # pragma: no cover - the rlhf extra installs it
        raise ConfigError(f"{what} needs the 'peft' package (pip install ppokit[rlhf])") from err
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.lora_target_modules, task_type=task_type, modules_to_save=modules_to_save)
    try:
        return get_peft_model(model, lora)
    except ValueError as err:
        raise ConfigError(f"{what}: {err}; set lora_target_modules") from None


def base_path(name: str | None) -> str | None:
    """A base model's name as an adapter must record it to load from any directory: a local
    directory (which ``from_pretrained`` takes before a hub id of the same name) as its absolute
    path, a hub id as it is."""
    if not name:
        return name
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def save_adapter(model: Any, directory: str | Path, tokenizer: Any, base: str | None = None) -> None:
    """Write peft ``model``'s adapters into ``directory`` so that
    ``peft.AutoPeftModel*.from_pretrained(directory)`` works from any working directory: the base
    model is recorded by :func:`base_path` (peft records it as it was typed, often relative), and the
    tokenizer is saved beside the adapter. ``base``: the base model's name when the wrapped model
    has none of its own (a ppokit value-head model)."""
    for adapter in model.peft_config.values():
        adapter.base_model_name_or_path = base_path(adapter.base_model_name_or_path or base)
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
