"""The worker processes of ``ppokit tune --jobs J``.

Each job is a process started with "spawn" (torch's threads and a forked copy of them do not mix)
that loads the study from the one shared storage and runs ``study.optimize`` for its share of the
missing trials, so the study ends with exactly the trials asked for. A script that calls
:func:`ppokit.control.tune.sweep.tune` with ``jobs`` > 1 needs the usual ``if __name__ == "__main__":``
guard, as every spawning program does.

Ctrl-C reaches every process of the terminal's group: each worker ends its trial after the current
update (the trial is marked failed, and a resume runs it again) and the parent waits for them
(:mod:`ppokit.lifetime`: a SIGTERM to the parent alone is passed on, and a worker that does not stop
is signalled again, then killed); a trial a killed worker left RUNNING is marked failed. Every worker
dies with the parent (:mod:`ppokit.lifetime`): a SIGKILL of the parent stops them as a SIGTERM does,
and the next run of the study marks failed the RUNNING trials whose
process is gone (:func:`ppokit.control.tune.study.fail_abandoned`).
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from ppokit.control.tune.study import (
    Job,
    fail_abandoned,
    make_pruner,
    make_sampler,
    make_storage,
    require_optuna,
    run_trials,
)
from ppokit.errors import PPOKitError, TrainingError
from ppokit.lifetime import Terminated, die_with_parent, join_all, start_workers, worker_replies

__all__ = ["Terminated", "run_workers", "worker"]


def worker(job: Job, index: int, n_trials: int, existing: int) -> str | None:
    """Load the study from the shared storage and run ``n_trials`` of its trials in this process.
    Returns None, or what went wrong as one line (the traceback of a bug is printed here first)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=job.log_level, format="ppokit: %(levelname)s: %(message)s")
    logging.getLogger("ppokit").setLevel(job.log_level)
    try:
        optuna = require_optuna()
        study = optuna.load_study(study_name=job.settings.study, storage=make_storage(job.settings.storage),
                                  sampler=make_sampler(int(job.base["seed"]), index, existing),
                                  pruner=make_pruner(job.settings))
        run_trials(study, job, n_trials)
    except PPOKitError as err:
        return str(err)
    except KeyboardInterrupt:
        return "interrupted"
    except Exception as err:
        traceback.print_exc()
        return f"{type(err).__name__}: {err} (traceback above)"
    return None


def _process_main(job: Job, index: int, n_trials: int, existing: int, conn: Any, parent: int) -> None:
    die_with_parent(parent)
    conn.send(worker(job, index, n_trials, existing))
    conn.close()


def run_workers(job: Job, missing: int, existing: int) -> None:
    """Share ``missing`` trials out among ``job.settings.jobs`` spawned processes and wait for them;
    the first error of any becomes a TrainingError naming the worker. ``existing``: the trials the
    study held before, which seeds the samplers apart from those of earlier runs."""
    jobs = min(int(job.settings.jobs), missing)
    shares = [missing // jobs + (i < missing % jobs) for i in range(jobs)]
    workers = start_workers(_process_main, [(job, i, share, existing) for i, share in enumerate(shares)],
                            "ppokit-tune")
    try:
        join_all([process for process, _ in workers])
    finally:
        # A worker killed in the middle of a trial leaves it RUNNING: it never finishes now.
        fail_abandoned(job.settings, {p.pid for p, _ in workers if p.pid is not None and not p.is_alive()})
    for i, error in enumerate(worker_replies(workers)):
        if error is not None:
            raise TrainingError(f"worker {i + 1} of {jobs}: {error}; the study keeps the trials that finished, "
                                "and the same command runs the missing ones")
