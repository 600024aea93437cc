"""``ppokit tune``: tiny Optuna studies on CartPole, end to end (a few 2k-step trials each)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from ppokit.cli import main as cli  # noqa: E402
from ppokit.cli.exit_codes import EXIT_USAGE  # noqa: E402
from ppokit.errors import ConfigError, PPOKitError, TrainingError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

#: A study small enough for a test: 2,048 steps of 4 envs x 64 steps per trial, evaluated halfway.
TINY = ["CartPole-v1", "--total-steps", "2048", "--set", "num_envs=4", "--set", "num_steps=64",
        "--set", "num_minibatches=4", "--eval-every", "1024", "--eval-episodes", "3", "--pruner", "none"]
SPACE = """\
learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
num_epochs: {type: int, low: 2, high: 6}
hidden_sizes: {type: categorical, choices: [[16], [32, 32]]}
gamma: 0.98
default_space: false
"""


def _wired() -> bool:
    parser = cli.build_parser()
    return any(isinstance(a, argparse._SubParsersAction) and "tune" in a.choices for a in parser._actions)


def _tune(*argv: str) -> int:
    """``ppokit tune ARGV``: through ``ppokit.cli.main.main`` once it has the subcommand; until then the
    same parser and one-line error handling around :mod:`ppokit.control.tune`."""
    if _wired():
        return cli.main(["tune", *argv])
    from ppokit.cli.tune import add_parser, run

    parser = argparse.ArgumentParser(prog="ppokit")
    add_parser(parser.add_subparsers(dest="command"))
    try:
        return run(parser.parse_args(["tune", *argv]))
    except PPOKitError as err:
        print(f"ppokit: error: {err}", file=sys.stderr)
        return EXIT_USAGE


def _space(tmp_path: Path, text: str = SPACE) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


def _study(name: str, db: Path):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}")


def test_a_tiny_study_writes_a_best_yaml_that_train_takes_and_that_reproduces_the_best_trial(tmp_path, capsys):
    out, db = tmp_path / "out", tmp_path / "study.db"
    code = _tune(*TINY, "--trials", "3", "--space", _space(tmp_path), "--out", str(out), "--study", "s",
                 "--storage", f"sqlite:///{db}")
    assert code == 0
    assert "best config" in capsys.readouterr().out
    study = _study("s", db)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    best = study.best_trial
    assert best.user_attrs["run_dir"] == str(out / f"trial_{best.number:04d}")
    assert all(len(t.intermediate_values) == 1 for t in study.trials)  # at 1,024 of 2,048 steps

    args = cli.build_parser().parse_args(["train", "--config", str(out / "best.yaml")])
    config, _ = cli.resolve_train_config(args)
    assert config.learning_rate == best.params["learning_rate"]
    assert config.num_epochs == best.params["num_epochs"]
    assert config.hidden_sizes == json.loads(best.params["hidden_sizes"])
    assert (config.gamma, config.num_envs, config.num_steps, config.total_steps) == (0.98, 4, 64, 2048)
    # Everything that shapes training equals what the best trial trained with.
    import yaml

    trained = yaml.safe_load((out / f"trial_{best.number:04d}" / "config.yaml").read_text())
    differ = {k for k, v in trained.items() if getattr(config, k) != v}
    assert differ <= {"run_dir", "progress", "tensorboard", "eval_episodes"}, differ
    rows = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert [r["number"] for r in rows] == [0, 1, 2] and rows[best.number]["value"] == best.value


def test_a_resumed_study_runs_only_the_missing_trials_and_refuses_other_settings(tmp_path, capsys):
    db = tmp_path / "study.db"
    common = [*TINY, "--space", _space(tmp_path), "--out", str(tmp_path / "out"), "--storage", f"sqlite:///{db}"]
    assert _tune(*common, "--trials", "2") == 0
    first = [(t.number, t.datetime_start) for t in _study("ppokit-CartPole-v1", db).trials]
    assert _tune(*common, "--trials", "3") == 0
    trials = _study("ppokit-CartPole-v1", db).trials
    assert len(trials) == 3 and [(t.number, t.datetime_start) for t in trials[:2]] == first
    assert _tune(*common, "--trials", "3") == 0  # nothing missing: no new trial
    assert len(_study("ppokit-CartPole-v1", db).trials) == 3
    assert "(0 run now)" in capsys.readouterr().out

    assert _tune(*common, "--trials", "4", "--set", "clip_range=0.3") == 2
    err = capsys.readouterr().err
    assert "clip_range = 0.2 (now 0.3)" in err and "Traceback" not in err
    assert len(_study("ppokit-CartPole-v1", db).trials) == 3


def test_a_trial_below_the_pruner_threshold_is_pruned_at_its_first_evaluation(tmp_path):
    from ppokit.control.tune.study import TuneSettings
    from ppokit.control.tune.sweep import tune

    base = _base()
    settings = TuneSettings(trials=2, out=str(tmp_path / "out"), eval_every=512, eval_episodes=2,
                            pruner=optuna.pruners.ThresholdPruner(lower=1e9))
    result = tune(base, {"default_space": False, "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3}},
                  settings)
    trials = result.study.trials
    assert [t.state.name for t in trials] == ["PRUNED", "PRUNED"]
    assert all(list(t.intermediate_values) == [512] for t in trials)
    # Stopped at once: no final model, no final evaluation.
    assert not any((Path(t.user_attrs["run_dir"]) / "eval.json").exists() for t in trials)
    assert result.best_file is None and not (tmp_path / "out" / "best.yaml").exists()
    rows = [json.loads(line) for line in result.trials_file.read_text().splitlines()]
    assert [r["state"] for r in rows] == ["PRUNED", "PRUNED"]


def test_an_invalid_sampled_config_fails_its_trial_and_the_study_goes_on(tmp_path):
    from ppokit.control.tune.study import TuneSettings
    from ppokit.control.tune.sweep import tune

    # Each value alone is valid with the base (checked when the space is read); together they are not.
    space = {"default_space": False, "adaptive_clip": {"type": "categorical", "choices": [True]},
             "clip_schedule": {"type": "categorical", "choices": ["linear"]},
             "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3}}
    result = tune(_base(clip_schedule="constant"), space, TuneSettings(trials=2, out=str(tmp_path / "out")))
    trials = result.study.trials
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    assert all("clip_schedule" in t.user_attrs["error"] for t in trials)


@pytest.mark.parametrize("text, message", [
    ("lerning_rate: {type: float, low: 0.1, high: 0.2}\n", "unknown config field 'lerning_rate'"),
    ("gamma: {type: uniform, low: 0.9, high: 0.99}\n", "field 'gamma': unknown type 'uniform'"),
    ("gamma: {type: float, low: 0.99, high: 0.9}\n", "field 'gamma': low (0.99) must be less than high (0.9)"),
    ("gamma: {type: float, low: 0.9}\n", "field 'gamma': a float entry needs the key 'high'"),
    ("gamma: {low: 0.9, high: 0.99}\n", "field 'gamma': missing key 'type'"),
    ("gamma: {type: float, low: 0.9, high: 1.5}\n", "field 'gamma': high 1.5 gives an invalid config"),
    ("num_epochs: {type: float, low: 1, high: 5}\n", "field 'num_epochs': a float entry cannot set this field"),
    ("seed: 3\n", "field 'seed' cannot be searched"),
])
def test_a_bad_space_file_is_one_line_naming_the_file_and_the_field(tmp_path, capsys, text, message):
    path = _space(tmp_path, text)
    assert _tune(*TINY, "--trials", "1", "--space", path, "--out", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ppokit: error: {path}: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out" / "trial_0000").exists()


def test_two_jobs_share_a_sqlite_study_in_the_output_directory(tmp_path):
    out = tmp_path / "out"
    code = _tune(*TINY, "--trials", "2", "--jobs", "2", "--space", _space(tmp_path), "--out", str(out))
    assert code == 0
    study = _study("ppokit-CartPole-v1", out / "study.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert len({t.user_attrs["pid"] for t in study.trials}) == 2  # one trial in each worker process
    assert (out / "best.yaml").is_file()


def test_an_error_in_a_worker_process_reaches_the_caller_as_one_line(tmp_path):
    from ppokit.configuration import to_dict
    from ppokit.control.tune.space import load_space
    from ppokit.control.tune.study import Job, TuneSettings
    from ppokit.control.tune.workers import run_workers

    base = _base()
    settings = TuneSettings(trials=1, jobs=2, out=str(tmp_path)).resolved(base)
    optuna.create_study(study_name=settings.study, storage=settings.storage, direction="maximize")
    space = load_space({"default_space": False, "gamma": 0.98}, base, discrete=True)
    broken = Job({**to_dict(base), "env_id": "NoSuchEnv-v0"}, space, settings)  # fails in the worker only
    with pytest.raises(TrainingError, match=r"^worker 1 of 1: .*NoSuchEnv-v0.*the same command runs the missing ones"):
        run_workers(broken, missing=1, existing=0)


def test_num_minibatches_is_fitted_to_the_batch():
    from ppokit.control.tune.space import fit_minibatches

    assert fit_minibatches({"num_envs": 4, "num_steps": 64, "num_minibatches": 32}) == {}
    assert fit_minibatches({"num_envs": 3, "num_steps": 10, "num_minibatches": 4}) == {"num_minibatches": 5}
    assert fit_minibatches({"num_envs": 3, "num_steps": 10, "num_minibatches": 8, "recurrent": "gru"}) == \
        {"num_minibatches": 3}


def test_the_default_space_fits_the_env_and_the_budget():
    from ppokit.control.tune.space import load_space

    discrete = load_space(None, _base(total_steps=2048), discrete=True)
    assert "ent_coef" in discrete and discrete["num_steps"].choices == (32, 64, 128)  # 4 updates of 4 x 128 fit
    assert "num_steps" not in load_space(None, _base(total_steps=600), discrete=True)  # only 32 fits: the base's
    continuous = load_space({"gamma": 0.9}, _base(total_steps=100_000), discrete=False)
    assert "ent_coef" not in continuous and continuous["gamma"].kind == "fixed"
    assert max(continuous["num_steps"].choices) * 4 * 4 <= 100_000


def test_without_optuna_the_error_says_how_to_install_it(monkeypatch):
    from ppokit.control.tune.study import require_optuna

    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(ConfigError, match=r"pip install 'ppokit\[tune\]'"):
        require_optuna()


def test_importing_the_subcommand_imports_neither_torch_nor_optuna():
    code = ("import sys\nimport ppokit.control.tune\n"
            "print(sorted(m for m in ('torch', 'gymnasium', 'optuna') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def _base(**changes):
    from ppokit.control.config import ControlConfig

    fields = {"env_id": "CartPole-v1", "total_steps": 2048, "num_envs": 4, "num_steps": 64, "num_minibatches": 4,
              "normalize_obs": False, "normalize_reward": False, "tensorboard": False, **changes}
    return ControlConfig(**fields)


def test_the_space_check_makes_the_env_as_a_trial_does():
    """A torch env class (made as one env), and an id with the config's preprocessing."""
    from ppokit.control.tune.sweep import _discrete_actions
    from ppokit.errors import EnvError

    assert _discrete_actions(_base(env_id="ppokit.envs.torch_cartpole:TorchCartPole"))
    assert not _discrete_actions(_base(env_id="ppokit.envs.torch_pendulum:TorchPendulum"))
    with pytest.raises(EnvError, match="env_preprocessing 'atari'"):
        _discrete_actions(_base(env_preprocessing="atari"))


@pytest.mark.parametrize("text", [
    "default_space: false\n",
    "default_space: false\ngamma: 0.98\nhidden_sizes: {type: categorical, choices: [[16]]}\n",
])
def test_a_space_with_nothing_to_search_is_refused_for_more_than_one_trial(tmp_path, capsys, text):
    """Before the fix, the trials all trained the same config without a word."""
    out = tmp_path / "out"
    assert _tune(*TINY, "--trials", "3", "--space", _space(tmp_path, text), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("ppokit: error: the search space has nothing to search") and err.count("\n") == 1, err
    assert "3 trials would all train the same config" in err
    assert not list(out.glob("trial_*"))


def test_the_default_space_keeps_the_fields_the_base_config_sets():
    """``--set num_steps=64`` was silently replaced by the default space's num_steps choices."""
    from ppokit.control.tune.space import load_space
    from ppokit.control.tune.sweep import user_chosen

    base = _base(total_steps=100_000, learning_rate=1e-3)
    chosen = user_chosen(base)
    assert {"num_steps", "learning_rate", "num_envs"} <= chosen and "gamma" not in chosen
    space = load_space(None, base, discrete=True, chosen=chosen)
    assert "num_steps" not in space and "learning_rate" not in space and "gamma" in space
    # An entry of the user's own space still searches the field.
    space = load_space({"num_steps": {"type": "categorical", "choices": [32, 64]}}, base, discrete=True, chosen=chosen)
    assert space["num_steps"].choices == (32, 64)


def test_a_trial_left_running_by_a_killed_process_is_marked_failed(tmp_path):
    """A worker killed mid-trial left it RUNNING for ever; the next run of the study (or the parent,
    for its own workers) marks it failed, so it is run again. A live process's trial is left alone."""
    import socket

    from ppokit.control.tune.study import TuneSettings, fail_abandoned

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    settings = TuneSettings(study="s", storage=f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(study_name="s", storage=settings.storage)
    for pid in (dead.pid, os.getpid()):
        trial = study.ask()
        trial.set_user_attr("pid", pid)
        trial.set_user_attr("host", socket.gethostname())
    assert fail_abandoned(settings) == [0]
    states = [t.state.name for t in optuna.load_study(study_name="s", storage=settings.storage).trials]
    assert states == ["FAIL", "RUNNING"]
    assert fail_abandoned(settings, {os.getpid()}) == [1]
