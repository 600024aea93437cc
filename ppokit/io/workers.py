"""Waiting for worker processes, and stopping them (``ppokit tune --jobs``, ``ppokit train --seeds --jobs``).

Ctrl-C reaches every process of the terminal's group: each worker ends its work at the next update
(saving what it must) and the parent waits for them. A SIGTERM to the parent alone is passed on to
the workers, with the same effect. A worker that has not stopped after ``GRACE_SECONDS`` is asked
again with SIGTERM, then killed. The workers themselves call :func:`ppokit.lifetime.die_with_parent`,
so a SIGKILL of the parent stops them as a SIGTERM does.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Sequence
from typing import Any

#: Seconds the parent waits for an interrupted worker before it signals it again, then kills it.
GRACE_SECONDS = 15.0


class Terminated(KeyboardInterrupt):
    """The parent got SIGTERM while its workers ran (told apart from Ctrl-C for the exit code)."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


def join_all(processes: Sequence[Any]) -> None:
    """Wait for every process (``multiprocessing.Process``). On Ctrl-C, or a SIGTERM to this process
    (raised here as :class:`Terminated`), stop them (:func:`stop`) and raise it again."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt as err:
        stop(processes, first=signal.SIGTERM if isinstance(err, Terminated) else None)
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def stop(processes: Sequence[Any], first: signal.Signals | None = None) -> None:
    """After Ctrl-C (which reached the workers too; ``first`` None) or a SIGTERM to this process alone
    (``first`` SIGTERM, passed on): let the workers end their work, ask the ones that do not again,
    then kill them."""
    for ask in (first, signal.SIGTERM, signal.SIGKILL):
        alive = [p for p in processes if p.is_alive()]
        for process in alive:
            if ask is not None and process.pid is not None:
                os.kill(process.pid, ask)
        for process in alive:
            process.join(GRACE_SECONDS)
