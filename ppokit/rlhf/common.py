"""What the three RLHF stages share: runtime set-up, run directories, batching, the LR schedule, and
the optimiser step of the two supervised stages (one process or several)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ppokit import runtime as _runtime
from ppokit.configuration import with_absolute_paths
from ppokit.core.collective import SINGLE, Collective, on_main
from ppokit.core.optim import AveragedGradients, Optimizer, TorchOptimizer
from ppokit.core.schedules import make_schedule
from ppokit.errors import TrainingError
from ppokit.io.metrics import MetricsLogger, NullMetrics
from ppokit.io.run_dir import default_run_dir
from ppokit.io.run_dir import open_run as _open_run
from ppokit.rlhf import data_parallel
from ppokit.rlhf.config import PATH_FIELDS
from ppokit.rlhf.models import quiet_transformers


def runtime(config: Any) -> tuple[torch.device, torch.dtype]:
    """Apply the shared runtime fields (threads, seeds, device, dtype); returns ``(device, dtype)``."""
    quiet_transformers()
    device = _runtime.setup(config.seed, config.device, config.torch_threads)
    return device, _runtime.resolve_dtype(config.dtype, device)


def join(config: Any, device: torch.device) -> Collective:
    """The processes of a supervised run (one process: :data:`SINGLE`)."""
    return _runtime.join_processes(device, config.dist_backend, config.dist_timeout)


def open_run(config: Any, stage: str, run_dir: str | Path | None, overwrite: bool,
             collective: Collective = SINGLE) -> tuple[Path, MetricsLogger]:
    """Create the run directory of an SFT or reward-training run, write config.yaml, open the metrics
    (rank 0 alone; the other processes get rank 0's path and a logger that writes nothing)."""
    path = data_parallel.run_path(collective, run_dir or config.run_dir or default_run_dir(f"rlhf-{stage}", config.seed))
    launch = {"world_size": collective.world_size, "global_batch_size": config.batch_size} if collective.active else None
    return on_main(
        collective, lambda: _open_run(path, with_absolute_paths(config, PATH_FIELDS), overwrite=overwrite, launch=launch),
        lambda: (path, NullMetrics()))


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[list[int]]:
    """One epoch of index batches in a random order (the last batch may be short)."""
    order = torch.randperm(n, generator=generator).tolist()
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def pad_right(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token rows into ``(ids, mask)``."""
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def supervised_setup(model: torch.nn.Module, config: Any, rows: int) -> tuple[int, torch.optim.Optimizer, Any, torch.Generator]:
    """What SFT and reward training both start with: ``(total optimiser steps, AdamW, linear-decay schedule,
    shuffling generator)`` for ``config.epochs`` passes over ``rows`` rows in ``config.batch_size``."""
    total = -(-rows // config.batch_size) * config.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    decay = make_schedule("linear", 1.0)  # the multiplier of the learning rate
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: decay(step / max(1, total)))
    return total, optimizer, scheduler, torch.Generator().manual_seed(config.seed)


def step_optimizer(optimizer: torch.optim.Optimizer, collective: Collective) -> Optimizer:
    """``optimizer`` behind the :class:`~ppokit.core.optim.Optimizer` protocol, averaging the gradients
    over the processes when there are several."""
    wrapped = TorchOptimizer(optimizer)
    return AveragedGradients(wrapped, collective) if collective.active else wrapped


def optimizer_step(loss: torch.Tensor | None, count: float, optimizer: Optimizer, collective: Collective,
                   max_grad_norm: float, what: str) -> tuple[float, float]:
    """One step on ``loss``, the mean over this process's ``count`` entries (tokens, pairs; None when
    it has none); returns ``(loss, gradient norm)``. With several processes the loss is the mean over
    every process's entries: each weights its mean by its share (``Collective.share``) and the
    gradients are averaged. A non-finite loss stops every process before the weights change."""
    if collective.active:
        local_sum = float(loss.detach()) * count if loss is not None else 0.0
        loss_sum, total = collective.sum_floats(local_sum, count)
        value = loss_sum / max(total, 1.0)
    else:
        assert loss is not None
        value = float(loss.detach())
    if not math.isfinite(value):
        raise TrainingError(f"{what}: non-finite loss; the weights were not updated")
    optimizer.zero_grad()
    if loss is not None:
        (loss * collective.share(count, total) if collective.active else loss).backward()
    grad_norm = float(optimizer.clip_grad_norm(max_grad_norm or float("inf")))
    optimizer.step()
    return value, grad_norm


def progress_bar(enabled: bool, total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)
