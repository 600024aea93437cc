"""Pictures of runs (``ppokit plot RUN_DIR [RUN_DIR ...] -o FILE.png``), read from their metrics.jsonl.

Runs of one config that differ only in their seed are drawn as one curve: the mean across seeds,
with a band from the lowest to the highest seed, over the steps (or seconds) that every seed
reached. Control runs get the episode return against env steps and against wall time, and a row of
update diagnostics; RLHF PPO runs get the score and the KL to the reference over updates, and
score against KL (the reward/KL frontier). :func:`series` computes what is drawn, :func:`draw`
draws it, so what a picture shows can be checked against the runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ppokit.errors import ConfigError
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
    return Run(path, kind, config, metrics_rows(path / "metrics.jsonl"))


def group(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs by config less the seed (and fields that do not change learning), labelled by task, plus
    the fields that tell the groups of one task apart."""
    keyed: dict[str, list[Run]] = {}
    for run in runs:
        key = json.dumps({k: v for k, v in run.config.items() if k not in NOT_THE_CONFIG}, sort_keys=True, default=str)
        keyed.setdefault(key, []).append(run)
    labels = {}
    for key, members in keyed.items():
        config = members[0].config
        task = str(config.get("env_id") or config.get("policy"))
        others = [json.loads(k) for k, m in keyed.items() if k != key and
                  str(m[0].config.get("env_id") or m[0].config.get("policy")) == task]
        mine = json.loads(key)
        differing = sorted({f for o in others for f in set(o) | set(mine) if o.get(f) != mine.get(f)})
        extra = ", ".join(f"{f}={mine.get(f)}" for f in differing[:3]) + (
            f", +{len(differing) - 3} more" if len(differing) > 3 else "")
        labels[key] = f"{task}" + (f" ({extra})" if extra else "") + f" · {len(members)} seed{'s' * (len(members) > 1)}"
    return {labels[k]: v for k, v in keyed.items()}


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


def panels(runs: list[Run]) -> list[tuple[str, str, list[Series]]]:
    """(title, x label, curves) of every panel with data, in the order drawn."""
    kinds = {r.kind for r in runs}
    if len(kinds) > 1:
        raise ConfigError("plot: control and RLHF runs cannot share a picture; plot them separately")
    groups = group(runs)
    spec = CONTROL_PANELS if kinds == {"control"} else RLHF_PANELS
    drawn = [(title, AXIS_LABELS[x_key], series(groups, metric, x_key)) for metric, title, x_key in spec]
    return [panel for panel in drawn if panel[2]]


def draw(figure_panels: list[tuple[str, str, list[Series]]], out: str | Path) -> Path:
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
        for s in curves:
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
    if any(s.runs > 1 for _, _, curves in figure_panels for s in curves):
        fig.suptitle("mean across seeds; band: lowest to highest seed", fontsize=10)
    for ax in list(axes.flat)[len(figure_panels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.04 + 0.02 * (len(labels) // 3), 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_runs(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Read the runs, draw their panels into ``out``; returns the path."""
    return draw(panels([read_run(p) for p in run_dirs]), out)
