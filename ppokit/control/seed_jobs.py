"""``ppokit train ENV --seeds 1-16 --jobs 4``: one group of seeds, trained in several processes at once.

A seed of a group is its solo run bit for bit, whichever seeds share its process
(:mod:`ppokit.control.seeds`), so the seeds can be dealt out to processes with nothing changed: each
job is a spawned process that trains a :class:`~ppokit.control.seeds.SeedGroup` of its share (seeds
dealt in turn: with 2 jobs, 1, 3, 5, ... and 2, 4, 6, ...) into the one group directory, each seed
to ``RUN_DIR/seed_<k>`` as ever, and every job writes the same ``seeds.json`` for the whole group.
``ppokit resume RUN_DIR`` continues it, in one process or again in jobs (``--jobs``).

One process of a group runs on one core (its acting, env steps and updates are sequential), so on a
machine with more cores the jobs train side by side. Each job takes ``cores // jobs`` threads when
``OMP_NUM_THREADS`` is unset, as ``--nproc`` does. Ctrl-C stops every job at its next update with a
checkpoint (:mod:`ppokit.lifetime`). A job that fails is named when every job has ended; the
others train their seeds to the end.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppokit.control.config import ControlConfig
from ppokit.errors import ConfigError, PPOKitError, TrainingError, TrainingInterrupted
from ppokit.io.run_dir import holds_run
from ppokit.lifetime import die_with_parent, join_all, start_workers, worker_replies


@dataclass(frozen=True)
class SeedJob:
    """What one job trains: ``share`` of the group's ``seeds`` into ``run_dir``, either starting
    from ``config`` (``train``) or from each seed's latest checkpoint (``config`` None: ``resume``)."""

    config: ControlConfig | None
    share: tuple[int, ...]
    seeds: tuple[int, ...]
    run_dir: str
    overwrite: bool = False
    resume: bool = False
    total_steps: int | None = None
    trust: bool = False
    overrides: tuple[tuple[str, Any], ...] = ()
    log_level: int = logging.INFO


def shares(seeds: Sequence[int], jobs: int) -> list[tuple[int, ...]]:
    """The seeds dealt out in turn to ``min(jobs, len(seeds))`` jobs."""
    jobs = max(1, min(jobs, len(seeds)))
    return [tuple(seeds[i::jobs]) for i in range(jobs)]


def check_jobs(jobs: int, seeds: str | Sequence[int] | None, stack_updates: bool) -> None:
    """Refuse, before anything starts, a ``--jobs`` that cannot apply (one line each)."""
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: a number of processes, 1 or more")
    if jobs == 1:
        return
    if seeds is None:
        raise ConfigError(f"--jobs {jobs} trains the seeds of --seeds in {jobs} processes; give --seeds too (1-8, "
                          "1,3,5), or --nproc to train one run in several processes")
    if stack_updates:
        raise ConfigError(f"--jobs {jobs} and --stack-updates: stacked updates batch the seeds of one process, and "
                          "a stacked group must continue with the same seeds together; give one of them")
    check_cores(jobs)


def check_cores(jobs: int) -> None:
    """More jobs than the cores this process may use only fight over them (as ``--nproc``)."""
    from ppokit.launch import max_processes

    limit = max_processes()
    if jobs > limit:
        raise ConfigError(f"--jobs {jobs}: this machine gives ppokit {limit} CPU core{'s' * (limit != 1)}, and each "
                          f"job runs on one; use --jobs {limit} or fewer")


def check_group_dir(run_dir: Path, seeds: Sequence[int]) -> None:
    """A group trained in jobs starts in a new directory, or over a group of the same seeds: replacing
    another group's seeds would need one process to see every job started first (``--overwrite``
    without ``--jobs`` does that)."""
    from ppokit.control.seeds import _seed_of, read_group

    old = read_group(run_dir) if run_dir.is_dir() else None
    others = sorted({s for s in old or [] if s not in seeds}
                    | {s for p in (run_dir.glob("seed_*") if run_dir.is_dir() else [])
                       if (s := _seed_of(p.name)) is not None and s not in seeds and holds_run(p)})
    if others:
        raise ConfigError(f"{run_dir} holds a seed group with seeds {others} that --seeds leaves out; --jobs starts a "
                          "group in a new directory or over the same seeds: continue it with `ppokit resume "
                          f"{run_dir}`, choose another --run-dir, or replace it without --jobs (--overwrite)")


def _run_job(job: SeedJob) -> None:
    from ppokit.control.seeds import SeedGroup

    if job.config is None:
        group = SeedGroup.resume(job.run_dir, trust=job.trust, share=job.share, **dict(job.overrides))
    else:
        group = SeedGroup(job.config, job.share, group_seeds=job.seeds)
    try:
        group.learn(job.total_steps, run_dir=job.run_dir, overwrite=job.overwrite, resume=job.resume)
    finally:
        group.close()


def _job_main(job: SeedJob, conn: Any, parent: int) -> None:
    die_with_parent(parent)
    logging.basicConfig(level=job.log_level, format="ppokit: %(levelname)s: %(message)s")
    error: str | None = None
    try:
        _run_job(job)
    except TrainingInterrupted as err:
        error = f"interrupted ({err.signal_name})"
    except KeyboardInterrupt:
        error = "interrupted"
    except PPOKitError as err:
        error = str(err)
    except Exception as err:
        traceback.print_exc()
        error = f"{type(err).__name__}: {err} (traceback above)"
    conn.send(error)
    conn.close()


def run_jobs(template: SeedJob, jobs: int) -> None:
    """Train ``template.seeds`` in ``jobs`` spawned processes (each ``template`` with its share) and
    wait for them; the first job's error becomes a TrainingError naming it."""
    from dataclasses import replace

    from ppokit.launch import max_processes

    parts = shares(template.seeds, jobs)
    # Each job's torch and BLAS would otherwise start a thread per core and they would fight over them
    # (the children read the variable when they start; this process's is left as it was).
    threads = None if "OMP_NUM_THREADS" in os.environ else str(max(1, max_processes() // len(parts)))
    try:
        if threads is not None:
            os.environ["OMP_NUM_THREADS"] = threads
        workers = start_workers(_job_main, [(replace(template, share=share),) for share in parts], "ppokit-seeds")
    finally:
        if threads is not None:
            os.environ.pop("OMP_NUM_THREADS", None)
    join_all([process for process, _ in workers])
    errors = [f"job {i + 1} of {len(parts)} (seeds {', '.join(map(str, parts[i]))}): {error}"
              for i, error in enumerate(worker_replies(workers)) if error is not None]
    if errors:
        raise TrainingError(f"{errors[0]}{f' (and {len(errors) - 1} more)' if len(errors) > 1 else ''}; the seeds' "
                            f"runs keep their checkpoints: `ppokit resume {template.run_dir}` continues the group")


def default_job_dir(config: ControlConfig, seeds: Sequence[int]) -> Path:
    """The group directory every job writes to: the config's, or the default one, chosen once here
    (it is named by the time)."""
    from ppokit.control.seeds import default_group_dir

    return Path(config.run_dir) if config.run_dir is not None else default_group_dir(config.env_id, seeds)
