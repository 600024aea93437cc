"""The supervised stages' optimiser steps: the data order (epochs of shuffled batches, resumable) and one
step taken over micro-batches, on one process or several, as the step on the whole batch."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from ppokit.core.collective import Collective
from ppokit.core.optim import AveragedGradients, Optimizer, TorchOptimizer
from ppokit.errors import TrainingError
from ppokit.io.state_codec import decode, encode

T = TypeVar("T")


class EpochBatches:
    """The supervised stages' data order: ``epochs`` passes over ``n`` rows, each in a new random order
    drawn from one generator seeded with ``seed``, cut into batches of ``batch_size`` (an epoch's last
    batch may be short). Its position (the epoch, the batches taken of it, the generator as the epoch
    began) is part of a checkpoint, so a resumed run takes the same batches."""

    def __init__(self, n: int, batch_size: int, epochs: int, seed: int) -> None:
        if n < 1:
            raise TrainingError("no training rows: nothing to train on")
        self.n, self.batch_size, self.epochs = n, batch_size, epochs
        self.per_epoch = -(-n // batch_size)
        #: Optimiser steps of the whole run.
        self.total = self.per_epoch * epochs
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch, self.index = 0, 0
        self._shuffle()

    def _shuffle(self) -> None:
        self._epoch_start = self.generator.get_state()
        self._order = torch.randperm(self.n, generator=self.generator).tolist()

    def next(self) -> list[int]:
        """The next batch of row indices (:attr:`epoch` is then its epoch)."""
        if self.index == self.per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
            self._shuffle()
        start = self.index * self.batch_size
        self.index += 1
        return self._order[start:start + self.batch_size]

    @property
    def epoch_done(self) -> bool:
        """Whether the last batch taken ended its epoch."""
        return self.index == self.per_epoch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index, "generator": encode(self._epoch_start.numpy())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, index = int(state["epoch"]), int(state["index"])
        if not (0 <= epoch < self.epochs and 0 <= index <= self.per_epoch):
            raise ValueError(f"data position epoch {epoch}, batch {index} is outside this run's "
                             f"{self.epochs} epochs of {self.per_epoch} batches")
        self.generator.set_state(torch.from_numpy(decode(state["generator"])))
        self._shuffle()
        self.epoch, self.index = epoch, index


def micro_slices(rows: Sequence[T], parts: int) -> list[Sequence[T]]:
    """``rows`` cut into ``parts`` contiguous pieces of near-equal size; empty pieces left out."""
    n = len(rows)
    pieces = [rows[i * n // parts:(i + 1) * n // parts] for i in range(parts)]
    return [p for p in pieces if len(p)]


def step_optimizer(optimizer: torch.optim.Optimizer, collective: Collective) -> Optimizer:
    """``optimizer`` behind the :class:`~ppokit.core.optim.Optimizer` protocol, averaging the gradients
    over the processes when there are several."""
    wrapped = TorchOptimizer(optimizer)
    return AveragedGradients(wrapped, collective) if collective.active else wrapped


@dataclass
class MicroBatch:
    """A piece of a supervised batch: the entries its loss averages over (response tokens, pairs), and
    a function computing that mean loss and figures *summed* over its entries (accuracy × pairs)."""

    count: float
    loss: Callable[[], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class StepResult:
    """What one accumulated optimiser step measured, over the whole batch of every process."""

    loss: float
    grad_norm: float
    #: The micro-batches' figures as means over the batch's entries.
    figures: dict[str, float]
    #: The batch's entries (tokens, pairs) over all processes.
    count: float


def accumulated_step(micro: Sequence[MicroBatch], optimizer: Optimizer, collective: Collective,
                     max_grad_norm: float, what: str, figures: Sequence[str] = ()) -> StepResult:
    r"""One optimiser step on a batch given as micro-batches (this process's; none when it has no rows).

    The batch loss is the mean over all :math:`N` entries of the batch (every process's), which is
    each micro-batch's mean :math:`L_m` over its :math:`n_m` entries weighted by its share:

    .. math:: L = \frac{1}{N}\sum_i \ell_i = \sum_m \frac{n_m}{N} L_m

    so each micro-batch's backward pass takes :math:`\tfrac{n_m}{N} L_m` (a share of the entries,
    not :math:`1/k`: micro-batches hold different numbers of tokens) and the gradients add up to the
    unaccumulated one, up to float rounding. With :math:`P` processes the gradients are averaged, so
    each takes :math:`P\,n_m/N` (:meth:`Collective.share`). A non-finite loss stops every process
    before the weights change.
    """
    local = sum(m.count for m in micro)
    total = collective.sum_floats(local)[0] if collective.active else local
    # One micro-batch on one process: its loss is the batch's as it is (the step of a plain loop).
    whole = len(micro) == 1 and not collective.active
    optimizer.zero_grad()
    loss_sum, value = 0.0, float("nan")
    sums = dict.fromkeys(figures, 0.0)
    for m in micro:
        loss, parts = m.loss()
        value = float(loss.detach())
        loss_sum += value * m.count
        for key in sums:
            sums[key] += parts.get(key, 0.0)
        if whole:
            loss.backward()
        else:
            share = collective.share(m.count, total) if collective.active else m.count / max(total, 1.0)
            (loss * share).backward()
    if collective.active:
        loss_sum, *summed = collective.sum_floats(loss_sum, *sums.values())
        sums = dict(zip(sums, summed))
    if not whole:
        value = loss_sum / max(total, 1.0)
    if not math.isfinite(value):
        optimizer.zero_grad()
        raise TrainingError(f"{what}: non-finite loss; the weights were not updated")
    grad_norm = float(optimizer.clip_grad_norm(max_grad_norm or float("inf")))
    optimizer.step()
    return StepResult(value, grad_norm, {k: v / max(total, 1.0) for k, v in sums.items()}, total)
