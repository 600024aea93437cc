"""The one training-loop shell both front ends run in.

The front end owns one update (collect, advantages, K epochs); this shell owns everything around it,
once: the progress bar, SIGINT/SIGTERM (finish the update, checkpoint, stop), the metrics row, periodic
and final checkpoints, the callback, and the "the last checkpoint is intact" message when an update
fails.

    for each update:
        record = trainer.update()                 the front end's algorithm box
        stop = trainer.after_update(record)       its extras: evaluation, sample logs
        log record; advance the progress bar
        agree with the other processes on: stop, a signal, a checkpoint due
        on a signal: checkpoint and raise TrainingInterrupted
        stop, checkpoint when due, callback (its stop agreed too)
    checkpoint the final state

In a data-parallel run every process runs this loop; each decision that ends or saves is taken by
all of them together (``LoopPlan.agree``: any process's reason counts), so they stay in step; the
front end gives rank 0 alone the real metrics logger and the files to write.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ppokit.errors import TrainingError, TrainingInterrupted
from ppokit.io.checkpoints import checkpoint_due, latest_checkpoint
from ppokit.io.interrupt import StopOnSignal
from ppokit.io.metrics import MetricsLogger

log = logging.getLogger("ppokit")

#: Called after every update with that update's metrics row; return False to stop.
Callback = Callable[[dict[str, Any]], "bool | None"]


class Trainable(Protocol):
    """What the loop shell drives: a front end's trainer."""

    run_dir: Path | None
    num_updates: int

    def update(self) -> dict[str, Any]:
        """One PPO update (collect, advantages, K epochs of minibatches); its metrics row."""
        ...

    def after_update(self, record: dict[str, Any]) -> bool:
        """The front end's work between updates (evaluation, sample logs); True stops training."""
        ...

    def checkpoint_path(self) -> Path:
        """Where a checkpoint of the current state goes."""
        ...

    def save_checkpoint(self) -> Path:
        """Write a resumable checkpoint of the current state."""
        ...


@dataclass
class LoopPlan:
    """How many updates to run and how to show them."""

    #: Updates to run in this call.
    updates: int
    #: The progress bar's label.
    desc: str
    #: Save a checkpoint every this many updates (0: not by count).
    checkpoint_every: int
    #: ... or when this many minutes have passed since the last one (0: not by time).
    checkpoint_minutes: float
    #: The metrics row's x-axis (env steps for control, updates for RLHF).
    x_axis: Callable[[dict[str, Any]], int]
    #: Show a progress bar.
    progress: bool = True
    #: The progress bar's unit, total and current position in that unit.
    unit: str = "update"
    total: int = 0
    position: Callable[[], int] = field(default=lambda: 0)
    #: Short figures for the progress bar from a metrics row.
    postfix: Callable[[dict[str, Any]], dict[str, str]] = field(default=lambda record: {})
    #: For each flag, whether any process raised it (data parallel; one process: the flags themselves).
    agree: Callable[..., list[bool]] = field(default=lambda *flags: list(flags))
    #: What the resume command needs besides the run directory (``--nproc N`` for N processes).
    resume_flags: str = ""


def run_loop(trainer: Trainable, plan: LoopPlan, metrics: MetricsLogger, callback: Callback | None = None) -> None:
    """Run ``plan.updates`` updates of ``trainer`` inside the shell described in the module docstring."""
    assert trainer.run_dir is not None
    progress = _progress_bar(plan)
    last_saved = time.monotonic()
    try:
        with StopOnSignal("update") as stop:
            for i in range(plan.updates):
                try:
                    record = trainer.update()
                except TrainingError as err:
                    last = latest_checkpoint(trainer.run_dir)
                    saved = f"; the last checkpoint, {last}, is intact" if last is not None else ""
                    raise TrainingError(f"update {trainer.num_updates + 1}: {err}{saved}") from None
                finish = trainer.after_update(record)
                metrics.log(record, plan.x_axis(record))
                if progress is not None:
                    progress.update(plan.position() - progress.n)
                    progress.set_postfix(plan.postfix(record), refresh=False)
                due = i < plan.updates - 1 and checkpoint_due(trainer.num_updates, plan.checkpoint_every,
                                                              plan.checkpoint_minutes, last_saved)
                finish, signalled, due = plan.agree(finish, stop.signal_name is not None, due)
                if signalled:
                    checkpoint = trainer.save_checkpoint()
                    raise TrainingInterrupted(stop.signal_name or "SIGTERM", str(checkpoint),
                                              f"ppokit resume {trainer.run_dir}{plan.resume_flags}")
                if finish:
                    break
                if due:
                    trainer.save_checkpoint()
                    last_saved = time.monotonic()
                if callback is not None and plan.agree(callback(record) is False)[0]:
                    break
            # The final state is a checkpoint too, so a resume can extend the run.
            if latest_checkpoint(trainer.run_dir) != trainer.checkpoint_path():
                trainer.save_checkpoint()
    finally:
        if progress is not None:
            progress.close()


def _progress_bar(plan: LoopPlan) -> Any:
    if not plan.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=plan.total, initial=plan.position(), unit=plan.unit, unit_scale=True,
                dynamic_ncols=True, desc=plan.desc, leave=True)
