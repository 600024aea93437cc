"""LoRA adapters (peft) on a model, from a config's ``lora_*`` fields: the policy's, a LoRA critic's,
and the supervised stages' models all get them here."""

from __future__ import annotations

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
