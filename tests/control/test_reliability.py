"""Resume, interruption, faults and safe loading of control runs (issue: nothing lost, nothing unsafe)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ppokit.cli.main import main
from ppokit.configuration import replace
from ppokit.control.agent import PPO
from ppokit.control.config import ControlConfig
from ppokit.errors import CheckpointError, ConfigError, EnvError, TrainingError
from ppokit.io.atomic import aside_name
from ppokit.io.checkpoints import checkpoint_dirs, latest_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def _config(env_id="CartPole-v1", **kw):
    base = {"env_id": env_id, "num_envs": 4, "num_steps": 32, "num_epochs": 2, "num_minibatches": 2,
            "total_steps": 4 * 32 * 6, "progress": False, "tensorboard": False, "eval_episodes": 2, "seed": 3}
    base.update(kw)
    return ControlConfig(**base)


def _same_weights(a: PPO, b: PPO) -> bool:
    sa, sb = a.policy.state_dict(), b.policy.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _stop_after(n):
    return lambda record: record["update"] < n


RESUME_CASES = {
    # CartPole's numpy-vectorised env, PPO-Penalty with the adaptive β.
    "cartpole-penalty": _config(loss="penalty", adaptive_kl=True),
    # A SyncVectorEnv of Pendulums, observation and reward normalisation, adaptive ε, linear lr.
    "pendulum-normalised": _config("Pendulum-v1", num_envs=2, num_steps=64, normalize_obs=True,
                                   normalize_reward=True, adaptive_clip=True, total_steps=2 * 64 * 6),
    # MuJoCo: the simulator's integration state travels in the checkpoint.
    "hopper": _config("Hopper-v5", num_envs=1, num_steps=128, normalize_obs=True, normalize_reward=True,
                      total_steps=128 * 5),
}


@pytest.mark.parametrize("name", list(RESUME_CASES))
def test_stop_and_resume_gives_bit_identical_weights(name, tmp_path):
    if name == "hopper":
        pytest.importorskip("mujoco")
    config = RESUME_CASES[name]
    straight = PPO(config).learn(run_dir=tmp_path / "straight")
    first = PPO(config).learn(run_dir=tmp_path / "split", callback=_stop_after(2))
    assert first.num_updates == 2 and not _same_weights(first, straight)
    resumed = PPO.resume(tmp_path / "split")
    assert resumed.global_step == first.global_step
    resumed.learn()
    assert resumed.global_step == straight.global_step
    assert _same_weights(resumed, straight)
    # Both runs wrote one metrics row per update, none twice.
    rows = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["update"] for r in rows] == list(range(1, straight.num_updates + 1))


def test_learn_resume_true_continues_a_run_and_starts_a_missing_one(tmp_path):
    config = _config()
    straight = PPO(config).learn(run_dir=tmp_path / "straight")
    # resume=True on a directory with no run starts it (so a job script can always pass it).
    PPO(config).learn(run_dir=tmp_path / "split", resume=True, callback=_stop_after(3))
    resumed = PPO(config).learn(run_dir=tmp_path / "split", resume=True)
    assert _same_weights(resumed, straight)


def test_resume_refuses_a_run_without_checkpoints_and_a_different_network(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    with pytest.raises(CheckpointError, match="no resumable checkpoint"):
        PPO.resume(run)
    # --resume on a run stopped before its first checkpoint starts it over, keeping nothing stale.
    (run / "metrics.jsonl").write_text('{"update": 99}\n')
    restarted = PPO(_config()).learn(run_dir=run, resume=True)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert restarted.num_updates == 6 and [r["update"] for r in rows] == list(range(1, 7))
    PPO(_config()).learn(run_dir=tmp_path / "ok", callback=_stop_after(1))
    with pytest.raises(CheckpointError, match="hidden_sizes"):
        PPO(_config(hidden_sizes=[16])).learn(run_dir=tmp_path / "ok", resume=True)


def test_envs_whose_state_cannot_be_saved_resume_with_fresh_episodes(tmp_path, caplog):
    config = _config(vectorization="async", num_envs=2)
    agent = PPO(config)
    agent.learn(run_dir=tmp_path / "run", callback=_stop_after(1))
    agent.close()
    caplog.set_level("WARNING", logger="ppokit")
    resumed = PPO.resume(tmp_path / "run")
    try:
        assert "not bit-identically" in caplog.text and "async" in caplog.text
        resumed.learn()
        assert resumed.global_step == config.total_steps
    finally:
        resumed.close()


def test_checkpoints_keep_the_last_k_and_the_best_evaluation(tmp_path):
    config = _config(checkpoint_every=1, keep_checkpoints=2, eval_every=2, total_steps=4 * 32 * 5)
    PPO(config).learn(run_dir=tmp_path / "run")
    names = [p.name for p in checkpoint_dirs(tmp_path / "run")]
    assert names == ["update_000000000004", "update_000000000005"]
    best = json.loads((tmp_path / "run" / "best" / "eval.json").read_text())
    evals = [json.loads(r).get("eval_return") for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert best["mean_return"] == max(e for e in evals if e is not None)
    assert PPO.load(tmp_path / "run" / "best").global_step == best["global_step"]


def test_stop_at_return_stops_and_saves_that_policy_and_its_evaluation(tmp_path):
    # Every CountingEnv episode returns exactly 3, so the first evaluation reaches the target.
    config = _config("tests.envs:CountingEnv", stop_at_return=3.0, eval_every=1, total_steps=4 * 32 * 10)
    agent = PPO(config).learn(run_dir=tmp_path / "run")
    assert agent.num_updates == 1
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert result["mean_return"] == 3.0 and result["global_step"] == agent.global_step
    assert PPO.load(tmp_path / "run").global_step == agent.global_step


# ----------------------------------------------------------------------------- non-finite values

def test_a_nan_loss_stops_before_the_weights_change_and_keeps_the_checkpoint(tmp_path):
    # 4 envs x 32 steps = 128 steps per update; the NaN rewards start in the second update.
    config = _config("tests.envs:NaNRewardEnv", env_kwargs={"nan_after": 40}, checkpoint_every=1,
                     vectorization="sync", eval_episodes=0)
    agent = PPO(config)
    with pytest.raises(TrainingError, match=r"update 2: .*non-finite loss.*intact"):
        agent.learn(run_dir=tmp_path / "run")
    last = latest_checkpoint(tmp_path / "run")
    assert last is not None and last.name == "update_000000000001"
    assert _same_weights(agent, PPO.load(last))


def test_skip_nonfinite_skips_and_counts_bad_minibatches(tmp_path):
    config = _config("tests.envs:NaNRewardEnv", env_kwargs={"nan_after": 40}, on_nonfinite="skip",
                     vectorization="sync", eval_episodes=0)
    agent = PPO(config).learn(run_dir=tmp_path / "run")
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["skipped_minibatches"] == 0
    assert sum(r["skipped_minibatches"] for r in rows[1:]) > 0
    assert all(torch.isfinite(p).all() for p in agent.policy.parameters())
    # Updates that skipped most of their minibatches say so in their row, not only in a counter.
    mostly_skipped = [r for r in rows if r["skipped_minibatches"] > 0.1 * (r["skipped_minibatches"] + r["minibatch_steps"])]
    assert mostly_skipped and all(any("were skipped" in w for w in r["warnings"]) for r in mostly_skipped)


# ----------------------------------------------------------------------------- faults

@pytest.mark.parametrize("mode, expected", [("raise", r"environment worker 0 \(of 2\) failed: RuntimeError: simulator diverged"),
                                            ("exit", r"environment worker 0 \(exit code 3\).* died during step")])
def test_a_crashing_async_worker_is_reported_with_its_index(mode, expected, tmp_path):
    config = _config("tests.envs:CrashingEnv", env_kwargs={"mode": mode, "crash_at": 10}, num_envs=2,
                     vectorization="async")
    agent = PPO(config)
    try:
        with pytest.raises(EnvError, match=expected):
            agent.learn(run_dir=tmp_path / "run")
    finally:
        agent.close()


def _cli(*args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "ppokit", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, **kwargs)


def test_cli_reports_a_crashed_worker_in_one_line(tmp_path):
    proc = _cli("train", "tests.envs:CrashingEnv", "--run-dir", str(tmp_path / "run"), "--no-progress",
                "--set", "vectorization=async", "--set", "num_envs=2", "--set", "num_steps=16",
                "--set", "num_minibatches=1", "--total-steps", "64")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "environment worker 0 (of 2) failed" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- interruption

TRAIN_ARGS = ["CartPole-v1", "--no-progress", "--total-steps", str(4 * 32 * 60), "--set", "num_envs=4",
              "--set", "num_steps=32", "--set", "num_epochs=2", "--set", "num_minibatches=2",
              "--set", "tensorboard=false", "--set", "eval_episodes=1", "--seed", "5"]


def _wait_for_updates(run_dir: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("training did not start")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_checkpoints_and_resume_matches_the_uninterrupted_run(sig, tmp_path):
    run = tmp_path / "run"
    proc = _cli("train", *TRAIN_ARGS, "--run-dir", str(run))
    _wait_for_updates(run, 3, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert f"ppokit resume {run}" in err and "Traceback" not in err
    stopped_at = PPO.resume(run).num_updates
    assert 3 <= stopped_at < 60

    assert main(["resume", str(run), "--no-progress"]) == 0
    assert main(["train", *TRAIN_ARGS, "--run-dir", str(tmp_path / "straight")]) == 0
    assert _same_weights(PPO.load(run), PPO.load(tmp_path / "straight"))


def test_a_second_ctrl_c_stops_at_once_and_leaves_the_checkpoints_loadable(tmp_path):
    run = tmp_path / "run"
    proc = _cli("train", *TRAIN_ARGS, "--run-dir", str(run), "--set", "checkpoint_every=1")
    _wait_for_updates(run, 3, proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err
    PPO.resume(run)  # the latest complete checkpoint loads


KILL_SCRIPT = """
import sys
from ppokit.control.config import ControlConfig
from ppokit.control.agent import PPO
from ppokit.io.checkpoints import latest_checkpoint
run = sys.argv[1]
if latest_checkpoint(run) is None:
    agent = PPO(ControlConfig(env_id="CartPole-v1", num_envs=2, num_steps=16, num_minibatches=1, total_steps=32,
                          progress=False, tensorboard=False, eval_episodes=0, keep_checkpoints=2))
    agent.learn(run_dir=run)
else:
    agent = PPO.resume(run)
print("ready", flush=True)
while True:  # save for ever; the test kills this process at a random moment
    agent.global_step += 1
    agent.save_checkpoint()
    agent.save(agent.run_dir / "model")
"""


def test_sigkill_during_saves_always_leaves_a_loadable_checkpoint(tmp_path):
    run = tmp_path / "run"
    script = tmp_path / "saver.py"
    script.write_text(KILL_SCRIPT)
    rng = random.Random(0)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    steps = []
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, str(script), str(run)], stdout=subprocess.PIPE, text=True, env=env)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        agent = PPO.resume(run)  # the newest complete checkpoint
        PPO.load(run)  # and the model directory, replaced in place on every save
        steps.append(agent.global_step)
    assert steps == sorted(steps) and steps[-1] > steps[0]


def test_a_kill_between_the_renames_of_a_rewritten_checkpoint_leaves_it_loadable(tmp_path):
    """The moment test_sigkill_during_saves hits by chance, made certain: a checkpoint rewritten under
    its own name, with the old copy moved aside and the new one not yet moved in."""
    run = tmp_path / "run"
    PPO(_config(eval_episodes=0)).learn(run_dir=run, callback=_stop_after(1))
    checkpoint = latest_checkpoint(run)
    assert checkpoint is not None
    os.replace(checkpoint, aside_name(checkpoint))
    assert latest_checkpoint(run) == checkpoint  # put back, not dropped as a leftover
    agent = PPO.resume(run)
    assert agent.num_updates == 1
    agent.save_checkpoint()  # and the next save (which prunes leftovers) keeps it
    assert [p.name for p in checkpoint_dirs(run)] == [checkpoint.name]


# ----------------------------------------------------------------------------- bad checkpoints

class _RunsCode:
    """Unpickling this calls Path.touch: any code could stand there."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_checkpoint_holding_a_pickled_object_is_refused_not_run(tmp_path):
    PPO(_config()).learn(run_dir=tmp_path / "run", callback=_stop_after(1))
    checkpoint = latest_checkpoint(tmp_path / "run")
    marker = tmp_path / "code_ran"
    torch.save({"state": {}, "param_groups": [], "payload": _RunsCode(str(marker))}, checkpoint / "optimizer.pt")
    with pytest.raises(CheckpointError, match="refused to load"):
        PPO.resume(tmp_path / "run")
    assert not marker.exists()
    assert main(["resume", str(tmp_path / "run")]) == 2
    assert not marker.exists()


@pytest.mark.parametrize("damage, message", [
    ("truncate-weights", "not a readable safetensors file"),
    ("format", "checkpoint format 99 is not supported"),
    ("resume-json", "unreadable resume state"),
    ("resume-format", "resume format 7 is not supported"),
    ("collector", "bad or incompatible resume state"),
])
def test_damaged_checkpoints_give_clear_errors(damage, message, tmp_path, capsys):
    PPO(_config()).learn(run_dir=tmp_path / "run", callback=_stop_after(1))
    checkpoint = latest_checkpoint(tmp_path / "run")
    if damage == "truncate-weights":
        data = (checkpoint / "model.safetensors").read_bytes()
        (checkpoint / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "format":
        state = json.loads((checkpoint / "state.json").read_text())
        state["format"] = 99
        (checkpoint / "state.json").write_text(json.dumps(state))
    elif damage == "resume-json":
        (checkpoint / "resume.json").write_text('{"kind": "ppokit.control", "form')
    else:
        state = json.loads((checkpoint / "resume.json").read_text())
        if damage == "resume-format":
            state["format"] = 7
        else:
            del state["collector"]
        (checkpoint / "resume.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=message):
        PPO.resume(tmp_path / "run")
    assert main(["resume", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_saved_model_does_not_load_into_a_different_network(tmp_path):
    PPO(_config()).learn(run_dir=tmp_path / "run", callback=_stop_after(1))
    with pytest.raises(CheckpointError, match="do not fit the configured network"):
        PPO.load(tmp_path / "run", hidden_sizes=[8, 8])


def test_cli_resume_of_a_missing_directory_is_a_one_line_error(tmp_path, capsys):
    assert main(["resume", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_learning_more_in_the_same_process_starts_a_new_run_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    agent = PPO(_config(total_steps=4 * 32 * 2))
    agent.learn()
    first = agent.run_dir
    agent.learn(total_steps=4 * 32 * 4)
    assert agent.run_dir != first and agent.global_step == 4 * 32 * 4


def test_env_state_with_non_string_keys_is_saved_and_resumed_exactly(tmp_path):
    """Dicts keyed by numbers or tuples are env state too: captured, not mistaken for constants."""
    from ppokit.control.envs.state import capture_env_state

    config = ControlConfig(env_id="tests.envs:KeyedMemoryEnv", num_envs=2, num_steps=16, num_minibatches=2,
                           num_epochs=1, total_steps=2 * 16 * 4, progress=False, tensorboard=False, eval_episodes=0,
                           vectorization="sync")
    probe = PPO(replace(config, run_dir=str(tmp_path / "probe")))
    state, why = capture_env_state(probe.env)
    assert why is None and state is not None
    probe.close()
    straight = PPO(replace(config, run_dir=str(tmp_path / "straight"))).learn()
    PPO(replace(config, run_dir=str(tmp_path / "split"))).learn(callback=_stop_after(2))
    resumed = PPO.resume(tmp_path / "split", trust=True).learn()  # our own env module: we vouch for it
    assert _same_weights(resumed, straight)
    inner = [e.unwrapped for e in resumed.env.envs]
    assert [e.counts for e in inner] == [e.unwrapped.counts for e in straight.env.envs]
    assert [e.pairs for e in inner] == [e.unwrapped.pairs for e in straight.env.envs]


def test_resume_can_extend_a_finished_run(tmp_path):
    """--resume --total-steps N on a finished run trains on to N (issue 13, section 3)."""
    run = tmp_path / "run"
    PPO(_config()).learn(run_dir=run)
    done = json.loads((run / "model" / "state.json").read_text())["global_step"]
    more = PPO(replace(_config(), total_steps=done + 2 * 4 * 32)).learn(run_dir=run, resume=True)
    assert more.global_step == done + 2 * 4 * 32
    again = PPO.resume(run, total_steps=done + 4 * 4 * 32).learn()
    assert again.global_step == done + 4 * 4 * 32
    assert "total_steps: " + str(done + 4 * 4 * 32) in (run / "config.yaml").read_text()
    assert main(["resume", str(run), "--total-steps", str(done + 5 * 4 * 32), "--no-progress"]) == 0


def test_resume_refuses_a_changed_setting_and_records_allowed_changes_truthfully(tmp_path):
    run = tmp_path / "run"
    base = _config("Pendulum-v1", normalize_obs=True, num_envs=2)
    PPO(base).learn(run_dir=run, callback=_stop_after(2))
    for changed, field in (({"normalize_obs": False}, "normalize_obs"), ({"learning_rate": 0.1}, "learning_rate"),
                           ({"gamma": 0.5}, "gamma")):
        with pytest.raises(CheckpointError, match=f"{field} = .* cannot change on resume"):
            PPO(replace(base, **changed)).learn(run_dir=run, resume=True)
        with pytest.raises(ConfigError, match=f"{field} shaped the run"):
            PPO.resume(run, **changed)
    resumed = PPO(replace(base, eval_episodes=3, checkpoint_every=1)).learn(run_dir=run, resume=True)
    recorded = (run / "config.yaml").read_text()
    assert "eval_episodes: 3" in recorded and "checkpoint_every: 1" in recorded
    assert resumed.obs_rms is not None and (run / "model" / "model.safetensors").exists()


def test_two_processes_cannot_write_one_run_directory(tmp_path):
    from ppokit.io.lock import RunLock

    run = tmp_path / "run"
    run.mkdir()
    holder = RunLock(run)  # another writer, as far as flock is concerned
    try:
        with pytest.raises(CheckpointError, match=r"in use by another ppokit process \(pid \d+\)"):
            PPO(_config()).learn(run_dir=run)
        assert not (run / "metrics.jsonl").exists()
    finally:
        holder.release()
    PPO(_config()).learn(run_dir=run)  # free again


def test_non_finite_weights_are_refused_at_load(tmp_path):
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    PPO(_config()).learn(run_dir=run)
    file = run / "model" / "model.safetensors"
    tensors = load_file(str(file))
    name = next(k for k in tensors if k.startswith("policy."))
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(file))
    with pytest.raises(CheckpointError, match=f"non-finite values .* in {name}"):
        PPO.load(run)
    assert main(["eval", str(run)]) == 2


def test_settings_that_train_something_else_than_asked_are_said(tmp_path, caplog):
    caplog.set_level("INFO", logger="ppokit")
    PPO(_config(total_steps=4 * 32 * 2 + 100, num_minibatches=128)).learn(run_dir=tmp_path / "run")
    assert "is not a whole number of rollouts" in caplog.text and f"{4 * 32 * 2} steps will be trained" in caplog.text
    assert "minibatches of 1 sample" in caplog.text and "policy cannot learn" in caplog.text


def test_files_ppokit_writes_honour_the_umask(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        PPO(_config()).learn(run_dir=tmp_path / "run")
    finally:
        os.umask(old)
    model = tmp_path / "run" / "model"
    assert stat.S_IMODE(model.stat().st_mode) == 0o755
    assert stat.S_IMODE((model / "state.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "run" / "config.yaml").stat().st_mode) == 0o644
