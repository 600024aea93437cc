"""The processes a run trains in, and the few collective operations PPO needs of them.

Data-parallel PPO runs one copy of the algorithm per process (``torch.distributed``, launched by
``torchrun``). Each process collects its own share of the batch; for the update to equal one
process's update on the union of the shares, every quantity that is a statistic *of the batch*
must be taken over all processes:

- the minibatch gradient, averaged (weighted by each process's share of the minibatch),
- the advantage whitening statistics (:meth:`Collective.moments`),
- the numbers that decide what happens next (the loss's finiteness, the KL early stop),
- the reported diagnostics.

Each collective call costs a round trip between the processes whatever its size (on one CPU
machine with gloo, 0.1 to 1 ms, more than a whole minibatch step of a small network), so the update
makes as few as it can: per epoch one exchange of every minibatch's whitening moments
(:meth:`Collective.moments_of_parts`), per minibatch one exchange of the gradient with the loss and
KL riding in the same buffer (:meth:`Collective.mean_flat_`), and one of the diagnostics per update.
:attr:`Collective.traffic` counts them.

:class:`Collective` is that set of operations over the default process group; with one process
(``world_size == 1``) every operation returns its input, and the algorithm does not call them at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from ppokit.errors import CheckpointError, ConfigError, PPOKitError

T = TypeVar("T")

#: Gradients are averaged in buffers of at most this many bytes (one tensor larger than it travels
#: alone): a large model's gradient is never copied whole into one more buffer, and the copies of
#: one bucket overlap the exchange of the one before. A small network's gradient is one bucket.
BUCKET_BYTES = 25 * 2**20

#: The dtypes the decision numbers (a loss, a KL) can ride along with the gradient in without losing
#: precision that matters; beside a lower-precision gradient they travel in a float64 buffer of their own.
_CARRIERS = (torch.float32, torch.float64)


@dataclass
class Traffic:
    """What this process exchanged with the others, for a profile (``benchmarks/distributed_profile.py``):
    the collective calls, the bytes of the tensors it sent into them, and the seconds spent inside
    them (waiting for the slowest process included)."""

    calls: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def since(self, before: Traffic) -> Traffic:
        return Traffic(self.calls - before.calls, self.bytes - before.bytes, self.seconds - before.seconds)

    def copy(self) -> Traffic:
        return Traffic(self.calls, self.bytes, self.seconds)


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
        self.traffic = Traffic()

    @property
    def active(self) -> bool:
        """Whether there is more than one process to agree with."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run's files."""
        return self.rank == 0

    @contextmanager
    def _exchange(self, *tensors: Tensor) -> Iterator[None]:
        """Count one collective call over ``tensors`` in :attr:`traffic`, and the time it takes."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.traffic.calls += 1
            self.traffic.bytes += sum(t.numel() * t.element_size() for t in tensors)
            self.traffic.seconds += time.perf_counter() - start

    def _all_reduce(self, tensor: Tensor) -> None:
        """Sum ``tensor`` over the processes, in place (the one primitive every sum and mean goes through)."""
        with self._exchange(tensor):
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)

    def _all_gather(self, out: Tensor, local: Tensor) -> None:
        with self._exchange(local):
            dist.all_gather_single(out, local)

    def sum_(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over the processes, in place; returns it."""
        if self.active:
            self._all_reduce(tensor)
        return tensor

    def mean_(self, tensor: Tensor) -> Tensor:
        """Average ``tensor`` over the processes, in place; returns it."""
        if self.active:
            self._all_reduce(tensor)
            tensor.div_(self.world_size)
        return tensor

    def mean_flat_(self, tensors: Sequence[Tensor], extra: Sequence[float] = (),
                   bucket_bytes: int = BUCKET_BYTES) -> list[float]:
        """Average ``tensors`` over the processes in place, and with them the numbers ``extra``
        (returned, averaged): the gradient and the figures the epoch loop decides on, in one
        exchange for a network under ``bucket_bytes``.

        The tensors travel in buckets of consecutive tensors of one dtype, each a flat buffer of at
        most ``bucket_bytes`` (a lone tensor needs no copy); ``extra`` rides in the last bucket when
        its dtype is float32 or float64, else in a float64 buffer of its own. Every bucket is sent
        before the first is waited for, so copying the next overlaps the exchange of the one before.
        """
        if not self.active:
            return list(extra)
        buckets: list[list[Tensor]] = []
        size = 0
        for t in tensors:
            nbytes = t.numel() * t.element_size()
            if not buckets or buckets[-1][0].dtype != t.dtype or size + nbytes > bucket_bytes:
                buckets.append([])
                size = 0
            buckets[-1].append(t)
            size += nbytes
        ride = bool(extra) and bool(buckets) and buckets[-1][0].dtype in _CARRIERS
        start = time.perf_counter()
        pending: list[tuple[Tensor, list[Tensor], Any]] = []
        for k, group in enumerate(buckets):
            tail = list(extra) if ride and k == len(buckets) - 1 else []
            if len(group) == 1 and not tail and group[0].is_contiguous():
                flat = group[0]  # reduced where it lies
            else:
                parts = [t.reshape(-1) for t in group]
                if tail:
                    parts.append(torch.tensor(tail, dtype=group[0].dtype, device=group[0].device))
                flat = torch.cat(parts)
            pending.append((flat, group, dist.all_reduce(flat, op=dist.ReduceOp.SUM, async_op=True)))
        if extra and not ride:
            flat = torch.tensor(list(extra), dtype=torch.float64, device=self.device)
            pending.append((flat, [], dist.all_reduce(flat, op=dist.ReduceOp.SUM, async_op=True)))
        averaged: list[float] = []
        for flat, group, work in pending:
            work.wait()
            flat.div_(self.world_size)
            if len(group) == 1 and flat is group[0]:
                continue
            offset = 0
            for t in group:
                n = t.numel()
                t.copy_(flat[offset:offset + n].view_as(t))
                offset += n
            if offset < flat.numel():
                averaged = flat[offset:].tolist()
        self.traffic.calls += len(pending)
        self.traffic.bytes += sum(flat.numel() * flat.element_size() for flat, _, _ in pending)
        self.traffic.seconds += time.perf_counter() - start
        return averaged

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
        self._all_gather(out, local)
        return out.view(self.world_size, -1).to(row.device)

    def moments(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""``(local_count, count, mean, var)`` of the valid entries of ``x`` over all processes.

        Each process contributes its count :math:`n_r`, mean :math:`\mu_r` and sum of squared
        deviations :math:`M_r`; they combine exactly (Chan et al.) as
        :math:`\mu = \sum n_r \mu_r / n` and
        :math:`M = \sum M_r + \sum n_r (\mu_r - \mu)^2`, and the variance is :math:`M / (n - 1)`,
        the unbiased estimate over the union, as :func:`~ppokit.core.advantages.masked_var`.
        """
        return self.moments_of_parts([(x, mask)])[0]

    def moments_of_parts(self, parts: Sequence[tuple[Tensor, Tensor | None]]
                         ) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """:meth:`moments` of each ``(x, mask)`` of ``parts`` (part ``j`` of every process together),
        all in one exchange: an epoch's minibatches whitened with the union's statistics for the
        price of one collective."""
        if not parts:
            return []
        local = torch.stack([_local_moments(x, mask) for x, mask in parts])  # [parts, 3]
        rows = self.gather_rows(local.reshape(-1)).view(-1, len(parts), 3)  # [world, parts, 3]
        counts, means, m2s = rows[..., 0], rows[..., 1], rows[..., 2]
        total = counts.sum(0)
        mean_all = (counts * means).sum(0) / total.clamp_min(1.0)
        m2_all = m2s.sum(0) + (counts * (means - mean_all) ** 2).sum(0)
        var_all = m2_all / (total - 1.0).clamp_min(1.0)
        out = []
        for j, (x, _) in enumerate(parts):
            dtype = x.dtype if x.is_floating_point() else torch.float32
            out.append((local[j, 0], total[j], mean_all[j].to(dtype), var_all[j].to(dtype)))
        return out

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
        with self._exchange():
            dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """``src``'s ``obj`` on every process."""
        if not self.active:
            return obj
        box = [obj]
        with self._exchange():
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
            with self._exchange(flat):
                dist.broadcast(flat, src=src)
            offset = 0
            with torch.no_grad():
                for t in group:
                    n = t.numel()
                    t.copy_(flat[offset:offset + n].view_as(t))
                    offset += n

    def barrier(self) -> None:
        if self.active:
            with self._exchange():
                dist.barrier()


def _local_moments(x: Tensor, mask: Tensor | None) -> Tensor:
    """``[count, mean, M]`` of the valid entries of ``x`` on this process, in float64."""
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
    return torch.stack([count, mean, m2])


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
SINGLE.traffic = Traffic()
