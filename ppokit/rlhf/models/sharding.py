"""``sharding: fsdp``: the policy and the critic sharded over the processes with PyTorch's FSDP2.

Each trainable model is split with :func:`torch.distributed.fsdp.fully_shard`: every transformer
block (the classes a ``transformers`` model lists in ``_no_split_modules``) is one unit, the rest of
the model another (a value head on the policy a third). Each process then holds 1/N of the weights, gradients and optimiser state; a
forward pass gathers a unit's weights just before it runs and frees them after, and the backward pass
reduce-scatters the gradients, **averaged** over the processes. That average is what
:class:`~ppokit.core.optim.AveragedGradients` computes without FSDP, so the loss is weighted by each
process's share of the valid tokens exactly as there (:mod:`ppokit.core.update`), and no second
averaging is done. The reference and the reward models are not trained: each process keeps them whole.

Every process must run the same forward passes in the same order (each gathers weights from all):
the epochs do (their minibatch counts and early stops are agreed), and generation runs with
``synced_gpus`` so that a process whose completions all ended keeps stepping until every one's have.

Saving gathers the full weights (and optimiser state) to rank 0, which writes them as one process
would; a checkpoint is resumed by as many processes as wrote it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ppokit.core.collective import Collective
from ppokit.core.optim import TorchOptimizer
from ppokit.errors import CheckpointError
from ppokit.io.checkpoints import load_safetensors, refuse_non_finite

if TYPE_CHECKING:
    from ppokit.rlhf.ppo.roles import PPOModels


def shard(models: PPOModels) -> None:
    """Shard the policy and the critic (or the policy with its value head) in place."""
    from torch.distributed.fsdp import fully_shard

    # FSDP warns that a model's output is a view (an in-place op on it would skip a hook); nothing
    # here changes a model's output in place.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor", category=UserWarning)
    roots: list[nn.Module] = [models.policy]
    if models.critic is not None:
        roots.append(models.critic)
    for root in roots:
        for block in _blocks(root):
            fully_shard(block)
        fully_shard(root)
    if models.with_head is not None:
        # A root of its own, like the policy: generation calls the policy alone, and FSDP takes the first
        # module to run forward for the root of everything inside it.
        fully_shard(models.with_head.value_head)
    models.sharded = True


def _blocks(model: nn.Module) -> Iterator[nn.Module]:
    """The repeated transformer layers: the module classes the model's ``_no_split_modules`` names."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    for module in model.modules():
        if module is not model and type(module).__name__ in names:
            yield module


def _options(cpu_offload: bool = False, broadcast_from_rank0: bool = False) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload, broadcast_from_rank0=broadcast_from_rank0)


def full_state(module: nn.Module) -> dict[str, Tensor]:
    """The whole of a sharded module's state dict on rank 0 (on the CPU), ``{}`` elsewhere. Every
    process must call it (it gathers)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state: dict[str, Any] = get_model_state_dict(module, options=_options(cpu_offload=True))
    return state


def save_state(state: dict[str, Tensor], file: Path) -> None:
    """Write a gathered state dict as safetensors (tied weights written once per name, as copies)."""
    from safetensors.torch import save_file

    seen: set[int] = set()
    out = {}
    for name, tensor in state.items():
        ptr = tensor.data_ptr()
        out[name] = tensor.clone() if ptr in seen else tensor.contiguous()
        seen.add(ptr)
    save_file(out, str(file))


def load_state(module: nn.Module, file: Path) -> None:
    """Load a state dict written by :func:`save_state` into the sharded ``module`` (every process)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    state = load_safetensors(file)
    refuse_non_finite(file, state.items())
    try:
        set_model_state_dict(module, dict(state), options=_options())
    except (RuntimeError, KeyError, ValueError) as err:
        raise CheckpointError(f"{file}: the saved weights do not fit this model ({str(err).splitlines()[0]}); was "
                              "the policy or value_model setting changed?") from None


class ShardedOptimizer(TorchOptimizer):
    """A ``torch.optim`` optimiser over FSDP-sharded parameters, behind the
    :class:`~ppokit.core.optim.Optimizer` protocol. FSDP has averaged the gradients already; the
    norm, the finiteness check and the state dict are taken over every process's shard."""

    def __init__(self, optimizer: torch.optim.Optimizer, module: nn.Module, collective: Collective) -> None:
        super().__init__(optimizer)
        self.module, self.collective = module, collective

    def clip_grad_norm(self, max_norm: float) -> Tensor:
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def params_finite(self) -> bool:
        local = all(bool(torch.isfinite(_local(p)).all()) for p in self.params)
        return not self.collective.any(not local)[0]

    def gradients(self) -> list[Tensor]:
        return [_local(p.grad) for p in self.params if p.grad is not None]

    def state_dict(self) -> dict[str, Any]:
        """The whole optimiser state on rank 0 (keyed by parameter name), ``{}`` elsewhere; every process calls it."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(self.module, self.optimizer, options=_options(cpu_offload=True))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rank 0's ``state`` (from :meth:`state_dict`), sharded onto every process; every process calls it."""
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(self.module, self.optimizer, state, options=_options(broadcast_from_rank0=True))
        for group in self.optimizer.param_groups:  # the broadcast turns tuples into lists
            if isinstance(group.get("betas"), list):
                group["betas"] = tuple(group["betas"])


def _local(t: Tensor) -> Tensor:
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None else t
