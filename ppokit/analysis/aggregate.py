"""Aggregate scores across tasks with bootstrap confidence intervals, as the ``rliable`` library
computes them (Agarwal et al., 2021, "Deep RL at the Edge of the Statistical Precipice").

Each run's score is normalised per task, ``(score − low) / (high − low)``, so tasks of different
scales can be pooled. Over the pooled (task, run) scores of one group:

* **IQM**, the interquartile mean: the mean of the middle 50 % of scores, with
  ``⌊0.25·n⌋`` scores cut from each end (``scipy.stats.trim_mean(x, 0.25)``); robust to a
  few outlying runs, and less noisy than the median;
* the **median** and the **mean**.

The 95 % interval is the percentile interval of a *stratified* bootstrap: each of ``reps``
resamples draws, within every task, as many runs as that task has, with replacement, and computes
the statistic over the pooled resample; the interval is the 2.5th and 97.5th percentiles.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: Bootstrap resamples (rliable's default is 2,000 too) and the interval's coverage.
REPS = 2000
CONFIDENCE = 0.95


def iqm(scores: np.ndarray) -> float:
    """The interquartile mean of all ``scores``: cut ``⌊0.25·n⌋`` from each end of the sorted
    scores, average the rest."""
    flat = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    cut = int(0.25 * flat.size)
    return float(flat[cut:flat.size - cut].mean())


STATISTICS: dict[str, Callable[[np.ndarray], float]] = {
    "IQM": iqm,
    "median": lambda x: float(np.median(x)),
    "mean": lambda x: float(np.mean(x)),
}


@dataclass
class Estimate:
    """A statistic of one group's pooled scores, with its bootstrap interval."""

    group: str
    statistic: str
    value: float
    low: float
    high: float
    tasks: int
    runs: int


def stratified_bootstrap(per_task: Sequence[np.ndarray], statistic: Callable[[np.ndarray], float],
                         reps: int = REPS, confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float]:
    """The percentile interval of ``statistic`` over resamples that redraw the runs within each task."""
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(a, dtype=np.float64) for a in per_task]
    values = np.empty(reps)
    for i in range(reps):
        values[i] = statistic(np.concatenate([a[rng.integers(0, a.size, a.size)] for a in arrays]))
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def normalise(scores: Mapping[str, Mapping[str, list[float]]],
              ranges: Mapping[str, tuple[float, float]] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """``scores[group][task]`` → the same, normalised per task by ``ranges[task] = (low, high)``, or,
    for a task without one, by the lowest and highest score any group reached on it."""
    ranges = dict(ranges or {})
    tasks = {task for by_task in scores.values() for task in by_task}
    for task in tasks - set(ranges):
        values = [v for by_task in scores.values() for v in by_task.get(task, [])]
        ranges[task] = (min(values), max(values))
    out: dict[str, dict[str, np.ndarray]] = {}
    for group, by_task in scores.items():
        out[group] = {}
        for task, values in by_task.items():
            low, high = ranges[task]
            span = high - low
            out[group][task] = (np.asarray(values, dtype=np.float64) - low) / span if span else np.full(len(values), 0.5)
    return out


def estimates(normalised: Mapping[str, Mapping[str, np.ndarray]], reps: int = REPS, seed: int = 0) -> list[Estimate]:
    """Every statistic of every group, with its stratified-bootstrap interval."""
    out = []
    for group, by_task in normalised.items():
        per_task = [by_task[t] for t in sorted(by_task)]
        pooled = np.concatenate(per_task)
        for name, statistic in STATISTICS.items():
            low, high = stratified_bootstrap(per_task, statistic, reps=reps, seed=seed)
            out.append(Estimate(group, name, statistic(pooled), low, high, len(per_task), pooled.size))
    return out
