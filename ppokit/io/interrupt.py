"""Ctrl-C and SIGTERM during training: finish the current update, checkpoint, then stop.

The first signal only sets a flag that the training loop checks between updates, so no update is
cut in half and the checkpoint it writes is consistent. A second signal raises
``KeyboardInterrupt`` at once; every file ppokit writes is written atomically, so even that leaves
the previous checkpoint intact.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

#: Exit codes the CLI uses: 128 + the signal number, as shells do.
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


class StopOnSignal:
    """Context manager: ``guard.signal_name`` is set once SIGINT or SIGTERM arrives."""

    def __init__(self, what: str = "update") -> None:
        self.what = what
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_name is not None:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        print(f"\nppokit: {self.signal_name} received: finishing the current {self.what}, then saving a "
              "checkpoint (send it again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> StopOnSignal:
        # Handlers can only be installed from the main thread; elsewhere the caller's own apply.
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
