"""The command line: the train → run directory → eval round trip, and one-line errors for bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ppokit.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--total-steps", "512", "--set", "num_envs=4", "--set", "num_steps=64", "--set", "num_minibatches=2",
        "--set", "num_epochs=2", "--set", "eval_episodes=3", "--no-progress"]


def _run(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "ppokit", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_train_writes_a_complete_run_directory_and_eval_reads_it(tmp_path):
    run = tmp_path / "run"
    result = _run("train", "CartPole-v1", "--run-dir", str(run), "--seed", "3", *TINY)
    assert result.returncode == 0, result.stderr
    assert f"run directory: {run}" in result.stdout
    assert "evaluation (3 episodes, deterministic): mean return" in result.stdout
    assert "with preset 'CartPole-v1'" in result.stderr

    config = (run / "config.yaml").read_text()
    assert "env_id: CartPole-v1" in config and "seed: 3" in config and "total_steps: 512" in config
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in rows] == [256, 512]
    for key in ("global_step", "episodic_return", "episodic_length", "sps", "policy_loss", "value_loss", "entropy",
                "approx_kl_k1", "approx_kl_k3", "clip_fraction", "explained_variance", "learning_rate",
                "clip_range", "kl_coef"):
        assert key in rows[-1], key
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("train/policy_loss")] == [256, 512]
    assert [e.value for e in events.Scalars("train/learning_rate")] == pytest.approx([r["learning_rate"] for r in rows])
    assert (run / "model" / "model.safetensors").is_file() and (run / "model" / "state.json").is_file()
    ev = json.loads((run / "eval.json").read_text())
    assert set(ev) >= {"mean_return", "std_return", "episodes", "deterministic"} and ev["episodes"] == 3

    again = _run("eval", str(run), "--episodes", "4", "--stochastic")
    assert again.returncode == 0, again.stderr
    assert json.loads((run / "eval.json").read_text()) == ev  # the run's own evaluation is kept
    (written,) = (run / "evals").glob("eval_*.json")
    assert str(written) in again.stdout
    ev2 = json.loads(written.read_text())
    assert ev2["episodes"] == 4 and ev2["deterministic"] is False
    assert ev["global_step"] == ev2["global_step"] == 512
    assert _run("eval", str(run), "--episodes", "1", "--out", str(tmp_path / "mine.json")).returncode == 0
    assert json.loads((tmp_path / "mine.json").read_text())["episodes"] == 1

    # A directory holding a run is never silently reused.
    clash = _run("train", "CartPole-v1", "--run-dir", str(run), *TINY)
    assert clash.returncode == 2 and "already holds a run" in clash.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "CartPol-v1"], "unknown env id 'CartPol-v1'"),
        (["train", "CartPole-v1", "--preset", "nope"], "unknown preset 'nope'"),
        (["train", "CartPole-v1", "--set", "learnig_rate=1"], "unknown config field 'learnig_rate'"),
        (["train", "CartPole-v1", "--set", "clip_range=-0.2"], "'clip_range' = -0.2 is invalid"),
        (["train", "CartPole-v1", "--set", "num_minibatches=3", "--set", "num_steps=512", "--set", "num_envs=4"], "does not divide the batch size"),
        (["train", "no_such_module:Env"], "cannot import module 'no_such_module'"),
        (["train", "CartPole-v1", "--total-steps", "3"], "less than one rollout"),
        (["eval", "/nonexistent/run"], "'/nonexistent/run' does not exist"),
        (["eval", "."], "holds no saved policy"),
    ],
)
def test_bad_input_gives_one_line_error_and_exit_2(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err


def test_bad_config_file_names_the_file_and_field(tmp_path, capsys):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("env_id: CartPole-v1\nnum_epochs: -1\n")
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "exp.yaml" in err and "'num_epochs' = -1" in err


def test_presets_lists_and_shows(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "CartPole-v1" in out and "Pendulum-v1" in out
    assert main(["presets", "Pendulum-v1"]) == 0
    assert "env_id: Pendulum-v1" in capsys.readouterr().out


def test_train_help_lists_config_fields(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "clip_range" in out and "gae_lambda" in out and "--set KEY=VALUE" in out


def test_eval_records_video(tmp_path):
    pytest.importorskip("moviepy")
    pytest.importorskip("pygame")
    run = tmp_path / "run"
    assert _run("train", "CartPole-v1", "--run-dir", str(run), *TINY).returncode == 0
    videos = tmp_path / "videos"
    result = _run("eval", str(run), "--episodes", "2", "--video", str(videos))
    assert result.returncode == 0, result.stderr
    files = sorted(videos.glob("*.mp4"))
    assert len(files) == 2 and all(f.stat().st_size > 1000 for f in files)
    (written,) = (run / "evals").glob("eval_*.json")
    assert json.loads(written.read_text())["episodes"] == 2


def test_mujoco_video_records_without_a_display(tmp_path):
    """No DISPLAY and no MUJOCO_GL, as on a server or in CI: ppokit renders offscreen through EGL."""
    pytest.importorskip("moviepy")
    pytest.importorskip("mujoco")
    from ppokit import PPO, ControlConfig

    PPO(ControlConfig(env_id="Hopper-v5", total_steps=256, num_envs=1, num_steps=256, num_minibatches=2,
                      eval_episodes=0, progress=False, tensorboard=False)).learn(run_dir=tmp_path / "run")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MUJOCO_GL", "PYOPENGL_PLATFORM")}
    result = subprocess.run([sys.executable, "-m", "ppokit", "eval", str(tmp_path / "run"), "--episodes", "1",
                             "--video", str(tmp_path / "videos")], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    (video,) = (tmp_path / "videos").glob("*.mp4")
    assert video.stat().st_size > 1000


@pytest.mark.parametrize("extra, expected", [
    ([], 2),                                            # the CartPole preset: 16 x 32 = 512 steps an update
    (["--set", "num_steps=64"], 1),                     # 1024 steps an update
    (["--set", "num_envs=1", "--set", "num_steps=100"], 11),
    (["--set", "eval_every=3"], 3),                     # said explicitly: kept
])
def test_stop_at_return_evaluates_about_every_thousand_steps_unless_told(extra, expected):
    from ppokit.cli.main import build_parser, resolve_train_config

    args = build_parser().parse_args(["train", "CartPole-v1", "--stop-at-return", "475", *extra])
    config, _ = resolve_train_config(args)
    assert config.stop_at_return == 475 and config.eval_every == expected


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["rlhf", "ppo", "--help"], ["resume", "--help"]])
def test_help_answers_without_importing_torch_or_gymnasium(args):
    code = ("import sys\nfrom ppokit.cli.main import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'gymnasium', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage: ppokit" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_a_nan_evaluation_is_reported_not_a_crash():
    from ppokit.cli.main import _eval_line

    line = _eval_line({"episodes": 3, "deterministic": True, "mean_return": None, "std_return": float("nan")})
    assert "not finite" in line


def test_interrupting_sft_at_once_points_at_its_checkpoints(monkeypatch, capsys):
    import ppokit.rlhf.supervised.sft as sft

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sft, "SFTTrainer", interrupted)
    assert main(["rlhf", "sft", "--model", "some/model", "--data", "x.jsonl"]) == 130
    err = capsys.readouterr().err
    assert "ppokit resume RUN_DIR" in err and "intact" in err


def test_python_dash_m_ppokit_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "ppokit", "presets"], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "CartPole-v1" in proc.stdout


def test_output_cut_short_by_its_reader_ends_quietly():
    """``ppokit presets | head -1``: the reader has closed the pipe; no traceback, the shell's SIGPIPE code."""
    read, write = os.pipe()
    os.close(read)  # every write to the pipe fails now, as after `head` exits
    try:
        proc = subprocess.run([sys.executable, "-m", "ppokit", "presets"], stdout=write, stderr=subprocess.PIPE,
                              text=True, cwd=ROOT, timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 141 and "Traceback" not in proc.stderr, proc.stderr
