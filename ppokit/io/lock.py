"""One writer per run directory: an exclusive lock on ``RUN_DIR/.lock`` held while a run trains.

Two processes training into one directory would interleave their metrics and overwrite each other's
checkpoints. The lock is an OS advisory lock (``flock``), so it is released when its holder exits,
however it exits, and a stale lock file never blocks anyone.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ppokit.errors import CheckpointError

LOCK_FILE = ".lock"


class RunLock:
    """Holds ``RUN_DIR/.lock``; :meth:`release` (or the process's exit) lets the next writer in."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise CheckpointError(
                f"run directory {str(run_dir)!r} is in use by another ppokit process (pid {holder}); wait for it "
                "to finish, or write this run to another --run-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
