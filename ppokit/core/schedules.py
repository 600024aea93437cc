"""Schedules for the learning rate and the clip range, as functions of training progress.

The one schedule of ppokit: control runs, RLHF PPO and the supervised stages all anneal through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

from ppokit.core.choices import ScheduleKind

SCHEDULES: tuple[str, ...] = get_args(ScheduleKind)


@dataclass(frozen=True)
class Schedule:
    """``value(fraction)`` for ``fraction`` in [0, 1] of training done.

    ``constant``: always ``initial``. ``linear``: from ``initial`` at the start to ``final`` at the
    end (``final`` is 0 by default, the annealing used by the PPO paper's Atari runs and CleanRL).
    """

    kind: str
    initial: float
    final: float = 0.0

    def __call__(self, fraction: float) -> float:
        if self.kind == "constant":
            return self.initial
        fraction = min(max(fraction, 0.0), 1.0)
        return self.initial + (self.final - self.initial) * fraction


def make_schedule(kind: str, initial: float, final: float = 0.0) -> Schedule:
    """Build a schedule; ``kind`` is one of :data:`SCHEDULES`."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; expected one of {', '.join(SCHEDULES)}")
    return Schedule(kind, float(initial), float(final))
