"""The processes a run trains in, and the few collective operations PPO needs of them.

Data-parallel PPO runs one copy of the algorithm per process (``torch.distributed``, launched by
``torchrun``). Each process collects its own share of the batch; for the update to equal one
process's update on the union of the shares, every quantity that is a statistic *of the batch*
must be taken over all processes:

- the minibatch gradient, averaged (weighted by each process's share of the minibatch),
- the advantage whitening statistics (:meth:`Collective.moments`),
- the numbers that decide what happens next (the loss's finiteness, the KL early stop),
- the reported diagnostics.

:class:`Collective` is that set of operations over the default process group; with one process
(``world_size == 1``) every operation returns its input, and the algorithm does not call them at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from ppokit.errors import CheckpointError, ConfigError, PPOKitError

T = TypeVar("T")


class Collective:
    """The default process group, or a single process when torch.distributed is not initialised."""

    def __init__(self) -> None:
        if dist.is_available() and dist.is_initialized():
            self.world_size = dist.get_world_size()
            self.rank = dist.get_rank()
            # NCCL only moves CUDA tensors; gloo takes CPU tensors.
            self.device = (torch.device("cuda", torch.cuda.current_device())
                           if dist.get_backend() == "nccl" else torch.device("cpu"))
        else:
            self.world_size, self.rank, self.device = 1, 0, torch.device("cpu")

    @property
    def active(self) -> bool:
        """Whether there is more than one process to agree with."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run's files."""
        return self.rank == 0

    def sum_(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over the processes, in place; returns it."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def mean_(self, tensor: Tensor) -> Tensor:
        """Average ``tensor`` over the processes, in place; returns it."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            tensor.div_(self.world_size)
        return tensor

    def sum_floats(self, *values: float) -> list[float]:
        """Each value summed over the processes, in one exchange (a NaN anywhere gives NaN)."""
        if not self.active:
            return list(values)
        buffer = torch.tensor(values, dtype=torch.float64, device=self.device)
        return self.sum_(buffer).tolist()

    def mean_floats(self, *values: float) -> list[float]:
        """Each value averaged over the processes, in one exchange (a NaN anywhere gives NaN)."""
        return [v / self.world_size for v in self.sum_floats(*values)]

    def any(self, *flags: bool) -> list[bool]:
        """For each flag, whether any process raised it, in one exchange."""
        return [v > 0 for v in self.sum_floats(*(float(f) for f in flags))]

    def gather_rows(self, row: Tensor) -> Tensor:
        """Every process's 1-D ``row``, stacked in rank order: ``[world_size, len(row)]``."""
        if not self.active:
            return row.unsqueeze(0)
        local = row.to(self.device).contiguous()
        out = torch.empty(self.world_size * local.numel(), dtype=local.dtype, device=self.device)
        dist.all_gather_single(out, local)
        return out.view(self.world_size, -1).to(row.device)

    def moments(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""``(local_count, count, mean, var)`` of the valid entries of ``x`` over all processes.

        Each process contributes its count :math:`n_r`, mean :math:`\mu_r` and sum of squared
        deviations :math:`M_r`; they combine exactly (Chan et al.) as
        :math:`\mu = \sum n_r \mu_r / n` and
        :math:`M = \sum M_r + \sum n_r (\mu_r - \mu)^2`, and the variance is :math:`M / (n - 1)`,
        the unbiased estimate over the union, as :func:`~ppokit.core.advantages.masked_var`.
        """
        values = x.detach().to(torch.float64)
        if mask is None:
            count = torch.tensor(float(values.numel()), dtype=torch.float64, device=values.device)
            mean = values.mean() if values.numel() else torch.zeros((), dtype=torch.float64, device=values.device)
            m2 = ((values - mean) ** 2).sum()
        else:
            weights = mask.to(torch.float64)
            count = weights.sum()
            mean = (values * weights).sum() / count.clamp_min(1.0)
            m2 = (((values - mean) ** 2) * weights).sum()
        rows = self.gather_rows(torch.stack([count, mean, m2]))
        counts, means, m2s = rows[:, 0], rows[:, 1], rows[:, 2]
        total = counts.sum()
        mean_all = (counts * means).sum() / total.clamp_min(1.0)
        m2_all = m2s.sum() + (counts * (means - mean_all) ** 2).sum()
        var_all = m2_all / (total - 1.0).clamp_min(1.0)
        dtype = x.dtype if x.is_floating_point() else torch.float32
        return count, total, mean_all.to(dtype), var_all.to(dtype)

    def share(self, local_count: Tensor | float, total: Tensor | float) -> float:
        """The factor that turns a mean over this process's ``local_count`` entries into its share of
        the mean over all ``total`` entries, such that averaging over the processes gives that mean:
        ``world_size · local_count / total``."""
        return self.world_size * float(local_count) / max(float(total), 1.0)

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every process's picklable ``obj``, in rank order."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """``src``'s ``obj`` on every process."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def broadcast_tensors_(self, tensors: list[Tensor], src: int = 0) -> None:
        """Overwrite ``tensors`` on every process with ``src``'s, in place (one flat exchange per dtype)."""
        if not self.active:
            return
        by_dtype: dict[torch.dtype, list[Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.detach().reshape(-1).to(self.device) for t in group])
            dist.broadcast(flat, src=src)
            offset = 0
            with torch.no_grad():
                for t in group:
                    n = t.numel()
                    t.copy_(flat[offset:offset + n].view_as(t))
                    offset += n

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def on_main(collective: Collective, make: Callable[[], T], fallback: Callable[[], T]) -> T:
    """``make()`` on rank 0 and ``fallback()`` elsewhere; an error on rank 0 is raised on every rank
    (so a refused run directory stops the whole job with its message, not with a broken connection)."""
    if not collective.active:
        return make()
    result: T | None = None
    error: PPOKitError | None = None
    if collective.is_main:
        try:
            result = make()
        except PPOKitError as err:
            error = err
    message = collective.broadcast_object(None if error is None else (type(error).__name__, str(error)))
    if error is not None:
        raise error
    if message is not None:
        raise (CheckpointError if message[0] == "CheckpointError" else ConfigError)(message[1])
    return result if collective.is_main else fallback()  # type: ignore[return-value]


def gather_rank_states(collective: Collective, local: dict[str, Any]) -> dict[str, Any]:
    """The part of ``resume.json`` that differs per rank: ``local`` itself with one process, else
    every rank's, in rank order, with the world size."""
    if not collective.active:
        return local
    return {"world_size": collective.world_size, "ranks": collective.gather_objects(local)}


def check_world_size(resume: Mapping[str, Any], collective: Collective, file: Path, holds: str) -> None:
    """Refuse to resume a checkpoint written by another number of processes; ``holds``: what each
    process kept in it of its own (named in the message)."""
    saved = resume.get("world_size", 1)
    if not isinstance(saved, int) or saved < 1:
        raise CheckpointError(f"{file}: bad world_size {saved!r}")
    if saved != collective.world_size:
        how = "without --nproc" if saved == 1 else f"with --nproc {saved} (or torchrun --nproc_per_node {saved})"
        raise ConfigError(
            f"{file}: the run was checkpointed by {saved} process{'es' if saved > 1 else ''} and is being resumed by "
            f"{collective.world_size}; each process's {holds} are in the checkpoint, so resume it {how}")


def rank_state(resume: Mapping[str, Any], collective: Collective) -> Mapping[str, Any]:
    """This rank's part of a ``resume.json`` written with :func:`gather_rank_states` (the state itself
    when one process wrote it)."""
    return resume["ranks"][collective.rank] if "ranks" in resume else resume


#: The single process: every operation returns its input.
SINGLE = Collective.__new__(Collective)
SINGLE.world_size, SINGLE.rank, SINGLE.device = 1, 0, torch.device("cpu")
