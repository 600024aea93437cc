"""Run directories: where a run writes its config, metrics, checkpoints, model and evaluation."""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from ppokit.errors import CheckpointError
from ppokit.io.lock import RunLock
from ppokit.io.metrics import MetricsLogger
from ppokit.io.trackers import TRACKER_STATE, TrackerSet, check_trackers, open_trackers


class RunConfig(Protocol):
    """What a run directory needs of a config (any of the trainers' dataclasses): it is written to
    config.yaml whole; these fields say which metric sinks to open."""

    tensorboard: bool
    trackers: list[Any]


#: Files whose presence means a directory already holds a run.
RUN_MARKERS = ("config.yaml", "metrics.jsonl")


def default_run_dir(env_id: str, seed: int, root: str | Path = "runs", label: str | None = None) -> Path:
    """``root/<env>__seed<N>__<time>`` (``label`` instead of ``seed<N>``), numbered when it exists."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in env_id)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = f"{safe}__{label or f'seed{seed}'}__{stamp}"
    path = Path(root) / base
    n = 1
    while path.exists():
        n += 1
        path = Path(root) / f"{base}-{n}"
    return path


def holds_run(path: Path) -> bool:
    return any((path / marker).exists() for marker in RUN_MARKERS)


def prepare_run_dir(path: Path, overwrite: bool = False) -> Path:
    """Make the existing directory ``path`` ready for a new run (:func:`open_run` has created and
    locked it): refuse one that already holds a run unless ``overwrite``, else clear that run out."""
    if holds_run(path) and not overwrite:
        raise CheckpointError(
            f"run directory {str(path)!r} already holds a run; continue it with `ppokit resume {path}` "
            "(or --resume), choose another --run-dir, or pass --overwrite to start over in it"
        )
    if holds_run(path) and overwrite:
        for name in ("metrics.jsonl", "eval.json", "config.yaml", TRACKER_STATE):
            (path / name).unlink(missing_ok=True)
        for name in ("tensorboard", "checkpoints", "model", "best"):
            shutil.rmtree(path / name, ignore_errors=True)
    return path


def check_resume_flags(resume: bool, overwrite: bool, run_dir: str | Path | None) -> None:
    """The CLI's ``--resume`` needs the run it continues and cannot go with ``--overwrite``."""
    from ppokit.errors import ConfigError

    if resume and run_dir is None:
        raise ConfigError("--resume needs --run-dir (the run to continue)")
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; pass one")


def open_run(path: str | Path, config: RunConfig, *, overwrite: bool = False, resume_update: int | None = None,
             purge_step: int | None = None, launch: Mapping[str, Any] | None = None,
             resume_key: str = "update") -> tuple[Path, MetricsLogger]:
    """Start (or, with ``resume_update``, reopen) a run directory: write ``config.yaml``, open the metrics.

    A new run refuses a directory that holds one unless ``overwrite``. A resumed run drops the
    metrics rows after update ``resume_update`` (written after its checkpoint, before the stop: they
    are redone; ``resume_key``: the rows' counter, ``step`` for SFT and reward training), and
    TensorBoard drops its events from ``purge_step`` on. ``launch``: how the run
    was launched (a data-parallel run's world size and global batch), recorded in config.yaml under
    ``launch:``, which config loaders skip.
    """
    from ppokit.configuration import config_to_yaml
    from ppokit.io.atomic import atomic_write_text, reported_os_errors
    from ppokit.io.metrics import truncate_metrics
    from ppokit.io.outputs import check_run_dir

    path = Path(path)
    check_trackers(getattr(config, "trackers", ()))
    if resume_update is None:
        check_run_dir(path)
    with reported_os_errors(path):
        if path.exists() and not path.is_dir():
            raise CheckpointError(f"run directory {str(path)!r} exists and is not a directory")
        path.mkdir(parents=True, exist_ok=True)
        lock = RunLock(path)  # before anything in it changes; the metrics logger releases it
        try:
            if resume_update is not None:
                truncate_metrics(path / "metrics.jsonl", resume_key, resume_update)
            else:
                path = prepare_run_dir(path, overwrite)
            # Trackers first: one that cannot start leaves no config.yaml, so the directory holds no run.
            trackers = run_trackers(path, config, resuming=resume_update is not None)
            text = config_to_yaml(config)
            if launch:
                import yaml

                text += yaml.safe_dump({"launch": dict(launch)}, sort_keys=False)
            atomic_write_text(path / "config.yaml", text)
            return path, MetricsLogger(path, tensorboard=config.tensorboard, purge_step=purge_step, lock=lock,
                                       trackers=trackers)
        except BaseException:
            lock.release()
            raise


def run_trackers(path: Path, config: RunConfig, resuming: bool) -> TrackerSet:
    """The trackers ``config.trackers`` names, given the config as config.yaml records it."""
    import yaml

    from ppokit.configuration import config_to_yaml

    names = getattr(config, "trackers", ())
    recorded = yaml.safe_load(config_to_yaml(config)) if names else {}
    return TrackerSet(open_trackers(names, path, recorded, resuming))


def recorded_config(run_dir: Path, overrides: Mapping[str, Any], resumable: frozenset[str]) -> tuple[Path, dict[str, Any]]:
    """``(config.yaml, its fields)`` of the resumable run in ``run_dir``, for a resume with ``overrides``;
    refused when an override names a field outside ``resumable`` (one that shaped the run)."""
    from ppokit.configuration import load_yaml
    from ppokit.errors import ConfigError
    from ppokit.io.checkpoints import find_resumable

    find_resumable(run_dir)
    config_file = run_dir / "config.yaml"
    fixed = sorted(set(overrides) - resumable)
    if fixed:
        raise ConfigError(f"resuming {run_dir}: {', '.join(fixed)} shaped the run and cannot change on resume "
                          f"(only {', '.join(sorted(resumable))} can)")
    data = dict(load_yaml(config_file))
    data.pop("launch", None)  # how the run was launched (its world size), not a config field
    return config_file, data
