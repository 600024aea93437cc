"""Every process ppokit starts dies with the process that started it.

A worker left behind by a killed parent keeps training, holds the run's lock and keeps a tune trial
RUNNING for ever. So each child ppokit starts (the ``--nproc`` workers, ``tune --jobs`` workers, the
RLHF ``reward_pool: process`` workers) calls :func:`die_with_parent` first:

- on Linux, ``prctl(PR_SET_PDEATHSIG, SIGTERM)``: the kernel sends SIGTERM the moment the parent
  exits, however it exits (SIGKILL included). SIGTERM, not SIGKILL, so a training process finishes
  its update and saves a checkpoint, as for a SIGTERM sent by hand;
- everywhere, a watchdog thread that checks twice a second that the parent is still the one that
  started this process. Once it is not, it sends SIGTERM (off Linux) and, if the process is still
  alive ``GRACE_SECONDS`` later (a SIGTERM handler that never returns, a wait that never ends), kills
  it. It also catches the parent that died before ``prctl`` was called.

The parent's pid travels in :data:`PARENT_ENV` (set by the launcher) or is given by the caller.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

#: The environment variable a launcher sets to its own pid for the children it starts.
PARENT_ENV = "PPOKIT_PARENT_PID"
#: Seconds a child whose parent died may spend saving and stopping before it is killed.
GRACE_SECONDS = 30.0
#: How often the watchdog looks at the parent.
POLL_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1


def parent_from_environment() -> int | None:
    """The pid :data:`PARENT_ENV` names, or None when it is unset or not a pid."""
    text = os.environ.get(PARENT_ENV, "")
    return int(text) if text.isdigit() and int(text) > 1 else None


def die_with_parent(parent: int | None = None, kernel: bool = True) -> None:
    """Make this process stop when ``parent`` (default: its current parent) exits; see the module
    docstring. Call it first thing in a child process; calling it again changes nothing.

    ``kernel=False``: the watchdog alone, for a child that a short-lived thread of its parent may
    have started (Linux sends the parent-death signal when that *thread* ends, the parent alive)."""
    global _watching
    if parent is None or (parent != os.getppid() and _alive(parent)):
        parent = os.getppid()  # none named, or a stale name (inherited from another launch): not ours
    kernel_signals = False
    if kernel and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            kernel_signals = libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
        except (OSError, AttributeError):  # no prctl in this libc: the watchdog alone
            pass
        # A parent that died before prctl took effect is never signalled for: the watchdog does it.
        kernel_signals = kernel_signals and os.getppid() == parent
    if _watching:
        return
    _watching = True
    threading.Thread(target=_watch, args=(parent, kernel_signals), name="ppokit-parent-watchdog",
                     daemon=True).start()


_watching = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _watch(parent: int, kernel_signals: bool) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    if not kernel_signals:  # a second SIGTERM would mean "stop at once, no checkpoint"
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GRACE_SECONDS)
    os.kill(os.getpid(), signal.SIGKILL)
