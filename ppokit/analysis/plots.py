"""Pictures of runs (``ppokit plot RUN_DIR [RUN_DIR ...] -o FILE.png``), read from their metrics.jsonl.

Runs of one config that differ only in their seed are drawn as one curve: the mean across seeds,
with a band from the lowest to the highest seed, over the steps (or seconds) that every seed
reached. Control runs get the episode return against env steps and against wall time, and a row of
update diagnostics; RLHF PPO runs get the score and the KL to the reference over updates, and
score against KL (the reward/KL frontier). :func:`series` computes what is drawn, :func:`draw`
draws it, so what a picture shows can be checked against the runs.

Control runs on two or more tasks get a learning-curve panel per task and aggregate panels: each
run's final score (:func:`run_score`) normalised per task, and rliable's IQM, median, mean and
optimality gap of each group across tasks, with stratified-bootstrap 95 % intervals
(:mod:`ppokit.analysis.aggregate` says exactly what each one is).
The groups there are the values of ``aggregate_by`` (by default the config fields that differ
between runs of one task: what is being compared).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ppokit.analysis.aggregate import STATISTICS, Estimate, estimates, normalise
from ppokit.errors import ConfigError
from ppokit.io.atomic import atomic_write_bytes
from ppokit.io.run_info import metrics_rows, read_config

#: Config fields that do not change what a run learns: runs differing only in these are seeds of one curve.
NOT_THE_CONFIG = frozenset({"seed", "run_dir", "progress", "tensorboard", "checkpoint_every", "checkpoint_minutes",
                            "keep_checkpoints", "eval_episodes", "torch_threads", "device"})

#: (metric, panel title, x key) per front end; the first panels are the learning curves.
CONTROL_PANELS = (
    ("episodic_return", "episode return vs env steps", "global_step"),
    ("episodic_return", "episode return vs wall time (s)", "time_elapsed"),
    ("approx_kl_k3", "approx KL(old ‖ new), k3", "global_step"),
    ("clip_fraction", "clip fraction", "global_step"),
    ("entropy", "policy entropy", "global_step"),
    ("explained_variance", "explained variance", "global_step"),
    ("value_loss", "value loss", "global_step"),
    ("eval_return", "evaluation return vs env steps", "global_step"),
)
RLHF_PANELS = (
    ("score", "reward score vs PPO update", "update"),
    ("kl", "KL(policy ‖ reference) vs PPO update", "update"),
    ("score", "reward score vs KL (frontier)", "kl"),
)
POINTS = 200
AXIS_LABELS = {"global_step": "env steps", "time_elapsed": "seconds", "update": "PPO update", "kl": "KL (nats)"}


@dataclass
class Run:
    path: Path
    kind: str
    config: dict[str, Any]
    rows: list[dict[str, Any]]

    @property
    def task(self) -> str:
        return str(self.config.get("env_id") or self.config.get("policy"))


@dataclass
class Series:
    """One curve of one panel: a group's mean, and its band across seeds (equal to the mean for one run)."""

    label: str
    x: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    runs: int


def read_run(path: str | Path) -> Run:
    path = Path(path)
    config, kind = read_config(path)
    if kind not in ("control", "rlhf ppo"):
        raise ConfigError(f"{path}: a {kind} run has no PPO curves to plot")
    # The curves' x axis: a row without it (damage) is skipped, with the reader's warning.
    return Run(path, kind, config, metrics_rows(path / "metrics.jsonl", "global_step" if kind == "control" else "update"))


def run_score(run: Run) -> float | None:
    """A run's final score: its final evaluation (eval.json), else its last periodic evaluation,
    else the mean episode return over its last tenth of updates; None when it has none yet."""
    try:
        evaluation = json.loads((run.path / "eval.json").read_text(encoding="utf-8"))
        if isinstance(evaluation.get("mean_return"), (int, float)):
            return float(evaluation["mean_return"])
    except (OSError, ValueError, AttributeError):
        pass
    evals = [r["eval_return"] for r in run.rows if isinstance(r.get("eval_return"), (int, float))]
    if evals:
        return float(evals[-1])
    returns = [r["episodic_return"] for r in run.rows if isinstance(r.get("episodic_return"), (int, float))]
    tail = returns[-max(1, len(returns) // 10):]
    return float(np.mean(tail)) if tail else None


def group(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs by config less the seed (and fields that do not change learning), labelled by task, plus
    the fields that tell the groups of one task apart."""
    keyed: dict[str, list[Run]] = {}
    for run in runs:
        key = json.dumps({k: v for k, v in run.config.items() if k not in NOT_THE_CONFIG}, sort_keys=True, default=str)
        keyed.setdefault(key, []).append(run)
    labels = {}
    for key, members in keyed.items():
        task = members[0].task
        mine = json.loads(key)
        differing = _differing(mine, [json.loads(k) for k, m in keyed.items() if k != key and m[0].task == task])
        extra = ", ".join(f"{f}={mine.get(f)}" for f in differing[:3]) + (
            f", +{len(differing) - 3} more" if len(differing) > 3 else "")
        labels[key] = f"{task}" + (f" ({extra})" if extra else "") + f" · {len(members)} seed{'s' * (len(members) > 1)}"
    return {labels[k]: v for k, v in keyed.items()}


def _differing(mine: dict[str, Any], others: list[dict[str, Any]]) -> list[str]:
    return sorted({f for o in others for f in set(o) | set(mine) if o.get(f) != mine.get(f)})


def compared_fields(runs: list[Run]) -> list[str]:
    """The config fields that differ between runs of one task (outside NOT_THE_CONFIG)."""
    fields: set[str] = set()
    for task in {r.task for r in runs}:
        configs = [{k: v for k, v in r.config.items() if k not in NOT_THE_CONFIG} for r in runs if r.task == task]
        fields |= {f for c in configs for f in c if any(o.get(f) != c.get(f) for o in configs)}
    return sorted(fields)


def aggregate(runs: list[Run], by: list[str] | None = None, ranges: dict[str, tuple[float, float]] | None = None,
              reps: int = 2000) -> list[Estimate]:
    """rliable's IQM, median, mean and optimality gap of the runs' normalised final scores across tasks, per group of the
    ``by`` fields' values (default :func:`compared_fields`), with bootstrap intervals."""
    by = compared_fields(runs) if by is None else by
    scores: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        score = run_score(run)
        if score is None:
            continue
        label = ", ".join(f"{f}={run.config.get(f)}" for f in by) or "all runs"
        scores.setdefault(label, {}).setdefault(run.task, []).append(score)
    unknown = sorted(set(ranges or {}) - {r.task for r in runs})
    if unknown:
        raise ConfigError(f"plot: --score-range names {unknown[0]!r}, which no run trained on")
    return estimates(normalise(scores, ranges), reps=reps)


def _points(run: Run, metric: str, x_key: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(r[x_key], r[metric]) for r in run.rows
             if isinstance(r.get(metric), (int, float)) and isinstance(r.get(x_key), (int, float))
             and np.isfinite(r[metric])]
    if not pairs:
        return np.empty(0), np.empty(0)
    x, y = np.asarray(pairs, dtype=np.float64).T
    order = np.argsort(x, kind="stable")
    return x[order], y[order]


def series(groups: dict[str, list[Run]], metric: str, x_key: str) -> list[Series]:
    """One :class:`Series` per group that logged ``metric``: a run alone is drawn as logged; several
    are interpolated onto a common x grid up to the smallest x that all of them reached."""
    out = []
    for label, runs in groups.items():
        curves = [c for c in (_points(r, metric, x_key) for r in runs) if len(c[0])]
        if not curves:
            continue
        if len(curves) == 1:
            x, y = curves[0]
            out.append(Series(label, x, y, y, y, 1))
            continue
        start, end = max(c[0][0] for c in curves), min(c[0][-1] for c in curves)
        if x_key == "kl" or end <= start:  # no common axis: a frontier is drawn per run
            for x, y in curves:
                out.append(Series(label, x, y, y, y, 1))
            continue
        grid = np.linspace(start, end, POINTS)
        ys = np.stack([np.interp(grid, x, y) for x, y in curves])
        out.append(Series(label, grid, ys.mean(0), ys.min(0), ys.max(0), len(curves)))
    return out


Panel = tuple[str, str, "list[Series] | list[Estimate]"]


def panels(runs: list[Run], aggregate_by: list[str] | None = None,
           ranges: dict[str, tuple[float, float]] | None = None) -> list[Panel]:
    """(title, x label, curves or interval estimates) of every panel with data, in the order drawn."""
    kinds = {r.kind for r in runs}
    if len(kinds) > 1:
        raise ConfigError("plot: control and RLHF runs cannot share a picture; plot them separately")
    groups = group(runs)
    spec: tuple[tuple[str, str, str], ...] = CONTROL_PANELS if kinds == {"control"} else RLHF_PANELS
    tasks = sorted({r.task for r in runs})
    drawn: list[Panel] = []
    if kinds == {"control"} and len(tasks) > 1:  # returns of different tasks do not share an axis
        per_task = {t: {label: g for label, g in groups.items() if g[0].task == t} for t in tasks}
        drawn += [(f"{t}: episode return vs env steps", AXIS_LABELS["global_step"],
                   series(per_task[t], "episodic_return", "global_step")) for t in tasks]
        found = aggregate(runs, aggregate_by, ranges)
        normalised = "by --score-range" if ranges and set(ranges) >= set(tasks) else "0: worst, 1: best run of the task"
        drawn += [(f"{name} across {len(tasks)} tasks (95% CI)",
                   f"normalised final score ({normalised})" + ("; lower is better" if name == "optimality gap" else ""),
                   [e for e in found if e.statistic == name]) for name in STATISTICS]
        spec = tuple(p for p in spec if p[0] != "episodic_return")
    if kinds == {"rlhf ppo"}:
        spec += reward_source_panels(runs[0].config)
    drawn += [(title, AXIS_LABELS[x_key], series(groups, metric, x_key)) for metric, title, x_key in spec]
    return [panel for panel in drawn if panel[2]]


def reward_source_panels(config: dict[str, Any]) -> tuple[tuple[str, str, str], ...]:
    """With several reward sources, each one's mean score (``score_i``, logged before weighting)."""
    sources = config.get("rewards") or []
    weights = config.get("reward_weights") or [1.0] * len(sources)
    if len(sources) < 2:
        return ()
    return tuple((f"score_{i}", f"reward {i}: {'/'.join(Path(str(name)).parts[-2:])} (weight {w:g})", "update")
                 for i, (name, w) in enumerate(zip(sources, weights)))


def _draw_intervals(ax: Any, title: str, x_label: str, found: list[Estimate]) -> None:
    """One row per group: the estimate as a dot, its interval as a bar (rliable's interval plot)."""
    for i, e in enumerate(found):
        ax.plot([e.low, e.high], [i, i], color=f"C{i % 10}", lw=6, alpha=0.45, solid_capstyle="butt")
        ax.plot([e.value], [i], "o", color=f"C{i % 10}", ms=5)
    ax.set_yticks(range(len(found)), [f"{e.group}\n{e.runs} runs" for e in found], fontsize=7)
    ax.set_ylim(len(found) - 0.5, -0.5)  # first group on top
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(x_label, fontsize=9)
    ax.grid(alpha=0.3, axis="x")


def draw(figure_panels: list[Panel], out: str | Path) -> Path:
    """Draw the panels into a PNG at ``out`` (needs matplotlib: ``pip install 'ppokit[plot]'``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ConfigError(f"plot needs matplotlib: pip install 'ppokit[plot]' ({err})") from None
    if not figure_panels:
        raise ConfigError("plot: the runs have no metrics rows yet")
    columns = min(4, len(figure_panels))
    rows = -(-len(figure_panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.3 * rows), squeeze=False)
    colours: dict[str, Any] = {}
    for ax, (title, x_label, curves) in zip(axes.flat, figure_panels):
        if curves and isinstance(curves[0], Estimate):
            _draw_intervals(ax, title, x_label, [e for e in curves if isinstance(e, Estimate)])
            continue
        for s in curves:
            assert isinstance(s, Series)
            colour = colours.setdefault(s.label, f"C{len(colours) % 10}")
            frontier = "frontier" in title
            ax.plot(s.x, s.mean, color=colour, lw=1.4, marker="." if frontier else None, ms=3,
                    label=s.label if s.label not in [t.get_label() for t in ax.lines] else None)
            if s.runs > 1:
                ax.fill_between(s.x, s.low, s.high, color=colour, alpha=0.2, lw=0)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(x_label, fontsize=9)
        if title == "value loss":  # falls by orders of magnitude as the critic fits
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    if any(isinstance(s, Series) and s.runs > 1 for _, _, curves in figure_panels for s in curves):
        fig.suptitle("mean across seeds; band: lowest to highest seed", fontsize=10)
    for ax in list(axes.flat)[len(figure_panels):]:
        ax.axis("off")
    legend: dict[str, Any] = {}  # every curve's label once, from whichever panel drew it
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    handles, labels = list(legend.values()), list(legend)
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.04 + 0.02 * (len(labels) // 3), 1, 1))
    out = Path(out)
    # Drawn in memory, then written atomically: a reader never sees half a picture, and a device or
    # FIFO at ``out`` is refused rather than replaced or blocked on.
    picture = io.BytesIO()
    try:
        fig.savefig(picture, dpi=100, format=out.suffix[1:].lower() or "png")
    except ValueError as err:  # an extension matplotlib cannot write
        raise ConfigError(f"plot: cannot write {out}: {str(err).splitlines()[0]}") from None
    finally:
        plt.close(fig)
    atomic_write_bytes(out, picture.getvalue())
    return out


def plot_runs(run_dirs: list[str | Path], out: str | Path, aggregate_by: list[str] | None = None,
              ranges: dict[str, tuple[float, float]] | None = None) -> Path:
    """Read the runs, draw their panels into ``out``; returns the path."""
    return draw(panels([read_run(p) for p in run_dirs], aggregate_by, ranges), out)


def parse_score_ranges(pairs: list[str]) -> dict[str, tuple[float, float]]:
    """``["CartPole-v1=0:500", ...]`` → ``{"CartPole-v1": (0.0, 500.0)}``, or a ConfigError naming the bad one."""
    ranges = {}
    for pair in pairs:
        task, _, bounds = pair.rpartition("=")
        low, _, high = bounds.partition(":")
        try:
            lo, hi = float(low), float(high)
        except ValueError:
            lo = hi = float("nan")
        if not task or not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise ConfigError(f"--score-range {pair!r}: expected TASK=LOW:HIGH with finite LOW < HIGH")
        ranges[task] = (lo, hi)
    return ranges


def describe_estimates(figure_panels: list[Panel]) -> list[str]:
    """The aggregate panels as text lines: one per group and statistic, with the interval."""
    lines = []
    for title, x_label, items in figure_panels:
        found = [e for e in items if isinstance(e, Estimate)]
        if found:
            lines.append(f"{title}, {x_label}:")
            lines += [f"  {e.group}: {e.value:.3f} [{e.low:.3f}, {e.high:.3f}] ({e.runs} runs)" for e in found]
    return lines
