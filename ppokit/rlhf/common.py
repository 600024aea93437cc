"""What the three RLHF stages share: runtime set-up, run directories, batching, the LR schedule."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ppokit import runtime as _runtime
from ppokit.configuration import with_absolute_paths
from ppokit.core.schedules import make_schedule
from ppokit.io.metrics import MetricsLogger
from ppokit.io.run_dir import default_run_dir
from ppokit.io.run_dir import open_run as _open_run
from ppokit.rlhf.config import PATH_FIELDS
from ppokit.rlhf.models import quiet_transformers


def runtime(config: Any) -> tuple[torch.device, torch.dtype]:
    """Apply the shared runtime fields (threads, seeds, device, dtype); returns ``(device, dtype)``."""
    quiet_transformers()
    device = _runtime.setup(config.seed, config.device, config.torch_threads)
    return device, _runtime.resolve_dtype(config.dtype, device)


def open_run(config: Any, stage: str, run_dir: str | Path | None, overwrite: bool) -> tuple[Path, MetricsLogger]:
    """Create the run directory of an SFT or reward-training run, write config.yaml, open the metrics."""
    return _open_run(run_dir or config.run_dir or default_run_dir(f"rlhf-{stage}", config.seed),
                     with_absolute_paths(config, PATH_FIELDS), overwrite=overwrite)


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


def progress_bar(enabled: bool, total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)
