"""The loop around SFT and reward training: optimiser steps in the one loop shell, evaluation,
checkpoints and exact resume.

A stage (:class:`~ppokit.rlhf.supervised.sft.SFTTrainer`, :class:`~ppokit.rlhf.supervised.reward_model.RewardTrainer`)
loads its data and model and says how to turn rows into micro-batches and how to evaluate; this
class runs them in :func:`ppokit.io.loop.run_loop`, one optimiser step per loop update::

    for each optimiser step:
        batch  = the next rows in the epoch's shuffled order           EpochBatches
        pieces = the stage's micro-batches of this process's share      micro_batch()
        step   = accumulated_step(pieces)                               steps.py
        every eval_every steps and at each epoch's end: evaluate()      logged with prefix "eval"
        checkpoints when due, at the end and on Ctrl-C                  checkpoint.py
    the stage saves the model                                           finish()
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

from ppokit.configuration import with_absolute_paths
from ppokit.core.collective import SINGLE, Collective, check_world_size, on_main
from ppokit.core.schedules import make_schedule
from ppokit.errors import CheckpointError, ConfigError
from ppokit.io.atomic import atomic_write_json
from ppokit.io.checkpoints import RESUME_FILE, checkpoint_path, latest_checkpoint, read_resume_state
from ppokit.io.loop import Callback, LoopPlan, run_loop
from ppokit.io.metrics import MetricsLogger, NullMetrics
from ppokit.io.run_dir import default_run_dir, holds_run
from ppokit.io.run_dir import open_run as _open_run
from ppokit.rlhf import data_parallel
from ppokit.rlhf.config import PATH_FIELDS, RewardConfig, SFTConfig, SupervisedConfig
from ppokit.rlhf.consent import resume_flags
from ppokit.rlhf.models.loading import setup_runtime
from ppokit.rlhf.supervised import checkpoint as supervised_checkpoint
from ppokit.rlhf.supervised.steps import EpochBatches, MicroBatch, accumulated_step, micro_slices, step_optimizer
from ppokit.runtime import join_processes

log = logging.getLogger("ppokit")


def run_path(config: SupervisedConfig, stage: str, run_dir: str | Path | None, collective: Collective = SINGLE) -> Path:
    """The run directory of an SFT or reward-training run: ``run_dir``, the config's, or a new name
    (rank 0's, so every process agrees on it)."""
    return data_parallel.run_path(collective, run_dir or config.run_dir or default_run_dir(f"rlhf-{stage}", config.seed))


def open_run(config: SupervisedConfig, path: Path, overwrite: bool, collective: Collective = SINGLE,
             resume_step: int | None = None) -> tuple[Path, MetricsLogger]:
    """Create (or, resuming from the checkpoint of optimiser step ``resume_step``, reopen) the run
    directory of an SFT or reward-training run, write config.yaml, open the metrics (rank 0 alone; the
    other processes get rank 0's path and a logger that writes nothing). Reopened, the metrics rows and
    TensorBoard events after ``resume_step`` are dropped: the resumed run writes them again."""
    launch = {"world_size": collective.world_size, "global_batch_size": config.batch_size} if collective.active else None
    purge = None if resume_step is None else resume_step + 1
    return on_main(
        collective, lambda: _open_run(path, with_absolute_paths(config, PATH_FIELDS), overwrite=overwrite, launch=launch,
                                      resume_update=resume_step, purge_step=purge, resume_key="step"),
        lambda: (path, NullMetrics()))


#: The config of a supervised stage.
StageConfig = TypeVar("StageConfig", SFTConfig, RewardConfig)


class SupervisedTrainer(Generic[StageConfig]):
    """What SFT and reward training share around their loss (the :class:`~ppokit.io.loop.Trainable`
    the loop shell drives). A stage's constructor calls ``super().__init__`` first (runtime, processes,
    the checkpoint to resume), then loads its data and model and calls :meth:`_start`."""

    #: The stage: names the default run directory, the checkpoint kind and the progress bar.
    stage = ""
    #: The figures its micro-batches sum (means over the batch in the metrics row).
    figures: tuple[str, ...] = ()
    #: The metrics row's throughput figure: the batch's entries (tokens, pairs) per second, or none.
    rate: str | None = None

    def __init__(self, config: StageConfig, run_dir: str | Path | None, overwrite: bool, resume: bool) -> None:
        self.config: StageConfig = config
        c = config
        self.device, self.dtype = setup_runtime(c)
        self.collective = join_processes(self.device, c.dist_backend, c.dist_timeout, settings=c)
        self.directory = run_path(c, self.stage, run_dir, self.collective)
        self.overwrite = overwrite
        self.checkpoint: Path | None = None
        self.resume_state: dict[str, Any] | None = None
        if resume:
            if run_dir is None and c.run_dir is None:
                raise ConfigError("resume needs the run directory to continue (run_dir)")
            self.checkpoint = latest_checkpoint(self.directory)
            if self.checkpoint is not None:
                self.resume_state = read_resume_state(self.checkpoint, supervised_checkpoint.KINDS[self.stage],
                                                      supervised_checkpoint.RESUME_FORMAT)
                check_world_size(self.resume_state, self.collective, self.checkpoint / RESUME_FILE,
                                 "share of the batch and random state")
                supervised_checkpoint.check_resumable(self.directory / "config.yaml", c)
            elif holds_run(self.directory):
                # Stopped before its first checkpoint: nothing to continue from, so start it again.
                log.warning("%s holds a run stopped before its first checkpoint; starting it over", self.directory)
                self.overwrite = True
        self.run_dir: Path | None = None
        self.metrics: MetricsLogger | None = None
        self.num_updates = 0
        self.start_time = time.perf_counter()

    # ---- what a stage provides -------------------------------------------------------------------

    def micro_batch(self, rows: list[int]) -> MicroBatch:
        """The micro-batch of these training rows (indices; at least one)."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, float] | None:
        """The held-out figures (every process calls it), or None when the run holds nothing out."""
        raise NotImplementedError

    def finish(self) -> tuple[dict[str, Any], Path]:
        """After the last step: save the model (rank 0 writes); returns ``(summary, model directory)``."""
        raise NotImplementedError

    # ---- set-up ----------------------------------------------------------------------------------

    def _start(self, model: torch.nn.Module, rows: int, fingerprint: str) -> None:
        """The optimiser, schedule and data order for ``model`` and ``rows`` training rows; open the run
        directory; restore the checkpoint when resuming. ``fingerprint``: the training data's, kept in
        checkpoints so a resume on other data is refused."""
        c = self.config
        self.model = model
        #: The weights that train: all of them, or the LoRA adapters (and a new head).
        self.trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
        self.torch_optimizer = torch.optim.AdamW(list(self.trainable.values()), lr=c.learning_rate,
                                                 weight_decay=c.weight_decay)
        self.optimizer = step_optimizer(self.torch_optimizer, self.collective)
        self.batches = EpochBatches(rows, c.batch_size, c.epochs, c.seed)
        decay, total = make_schedule("linear", 1.0), self.batches.total  # the multiplier of the learning rate
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.torch_optimizer, lambda step: decay(step / max(1, total)))
        self.fingerprint = fingerprint
        self.last_loss = float("nan")
        #: The evaluation rows logged so far (one per evaluation).
        self.evals: list[dict[str, Any]] = []
        resume_step = None
        if self.checkpoint is not None and self.resume_state is not None:
            # Before the run directory is reopened (which drops the metrics rows after the checkpoint).
            supervised_checkpoint.check_data(self.checkpoint, self.resume_state, fingerprint)
            resume_step = int(self.resume_state["step"])
        self.run_dir, self.metrics = open_run(c, self.directory, self.overwrite, self.collective, resume_step)
        if self.checkpoint is not None and self.resume_state is not None:
            try:
                supervised_checkpoint.restore(self.checkpoint, self.resume_state, self.trainable, self.optimizer,
                                              self.device, self.collective)
                self.load_state_dict(self.resume_state, self.checkpoint / RESUME_FILE)
            except BaseException:
                self.metrics.close("failed")  # releases the run directory's lock
                raise

    # ---- one step --------------------------------------------------------------------------------

    def update(self) -> dict[str, Any]:
        """One optimiser step on the next batch (this process's share of it, in micro-batches)."""
        c = self.config
        t0 = time.perf_counter()
        rows = data_parallel.local_slice(self.batches.next(), self.collective)
        micro = [self.micro_batch(list(part)) for part in micro_slices(rows, c.gradient_accumulation_steps)]
        result = accumulated_step(micro, self.optimizer, self.collective, c.max_grad_norm,
                                  f"{self.stage} step {self.num_updates + 1}", self.figures)
        self.scheduler.step()
        self.num_updates += 1
        self.last_loss = result.loss
        record = {"step": self.num_updates, "epoch": self.batches.epoch, "loss": result.loss, **result.figures,
                  "grad_norm": result.grad_norm, "learning_rate": self.scheduler.get_last_lr()[0]}
        if self.rate is not None:
            record[self.rate] = result.count / max(time.perf_counter() - t0, 1e-9)
        return record

    def after_update(self, record: dict[str, Any]) -> bool:
        """Evaluate every ``eval_every`` steps and at the end of each epoch."""
        every = self.config.eval_every
        if self.batches.epoch_done or (every and self.num_updates % every == 0):
            self._evaluate()
        return False

    def _evaluate(self) -> None:
        figures = self.evaluate()
        if figures is None:
            return
        row = {"step": self.num_updates, "epoch": self.batches.epoch, **figures}
        self.evals.append(row)
        assert self.metrics is not None
        self.metrics.log(row, self.num_updates, prefix="eval")
        log.info("%s: step %d, %s", self.stage, self.num_updates,
                 ", ".join(f"{k} {v:.4f}" for k, v in figures.items()))

    def seconds(self) -> float:
        """Seconds since this trainer was built (this session of the run)."""
        return time.perf_counter() - self.start_time

    def final_eval(self) -> dict[str, Any]:
        """The last evaluation row (empty when nothing is held out)."""
        return self.evals[-1] if self.evals else {}

    # ---- the loop --------------------------------------------------------------------------------

    def learn(self, callback: Callback | None = None) -> dict[str, Any]:
        """Run the remaining optimiser steps, then save the model and ``summary.json``; returns the summary.
        ``callback`` gets every step's metrics row and stops training by returning False."""
        c, main = self.config, self.collective.is_main
        assert self.metrics is not None and self.run_dir is not None, "learn() runs once per trainer"
        world = self.collective.world_size
        plan = LoopPlan(
            updates=self.batches.total - self.num_updates, desc=self.stage, checkpoint_every=c.checkpoint_every,
            checkpoint_minutes=c.checkpoint_minutes, x_axis=lambda record: int(record["step"]),
            progress=c.progress and main, unit="step", total=self.batches.total, position=lambda: self.num_updates,
            postfix=lambda record: {"loss": f"{record['loss']:.3f}"}, agree=self.collective.any,
            resume_flags=resume_flags(with_absolute_paths(c, PATH_FIELDS)) + (f" --nproc {world}" if world > 1 else ""),
        )
        metrics = self.metrics
        try:
            with metrics:  # open until the model is saved, so the trackers get it
                run_loop(self, plan, metrics, callback)
                if self.num_updates and (not self.evals or self.evals[-1]["step"] != self.num_updates):
                    self._evaluate()  # stopped early (a callback): the summary gets the weights as saved
                summary, model_dir = self.finish()
                if main:
                    atomic_write_json(self.run_dir / "summary.json", summary)
                metrics.finish(summary, model_dir)
        finally:
            self.metrics = None  # closed, with the run directory's lock
        return summary

    # ---- checkpoints -----------------------------------------------------------------------------

    def checkpoint_path(self) -> Path:
        assert self.run_dir is not None
        return checkpoint_path(self.run_dir, self.num_updates)

    def save_checkpoint(self) -> Path:
        """A resumable checkpoint ``RUN_DIR/checkpoints/update_<step>`` (see :mod:`.checkpoint`)."""
        assert self.run_dir is not None
        return supervised_checkpoint.save_checkpoint(self.run_dir, self.stage, self.trainable, self.optimizer,
                                                     self.state_dict(), self.collective, self.config.keep_checkpoints)

    def state_dict(self) -> dict[str, Any]:
        """The trainer's own state for a checkpoint: the step, data position, schedule, evaluations, and
        the training data's fingerprint (the weights and optimiser are saved beside it)."""
        return {"step": self.num_updates, "batches": self.batches.state_dict(), "scheduler": self.scheduler.state_dict(),
                "last_loss": self.last_loss, "evals": self.evals, "data": self.fingerprint}

    def load_state_dict(self, state: Mapping[str, Any], where: Path | str = "resume state") -> None:
        try:
            self.scheduler.load_state_dict(dict(state["scheduler"]))
            self.batches.load_state_dict(state["batches"])
            self.num_updates = int(state["step"])
            self.last_loss = float(state["last_loss"])
            self.evals = [dict(row) for row in state["evals"]]
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as err:
            raise CheckpointError(f"{where}: bad resume state ({type(err).__name__}: {err})") from None


def data_fingerprint(rows: Any) -> str:
    """A short hash of the training rows (any JSON-able form), so a resume on other data is refused."""
    import hashlib

    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]
