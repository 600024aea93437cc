"""Aggregate scores across tasks: rliable's IQM, median, mean and optimality gap, its stratified
bootstrap intervals, and their panels in ``ppokit plot``."""

import json
import os

import numpy as np
import pytest

from ppokit.analysis.aggregate import (
    STATISTICS,
    estimates,
    iqm,
    mean,
    median,
    normalise,
    optimality_gap,
    stratified_bootstrap,
)
from ppokit.analysis.plots import aggregate, panels, read_run, run_score
from ppokit.cli.main import main
from ppokit.configuration import config_to_yaml
from ppokit.control.config import ControlConfig


def test_iqm_is_the_mean_of_the_middle_half_with_a_quarter_cut_from_each_end():
    assert iqm(np.arange(1.0, 9.0)) == (3 + 4 + 5 + 6) / 4  # n=8: 2 cut from each end
    assert iqm(np.array([100.0, 1, 2, 3, 4, 5, 6, 7, 8, -50])) == np.mean([2, 3, 4, 5, 6, 7])  # n=10: 2 cut each end
    assert iqm(np.array([[5.0, 1.0], [3.0, 2.0]])) == 2.5  # pooled over tasks and runs; n=4: 1 cut each end
    assert iqm(np.array([7.0])) == 7.0


def test_iqm_matches_scipys_trim_mean_as_rliable_computes_it():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n in (4, 5, 7, 10, 33):
        x = rng.normal(size=n) ** 3
        assert iqm(x) == pytest.approx(stats.trim_mean(x, proportiontocut=0.25, axis=None))


def test_the_bootstrap_redraws_runs_within_each_task_never_across():
    # Task A always scores 0, task B always 1: every stratified resample pools two of each, so the
    # mean never moves; a bootstrap over the pooled runs would often draw three of one task.
    low, high = stratified_bootstrap([np.zeros(2), np.ones(2)], np.mean, reps=500)
    assert low == high == 0.5


def test_the_interval_is_the_percentile_interval_of_the_resampled_statistic():
    # One task, runs scoring 0 and 1: a resample's mean is 0, 0.5 or 1 with probability 1/4, 1/2, 1/4.
    low, high = stratified_bootstrap([np.array([0.0, 1.0])], np.mean, reps=4000, seed=1)
    assert (low, high) == (0.0, 1.0)
    # Many runs: the interval narrows around the point estimate, roughly as 1/sqrt(n).
    rng = np.random.default_rng(0)
    sample = rng.normal(size=400)
    narrow = stratified_bootstrap([sample], np.mean, reps=1000)
    assert narrow[0] < sample.mean() < narrow[1]
    assert 0.15 < narrow[1] - narrow[0] < 0.25  # 2 * 1.96 / sqrt(400) = 0.196


def test_scores_are_normalised_per_task_by_the_given_range_or_the_runs_extremes():
    scores = {"a": {"T1": [0.0, 50.0], "T2": [-100.0]}, "b": {"T1": [100.0], "T2": [-300.0, -200.0]}}
    out = normalise(scores, {"T1": (0.0, 200.0)})
    np.testing.assert_allclose(out["a"]["T1"], [0.0, 0.25])
    np.testing.assert_allclose(out["b"]["T1"], [0.5])
    np.testing.assert_allclose(out["a"]["T2"], [1.0])  # T2: worst -300 → 0, best -100 → 1
    np.testing.assert_allclose(out["b"]["T2"], [0.0, 0.5])
    (iqm_a, *_), (iqm_b, *_) = (estimates({g: out[g]}, reps=50) for g in ("a", "b"))
    assert iqm_a.value == pytest.approx(iqm(np.array([0.0, 0.25, 1.0])))
    assert iqm_b.tasks == 2 and iqm_b.runs == 3


def _fake_run(path, env_id, seed, learning_rate, score):
    """A finished run's files, as a run writes them, with a chosen final evaluation."""
    path.mkdir(parents=True)
    config = ControlConfig(env_id=env_id, seed=seed, learning_rate=learning_rate, run_dir=str(path))
    (path / "config.yaml").write_text(config_to_yaml(config))
    rows = [{"global_step": 2048 * (i + 1), "update": i + 1, "episodic_return": score * (i + 1) / 4,
             "entropy": 0.5, "time_elapsed": float(i)} for i in range(4)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "eval.json").write_text(json.dumps({"mean_return": score, "episodes": 10}))
    return path


@pytest.fixture
def two_tasks(tmp_path):
    scores = {("CartPole-v1", 3e-4): [500.0, 400.0, 300.0], ("CartPole-v1", 1e-3): [100.0, 200.0, 150.0],
              ("Pendulum-v1", 3e-4): [-200.0, -250.0, -1000.0], ("Pendulum-v1", 1e-3): [-150.0, -400.0, -600.0]}
    return [_fake_run(tmp_path / f"{env}-{lr}-{seed}", env, seed, lr, s)
            for (env, lr), values in scores.items() for seed, s in enumerate(values)], scores


def test_runs_on_several_tasks_get_per_task_curves_and_iqm_median_mean_panels(two_tasks):
    dirs, scores = two_tasks
    runs = [read_run(d) for d in dirs]
    assert [run_score(r) for r in runs] == [s for values in scores.values() for s in values]
    titles = [t for t, _, _ in panels(runs)]
    assert titles[:6] == ["CartPole-v1: episode return vs env steps", "Pendulum-v1: episode return vs env steps",
                          "IQM across 2 tasks (95% CI)", "median across 2 tasks (95% CI)",
                          "mean across 2 tasks (95% CI)", "optimality gap across 2 tasks (95% CI)"]
    found = {(e.group, e.statistic): e for e in aggregate(runs, reps=200)}
    assert sorted({g for g, _ in found}) == ["learning_rate=0.0003", "learning_rate=0.001"]
    # CartPole spans 100..500, Pendulum -1000..-150: the lr=3e-4 runs normalise to these six scores.
    mine = np.array([1.0, 0.75, 0.5, 800 / 850, 750 / 850, 0.0])
    e = found[("learning_rate=0.0003", "IQM")]
    assert e.value == pytest.approx(iqm(mine)) and e.low <= e.value <= e.high and (e.tasks, e.runs) == (2, 6)
    # rliable's median: of the per-task means (CartPole 0.75, Pendulum 0.6078), not of the pooled runs.
    assert found[("learning_rate=0.0003", "median")].value == pytest.approx((0.75 + 1550 / 2550) / 2)
    assert found[("learning_rate=0.0003", "optimality gap")].value == pytest.approx(1 - (0.75 + 1550 / 2550) / 2)


def test_plot_prints_the_aggregate_and_takes_score_ranges_and_grouping(two_tasks, tmp_path, capsys):
    dirs, _ = two_tasks
    out = tmp_path / "agg.png"
    assert main(["plot", *map(str, dirs), "-o", str(out), "--score-range", "CartPole-v1=0:500",
                 "--score-range", "Pendulum-v1=-1600:0"]) == 0
    text = capsys.readouterr().out
    assert "IQM across 2 tasks (95% CI), normalised final score (by --score-range):" in text
    assert "learning_rate=0.0003:" in text and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", *map(str, dirs), "-o", str(out), "--aggregate-by", "seed", "--overwrite"]) == 0
    assert "seed=0:" in capsys.readouterr().out
    assert main(["plot", *map(str, dirs), "-o", str(out), "--score-range", "CartPole-v1=5:1", "--overwrite"]) == 2
    assert "--score-range 'CartPole-v1=5:1': expected TASK=LOW:HIGH with finite LOW < HIGH" in capsys.readouterr().err
    assert main(["plot", *map(str, dirs), "-o", str(out), "--score-range", "Hopper-v5=0:3000", "--overwrite"]) == 2
    assert "names 'Hopper-v5', which no run trained on" in capsys.readouterr().err


def test_the_median_and_mean_are_over_per_task_means_each_task_weighing_the_same():
    # Pooled, these nine runs have median 0.6; the per-task means are 0.3, 0.467 and 0.6.
    tasks = [np.array([0.0, 0.0, 0.9]), np.array([0.2, 0.2, 1.0]), np.array([0.6, 0.6, 0.6])]
    assert median(tasks) == pytest.approx(1.4 / 3)
    assert median(np.stack(tasks, axis=1)) == median(tasks)  # a runs × tasks matrix, as rliable takes
    # One run on a task and three on another: the task with more runs does not count more.
    assert mean([np.array([0.0]), np.ones(3)]) == 0.5
    assert optimality_gap([np.array([0.0]), np.array([2.0, 1.0, 0.5])]) == pytest.approx(1 - (0 + 2.5 / 3) / 2)
    assert optimality_gap(np.array([[0.5, 3.0]]), gamma=2.0) == pytest.approx(2 - 2.5 / 2)


def _rliable():
    """rliable's ``library`` and ``metrics``. CI installs the interop extra: there a missing or broken
    rliable fails the test; elsewhere it skips."""
    try:
        from rliable import library, metrics
    except Exception as err:  # absent, or its arch import broken by the pandas beside it
        if os.environ.get("CI"):
            raise
        pytest.skip(f"needs rliable (pip install 'ppokit[interop]'): {err}")
    return library, metrics


MATRICES = {  # runs × tasks, as rliable takes them
    "5 runs × 3 tasks": np.random.default_rng(0).uniform(size=(5, 3)),
    "3 runs × 5 tasks": np.random.default_rng(1).uniform(size=(3, 5)),
    "10 × 7, past 1": np.random.default_rng(2).normal(0.7, 0.4, size=(10, 7)),
    "ties": np.array([[0.0, 1.0, 0.5, 0.5], [1.0, 1.0, 0.5, 0.0], [0.0, 0.0, 0.5, 1.0]]),
    "one task": np.random.default_rng(3).uniform(size=(6, 1)),
    "one run": np.random.default_rng(4).uniform(size=(1, 4)),
}


@pytest.mark.parametrize("name", MATRICES)
def test_every_statistic_equals_rliables_on_the_same_matrix(name):
    _, metrics = _rliable()
    scores = MATRICES[name]
    theirs = {"IQM": metrics.aggregate_iqm, "median": metrics.aggregate_median, "mean": metrics.aggregate_mean,
              "optimality gap": metrics.aggregate_optimality_gap}
    assert set(theirs) == set(STATISTICS)
    for statistic, function in theirs.items():
        assert STATISTICS[statistic](scores) == pytest.approx(float(function(scores)), abs=1e-12, rel=0), statistic
        columns = [scores[:, j] for j in range(scores.shape[1])]  # as ppokit plot passes them: runs per task
        assert STATISTICS[statistic](columns) == pytest.approx(float(function(scores)), abs=1e-12, rel=0), statistic
    assert optimality_gap(scores, gamma=0.5) == pytest.approx(metrics.aggregate_optimality_gap(scores, 0.5), abs=1e-12)


@pytest.mark.parametrize("name", ["5 runs × 3 tasks", "3 runs × 5 tasks", "ties"])
def test_every_interval_equals_rliables_stratified_bootstrap_at_the_same_seed(name):
    library, metrics = _rliable()
    scores = MATRICES[name]
    theirs = {"IQM": metrics.aggregate_iqm, "median": metrics.aggregate_median, "mean": metrics.aggregate_mean,
              "optimality gap": metrics.aggregate_optimality_gap}
    # What ppokit plot computes, from the runs of each task, against rliable on the matrix.
    mine = {e.statistic: e for e in estimates({"g": {f"task{j}": scores[:, j] for j in range(scores.shape[1])}},
                                              reps=300, seed=7)}
    for statistic, function in theirs.items():
        np.random.seed(7)  # rliable's StratifiedBootstrap draws from NumPy's global generator
        point, interval = library.get_interval_estimates(
            {"g": scores}, lambda x, f=function: np.array([f(x)]), reps=300)
        e = mine[statistic]
        assert e.value == pytest.approx(float(point["g"][0]), abs=1e-12, rel=0), statistic
        np.testing.assert_allclose([e.low, e.high], interval["g"].ravel(), rtol=0, atol=1e-12, err_msg=statistic)
    np.random.seed(None)
