"""Aggregate scores across tasks with bootstrap confidence intervals, as the ``rliable`` library
computes them (Agarwal et al., 2021, "Deep RL at the Edge of the Statistical Precipice").

Each run's score is normalised per task, ``(score − low) / (high − low)``, so tasks of different
scales can be compared. rliable takes a ``runs × tasks`` matrix of scores; here a group's scores are
one array of runs per task, which is that matrix's columns. The statistics are rliable's:

* **IQM** (``metrics.aggregate_iqm``), the interquartile mean of all runs of all tasks pooled: cut
  ``⌊0.25·n⌋`` scores from each end of the sorted ``n``, average the rest
  (``scipy.stats.trim_mean(x, 0.25, axis=None)``);
* the **median** (``metrics.aggregate_median``): the median over tasks of each task's mean score;
* the **mean** (``metrics.aggregate_mean``): the mean over tasks of each task's mean score;
* the **optimality gap** (``metrics.aggregate_optimality_gap``, γ = 1): how far the scores fall short
  of 1, ``1 − mean(min(score, 1))``, a score above 1 counting as 1; lower is better.

With the same number of runs on every task these equal rliable's functions on the matrix. With
unequal numbers rliable has no matrix; then the median, the mean and the optimality gap weigh each
task equally (per-task means first) and the IQM pools all runs.

The 95 % interval is the percentile interval of rliable's stratified bootstrap
(``library.get_interval_estimates`` with ``method="percentile"``): each of ``reps`` resamples redraws,
within every task, as many runs as it has, with replacement (tasks are never redrawn); the interval
is the 2.5th and 97.5th percentiles of the statistic over the resamples (``numpy.percentile``,
linear). The draws are those of ``numpy.random.RandomState(seed).choice(runs, (runs, tasks))`` per
resample, the draws rliable makes from NumPy's global generator after ``numpy.random.seed(seed)``, so
the intervals equal rliable's at that seed. With unequal run counts, each task's runs are drawn in
turn (``choice(runs_t, runs_t)``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: Bootstrap resamples (rliable's default for profiles is 2,000 too) and the interval's coverage.
REPS = 2000
CONFIDENCE = 0.95

#: A group's scores: a ``runs × tasks`` matrix (rliable's layout), one array of runs per task, or
#: one array (one task).
Scores = np.ndarray | Sequence[np.ndarray] | Sequence[Sequence[float]]


def per_task(scores: Scores) -> list[np.ndarray]:
    """``scores`` as one 1-D float array of runs per task."""
    if isinstance(scores, np.ndarray):
        matrix = np.asarray(scores, dtype=np.float64)
        if matrix.ndim == 1:
            return [matrix]
        if matrix.ndim == 2:
            return [matrix[:, j] for j in range(matrix.shape[1])]
        raise ValueError(f"scores: expected a runs × tasks matrix, got shape {matrix.shape}")
    return [np.asarray(task, dtype=np.float64).ravel() for task in scores]


def iqm(scores: Scores) -> float:
    """The interquartile mean of all runs of all tasks: cut ``⌊0.25·n⌋`` from each end of the sorted
    scores, average the rest (rliable's ``aggregate_iqm``)."""
    flat = np.sort(np.concatenate(per_task(scores)))
    cut = int(0.25 * flat.size)
    return float(flat[cut:flat.size - cut].mean())


def median(scores: Scores) -> float:
    """The median over tasks of each task's mean score (rliable's ``aggregate_median``)."""
    return float(np.median([task.mean() for task in per_task(scores)]))


def mean(scores: Scores) -> float:
    """The mean over tasks of each task's mean score (rliable's ``aggregate_mean``)."""
    return float(np.mean([task.mean() for task in per_task(scores)]))


def optimality_gap(scores: Scores, gamma: float = 1.0) -> float:
    """``gamma`` less the mean score with every score above ``gamma`` counted as ``gamma``, tasks
    weighed equally (rliable's ``aggregate_optimality_gap``); lower is better."""
    return float(gamma - np.mean([np.minimum(task, gamma).mean() for task in per_task(scores)]))


STATISTICS: dict[str, Callable[[Scores], float]] = {
    "IQM": iqm,
    "median": median,
    "mean": mean,
    "optimality gap": optimality_gap,
}


@dataclass
class Estimate:
    """A statistic of one group's scores, with its bootstrap interval."""

    group: str
    statistic: str
    value: float
    low: float
    high: float
    tasks: int
    runs: int


def stratified_bootstrap(scores: Scores, statistic: Callable[[Scores], float],
                         reps: int = REPS, confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float]:
    """The percentile interval of ``statistic`` over resamples that redraw the runs within each task
    (rliable's ``StratifiedBootstrap``; equal to ``get_interval_estimates`` after ``np.random.seed(seed)``)."""
    # The legacy generator, not default_rng: its draws are the ones rliable makes, so the intervals
    # can be checked against rliable's exactly rather than statistically.
    rng = np.random.RandomState(seed)
    tasks = per_task(scores)
    values = np.empty(reps)
    if len({task.size for task in tasks}) == 1:
        matrix = np.stack(tasks, axis=1)
        runs, columns = matrix.shape
        each = np.arange(columns)
        for i in range(reps):
            values[i] = statistic(matrix[rng.choice(runs, (runs, columns), replace=True), each])
    else:
        for i in range(reps):
            values[i] = statistic([task[rng.choice(task.size, task.size, replace=True)] for task in tasks])
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
        tasks = [np.asarray(by_task[t], dtype=np.float64) for t in sorted(by_task)]
        runs = sum(task.size for task in tasks)
        for name, statistic in STATISTICS.items():
            low, high = stratified_bootstrap(tasks, statistic, reps=reps, seed=seed)
            out.append(Estimate(group, name, statistic(tasks), low, high, len(tasks), runs))
    return out
