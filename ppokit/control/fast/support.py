"""The fast path's allow-list: what it implements, and the one decision whether it runs.

Each table names every field of its dataclass. A value listed (or any value, for :data:`ANY`) is
implemented and held to the torch reference by a parity test; anything else is refused with a
reason. A field missing from a table is refused too, whatever its value: a setting the fast path
has never heard of must never be silently ignored.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ppokit.control.policy.networks import PolicySpec
from ppokit.core.update import PPOUpdateSettings
from ppokit.errors import ConfigError

#: Every value of the field is implemented.
ANY = "any"

#: PolicySpec field -> the values the fast path implements (acting and update).
POLICY: dict[str, Any] = {
    "obs_shape": ANY,
    "encoder": ("mlp",),
    "hidden_sizes": ANY,
    "activation": ("tanh", "relu", "elu"),
    "shared_trunk": ANY,
    "head": ("categorical", "gaussian"),
    "action_dims": ANY,
    "action_parts": ANY,  # only non-empty with head 'mixed', which is refused
    "ortho_init": ANY,
    "log_std_init": ANY,
    "action_mask": (False,),
    "critic_obs_shape": ((),),  # a critic with an observation of its own: the torch path
    "recurrent": (None,),
    "recurrent_size": ANY,
    "obs_parts": ((),),  # images inside a Dict observation (the 'multi' encoder): the torch path
    "image_scale": ANY,  # read by the CNN only, which the fast path refuses
}

#: PPOUpdateSettings field -> the values the NumPy update implements.
SETTINGS: dict[str, Any] = {
    "num_epochs": ANY,
    "num_minibatches": ANY,
    "clip_range": ANY,
    "vf_coef": ANY,
    "ent_coef": ANY,
    "max_grad_norm": ANY,
    "clip_range_vf": ANY,
    "whiten_advantages": ANY,
    "target_kl": ANY,
    "loss": ("clip", "penalty"),
    "kl_coef": ANY,
    "skip_nonfinite": ANY,
    # Micro-batches save activation memory for large models; these MLPs need none.
    "gradient_accumulation_steps": (1,),
    # A KL-to-reference loss term is RLHF's (critic-free advantages); control has no reference policy.
    "ref_kl_coef": (0.0,),
}


def _check(table: dict[str, Any], obj: Any, what: str) -> str | None:
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if field.name not in table:
            return f"{what} {field.name!r} is not implemented by the NumPy fast path"
        allowed = table[field.name]
        if allowed is not ANY and value not in allowed:
            only = " or ".join(map(repr, allowed))
            return f"{what} {field.name} = {value!r} is not implemented by the NumPy fast path (only {only} is)"
    return None


def refusal(spec: PolicySpec, device: torch.device, settings: PPOUpdateSettings | None = None) -> str | None:
    """Why the fast path cannot run this policy (and, with ``settings``, this update); None when it can."""
    if device.type != "cpu":
        return f"it runs on the CPU only, the device is {device}"
    why = _check(POLICY, spec, "policy feature")
    if why is None and settings is not None:
        why = _check(SETTINGS, settings, "update setting")
    return why


def select(backend: str, spec: PolicySpec, device: torch.device, settings: PPOUpdateSettings) -> bool:
    """Whether to use the fast path under ``update_backend = backend``: 'auto' uses it where it
    applies, 'torch' never, 'numpy' always (an error naming the reason where it cannot apply)."""
    if backend == "torch":
        return False
    why = refusal(spec, device, settings)
    if backend == "numpy" and why is not None:
        raise ConfigError(f"config field 'update_backend' = 'numpy' cannot apply: {why}; use 'auto' or 'torch'")
    return why is None
