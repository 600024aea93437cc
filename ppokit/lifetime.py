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

The parent's side (``tune --jobs``, ``train --seeds --jobs``): :func:`join_all` waits for its
workers. Ctrl-C reaches every process of the terminal's group: each worker ends its work at the next
update (saving what it must) and the parent waits for them. A SIGTERM to the parent alone is passed
on to the workers, with the same effect. A worker that has not stopped after ``JOIN_GRACE_SECONDS``
is asked again with SIGTERM, then killed (:func:`stop`).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

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


#: Seconds the parent waits for an interrupted worker before it signals it again, then kills it.
JOIN_GRACE_SECONDS = 15.0


class Terminated(KeyboardInterrupt):
    """The parent got SIGTERM while its workers ran (told apart from Ctrl-C for the exit code)."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


def start_workers(target: Any, argsets: Sequence[tuple[Any, ...]], name: str) -> list[tuple[Any, Any]]:
    """One spawned process per entry of ``argsets``, each running ``target(*args, conn, parent_pid)``
    ("spawn": torch's threads and a forked copy of them do not mix). ``target`` calls
    :func:`die_with_parent` with ``parent_pid`` first and sends one reply on ``conn``: None when it
    succeeded, else what went wrong as one line (:func:`worker_replies`). Returns
    ``[(process, receiving end)]``, named ``name-1``, ``name-2``, ..."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    workers = []
    for i, args in enumerate(argsets):
        receive, send = context.Pipe(duplex=False)
        process = context.Process(target=target, args=(*args, send, os.getpid()), name=f"{name}-{i + 1}")
        process.start()
        send.close()  # the child holds the sending end; the parent's would keep the pipe open
        workers.append((process, receive))
    return workers


def worker_replies(workers: Sequence[tuple[Any, Any]]) -> list[str | None]:
    """After :func:`join_all`: each worker's reply, or, for one that sent none, how it died."""
    return [receive.recv() if receive.poll()
            else f"the process died with exit code {process.exitcode} (killed, or out of memory?)"
            for process, receive in workers]


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
            process.join(JOIN_GRACE_SECONDS)
