"""What the three RLHF stages share: seeding, device/dtype, run directories, batching."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ppokit.io.metrics import MetricsLogger
from ppokit.io.run_dir import default_run_dir, prepare_run_dir
from ppokit.rlhf.models import quiet_transformers, resolve_device, resolve_dtype


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def runtime(config: Any) -> tuple[torch.device, torch.dtype]:
    """Apply the shared runtime fields; returns ``(device, dtype)``."""
    quiet_transformers()
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    return device, resolve_dtype(config.dtype, device)


def config_yaml(config: Any) -> str:
    import yaml

    def plain(value: Any) -> Any:
        if callable(value):
            return f"<python callable {getattr(value, '__qualname__', repr(value))}>"
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    data = {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}
    return yaml.safe_dump(data, sort_keys=False)


def open_run(config: Any, stage: str, run_dir: str | Path | None, overwrite: bool,
             resume_step: int | None = None) -> tuple[Path, MetricsLogger]:
    """Create the run directory (refusing to overwrite a run), write config.yaml, open the metrics.

    With ``resume_step`` the directory is the run being resumed: metrics rows after that step
    (written after its checkpoint, before the stop) are dropped, as they will be redone.
    """
    from ppokit.io.atomic import atomic_write_text
    from ppokit.io.metrics import truncate_metrics

    if resume_step is not None:
        path = Path(run_dir or config.run_dir)
        truncate_metrics(path / "metrics.jsonl", "step", resume_step)
    else:
        path = prepare_run_dir(run_dir or config.run_dir or default_run_dir(f"rlhf-{stage}", config.seed), overwrite)
    atomic_write_text(path / "config.yaml", config_yaml(config))
    purge = resume_step + 1 if resume_step is not None else None
    return path, MetricsLogger(path, tensorboard=config.tensorboard, purge_step=purge)


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
    """What SFT and reward training both start with: ``(total_steps, AdamW, linear-decay schedule,
    shuffling generator)`` for ``config.epochs`` passes over ``rows`` rows in ``config.batch_size``."""
    total = -(-rows // config.batch_size) * config.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / max(1, total)))
    return total, optimizer, scheduler, torch.Generator().manual_seed(config.seed)


def progress_bar(enabled: bool, total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)
