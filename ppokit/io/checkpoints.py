"""Checkpoint directories of a run: naming, finding the latest, pruning, and safe torch loading.

A run keeps its resumable checkpoints in ``RUN_DIR/checkpoints/update_<12-digit update count>``
(the same name in both front ends: the number of PPO updates done); each is
written with :func:`ppokit.io.atomic.atomic_write_dir`, so one either exists complete or not at
all. ``RUN_DIR/best`` holds the policy with the best evaluation so far.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ppokit.errors import CheckpointError
from ppokit.io.atomic import ASIDE_TAG, recover_dir

CHECKPOINTS = "checkpoints"
BEST = "best"
#: Written last into every resumable checkpoint; its presence marks one as complete.
RESUME_FILE = "resume.json"


#: A checkpoint directory's name, from the number of updates done.
PREFIX = "update_"


def checkpoint_path(run_dir: str | Path, update: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"{PREFIX}{update:012d}"


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Complete resumable checkpoints of a run, oldest first.

    A checkpoint rewritten under its own name (a save with no update in between) whose writer was
    killed between the replacement's two renames survives only under its aside name; it is put
    back first (:func:`ppokit.io.atomic.recover_dir`), so the run still has it."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    for aside in root.glob(f".{PREFIX}*{ASIDE_TAG}*"):
        recover_dir(aside.with_name(aside.name[1:aside.name.index(ASIDE_TAG)]))
    found = [p for p in root.glob(f"{PREFIX}*") if p.is_dir() and (p / RESUME_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def checkpoint_due(count: int, every: int, minutes: float, last_saved: float) -> bool:
    """Whether to checkpoint after update ``count``: every ``every`` of them (0: never by count),
    or when ``minutes`` (0: never by time) have passed since ``last_saved`` (a ``time.monotonic()``)."""
    import time

    by_count = every > 0 and count % every == 0
    by_time = minutes > 0 and time.monotonic() - last_saved >= 60 * minutes
    return by_count or by_time


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Remove all but the newest ``keep`` checkpoints (and leftovers of interrupted writes).

    Each is first renamed to a hidden name (atomic), so a kill during the slow delete never leaves a
    half-deleted directory that looks like a checkpoint.
    """
    root = Path(run_dir) / CHECKPOINTS
    for old in checkpoint_dirs(run_dir)[:-keep] if keep > 0 else []:
        doomed = old.with_name(f".{old.name}.deleting")
        os.replace(old, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    if root.is_dir():
        for leftover in root.glob(f".{PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)


def load_torch_state(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load`` restricted to tensors and plain containers (``weights_only=True``).

    A file holding any other pickled object, one that would run code when unpickled, is refused
    with a :class:`CheckpointError` instead of being executed.
    """
    import torch  # here, so reading a run's layout (``ppokit info``) does not load torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file is missing")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling failures come in many types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: refused to load: not a plain tensor state file ({first[:300]})"
        ) from None


def load_optimizer_state(path: Path, optimizer: Any, device: Any = "cpu") -> None:
    """An optimiser's state from ``path`` (read as :func:`load_torch_state` reads), refused by name when
    it does not fit ``optimizer`` (another network, another LoRA or critic setting)."""
    try:
        optimizer.load_state_dict(load_torch_state(path, device))
    except (ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"{path}: optimizer state does not fit this model ({err})") from None


def load_safetensors(path: str | Path, device: str = "cpu") -> dict[str, Any]:
    """The tensors of a safetensors file; a file safetensors cannot read is a :class:`CheckpointError` naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=device)
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for bad files
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None


def refuse_non_finite(path: str | Path, tensors: Iterable[tuple[str, Any]],
                      consequence: str = "refusing to resume from them") -> None:
    """A :class:`CheckpointError` naming ``path`` and the first tensors (of ``(name, tensor)``) that
    hold NaN or inf: weights that diverged must not be trained or acted on further."""
    import torch

    bad = [name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"{path}: holds non-finite values (NaN or inf) in {', '.join(bad[:3])}"
                              f"{' and more' if len(bad) > 3 else ''}; {consequence}")


def find_resumable(run_dir: str | Path) -> Path:
    """The latest resumable checkpoint of ``run_dir``, or a :class:`CheckpointError` saying why none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {str(run_dir)!r} does not exist")
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise CheckpointError(
            f"{str(run_dir)!r} has no resumable checkpoint (expected {CHECKPOINTS}/{PREFIX}*/{RESUME_FILE}); "
            "was it started with a ppokit that saves them, or stopped before the first one?"
        )
    return checkpoint


def read_resume_state(checkpoint: str | Path, kind: str | None = None, version: int | None = None) -> dict[str, Any]:
    """The checkpoint's ``resume.json``, checked to be of ``kind`` and format ``version`` when given."""
    from ppokit._version import __version__

    file = Path(checkpoint) / RESUME_FILE
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file}: unreadable resume state ({err})") from None
    if kind is None:
        if not isinstance(state, dict):
            raise CheckpointError(f"{file}: not a resume state")
        return state
    if not isinstance(state, dict) or state.get("kind") != kind:
        found = state.get("kind") if isinstance(state, dict) else None
        raise CheckpointError(f"{file}: a {found!r} checkpoint, not a {kind!r} one")
    if state.get("format") != version:
        raise CheckpointError(f"{file}: resume format {state.get('format')!r} is not supported by "
                              f"ppokit {__version__} (expected {version})")
    return state


def file_record(path: str | Path) -> dict[str, Any]:
    """A data file as a checkpoint records it: its size and SHA-256, so a resume on another file is refused."""
    import hashlib

    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return {"size": size, "sha256": digest.hexdigest()}


def check_file_record(recorded: Any, now: dict[str, Any] | None, path: str | Path, field: str,
                      where: str | Path) -> None:
    """Refuse to resume on a ``field`` file other than the one the checkpoint ``where`` recorded;
    ``now``: the file's :func:`file_record` (None: it cannot be read). Checkpoints written before files
    were recorded have no record and pass."""
    if not isinstance(recorded, dict):
        return
    if now is None:
        raise CheckpointError(f"{field} file {str(path)!r}: cannot be read; the run was trained on it (recorded in "
                              f"{where})")
    if now != {"size": recorded.get("size"), "sha256": recorded.get("sha256")}:
        raise CheckpointError(
            f"{field} file {str(path)!r} is not the file the run was trained on: {where} records "
            f"{recorded.get('size')} bytes, sha256 {str(recorded.get('sha256'))[:12]}…; it now has {now['size']} bytes, "
            f"sha256 {now['sha256'][:12]}…; resume on the same file, or start a new run")
