"""The ppokit side of each benchmark runs against the current API (tiny sizes; the anchors, which need
.venv-bench, are not run here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_control_benchmark_script_runs():
    result = _run("control_ppokit.py", "--task", "cartpole", "--steps", "1024")
    assert result["steps"] == 1024 and result["sps"] > 0


def test_rlhf_benchmark_script_runs():
    pytest.importorskip("transformers")
    result = _run("rlhf_ppokit.py", "--batch", "2", "--response-length", "4", "--epochs", "1", "--steps", "2",
                  "--threads", "1")
    assert len(result["s_per_step_all"]) == 2 and result["s_per_step_median"] > 0


def test_rlhf_gpu_benchmark_script_runs_at_a_small_size(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "rows.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "rlhf_gpu.py"), "--size", "small", "--device", "cpu",
                           "--batch", "2", "--prompt-length", "4", "--response-length", "4", "--epochs", "1",
                           "--minibatches", "1", "--steps", "2", "--threads", "1", "--variants", "base", "lora+gc",
                           "--no-trl", "--json", str(out)], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [(r["variant"], r["lora"], r["gradient_checkpointing"]) for r in rows] == [("base", False, False),
                                                                                       ("lora+gc", True, True)]
    assert all(set(r["phases_s"]) >= {"generate_s", "score_s", "forward_s", "epochs_s"} for r in rows)
    assert "| lora+gc | ppokit |" in proc.stdout


def test_defaults_benchmark_script_runs():
    result = _run("defaults_ppokit.py", "--env", "CartPole-v1", "--steps", "2048", "--set", "num_epochs=1")
    assert result["steps"] == 2048 and result["eval_return"] > 0 and result["set"] == ["num_epochs=1"]


def test_distributed_benchmark_script_runs():
    result = _run("distributed.py", "--tasks", "cartpole", "--repeats", "1", "--steps", "4096")
    assert result["cartpole"]["sps"]["1"] > 0 and result["cartpole"]["sps"]["2"] > 0


def test_distributed_profile_script_reports_each_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "distributed_profile.py"), "--nproc", "2", "--", "train",
         "CartPole-v1", "--total-steps", "2048", "--no-progress", "--set", "num_envs=4", "--set", "num_steps=128",
         "--set", "num_epochs=2", "--set", "num_minibatches=4", "--set", "eval_episodes=0",
         "--set", "tensorboard=false", "--run-dir", str(tmp_path / "run")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = sorted((json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")),
                  key=lambda row: row["rank"])
    assert [row["rank"] for row in rows] == [0, 1] and all(row["exit_code"] == 0 for row in rows), proc.stdout
    for row in rows:
        update = row["per_update"]
        assert row["updates"] == 2 and update["collect_s"] > 0 and update["run_epochs_s"] > 0, row
        # each of the 2 epochs × 4 minibatches exchanges its gradient once
        assert update["by_operation"]["mean_flat_"]["calls"] == 8, row
        assert update["collective_calls"] >= 8 and update["collective_bytes"] > 0, row


def test_purejaxrl_side_by_side_runs():
    """Both sides of benchmarks/vs_purejaxrl.py, tiny: every row trains the steps asked for and reports
    a return, so a row that silently trains nothing fails here. Needs JAX in .venv-bench."""
    if not list((ROOT / ".venv-bench").glob("lib/python*/site-packages/jax/__init__.py")):
        pytest.skip(".venv-bench has no JAX: bash benchmarks/make_bench_venv.sh")
    result = _run("vs_purejaxrl.py", "--quick", "--num-seeds", "2")
    summary, runs = result["summary"], result["runs"]
    one = ["PureJaxRL, 1 seed", "ppokit, 1 seed"]
    many = ["PureJaxRL, 2 seeds (vmap)", "ppokit, 2 seeds (sequential processes)"]
    if result["ppokit_has_seeds_flag"]:
        many.append("ppokit, 2 seeds (--seeds 1-2)")
        many.append("ppokit, 2 seeds (--seeds 1-2 --stack-updates)")
    else:
        assert any("no --seeds flag" in note for note in result["notes"])
    assert sorted(summary) == sorted(one + many)
    for name in one + many:
        assert summary[name]["failed"] == 0, summary[name]["error"]
        assert summary[name]["wall_s_median"] > 0 and summary[name]["final_return_mean"] > 0
    assert runs["PureJaxRL, 1 seed"][0]["steps_per_seed"] == 2048
    assert runs["ppokit, 1 seed"][0]["steps_per_seed"] == [2048]
    assert len(runs["PureJaxRL, 2 seeds (vmap)"][0]["final_return"]) == 2
    assert len(runs["ppokit, 2 seeds (sequential processes)"][0]["final_return"]) == 2


def test_phase_split_of_ppokit_adds_up(tmp_path):
    """ppokit's side of benchmarks/purejaxrl_phases.py, tiny: every phase is measured (none left at 0
    but compile, which ppokit has none of) and they add up to the timed process."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import purejaxrl_phases as phases
        from vs_purejaxrl import Runner
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    result = phases.ppokit_phases(Runner(0, 2048, tmp_path))
    assert "error" not in result, result.get("error")
    split = result["phases"]
    assert split["compile"] == 0.0
    for row in ("start-up (interpreter, imports, exit)", "env steps", "acting", "update (GAE + epochs)"):
        assert split[row] > 0, (row, split)
    parts = sum(v for k, v in split.items() if k != "whole process")
    assert parts == pytest.approx(result["timed_wall_s"], rel=1e-6)
    assert result["final_return"] is not None and split["whole process"] > 0


def test_phase_split_of_purejaxrl_adds_up():
    """Both sides of benchmarks/purejaxrl_phases.py at 2,048 steps. Needs JAX in .venv-bench."""
    if not list((ROOT / ".venv-bench").glob("lib/python*/site-packages/jax/__init__.py")):
        pytest.skip(".venv-bench has no JAX: bash benchmarks/make_bench_venv.sh")
    result = _run("purejaxrl_phases.py", "--repeats", "1", "--total-steps", "2048")
    (jax_run,) = result["results"]["purejaxrl"]
    assert sorted(jax_run["runs"]) == ["env", "full", "rollout"]
    assert all(run["steps_per_seed"] == 2048 for run in jax_run["runs"].values())
    assert jax_run["phases"]["compile"] > 0 and jax_run["phases"]["env steps"] > 0


def test_purejaxrl_script_times_stacked_seeds_without_jax():
    """The many-seeds rows alone (--no-purejaxrl): --seeds, --seeds --stack-updates and the sequential
    processes each train every seed the steps asked for."""
    jobs = ["--jobs", "2"] if len(os.sched_getaffinity(0)) >= 2 else []
    result = _run("vs_purejaxrl.py", "--quick", "--num-seeds", "2", "--parts", "many", "--no-purejaxrl", *jobs)
    rows = ["ppokit, 2 seeds (--seeds 1-2)", "ppokit, 2 seeds (--seeds 1-2 --stack-updates)",
            "ppokit, 2 seeds (sequential processes)"]
    if jobs:
        rows.append("ppokit, 2 seeds (--seeds 1-2 --jobs 2, on 2 cores)")
    assert result["ppokit_has_stack_flag"] and sorted(result["summary"]) == sorted(rows)
    for name in rows:
        assert result["summary"][name]["failed"] == 0, result["summary"][name]["error"]
        assert len(result["runs"][name][0]["final_return"]) == 2
    assert result["runs"][rows[1]][0]["steps_per_seed"] == [2048, 2048]


def test_torch_env_benchmark_script_runs():
    result = _run("torch_env_vs_rsl_rl.py", "--side", "ppokit", "--quick")
    assert result["library"] == "ppokit" and result["steps"] == 64 * 24 * 2 and result["sps"] > 0


@pytest.mark.parametrize("side,needs", [("ppokit-gym", "ale_py"), ("ppokit-envpool", "envpool")])
def test_atari_benchmark_script_runs(side, needs):
    pytest.importorskip(needs)
    result = _run("atari_throughput.py", "--side", side, "--steps", "1024")
    assert result["side"] == side and result["steps"] == 1024 and result["sps"] > 0


def test_env_step_benchmark_script_runs():
    result = _run("env_step.py", "--steps", "20", "--counts", "1,3", "--sync-envs", "Pendulum-v1")
    assert [r["envs"] for r in result["cartpole"]] == [1, 3]
    assert all(r["gymnasium_us"] > 0 and r["ppokit_us"] > 0 for r in result["cartpole"])
    assert result["sync"][0]["env"] == "Pendulum-v1" and result["sync"][0]["bare_us"] > 0


def test_maskable_benchmark_script_runs():
    pytest.importorskip("sb3_contrib")
    result = _run("maskable.py", "--steps", "1024", "--seeds", "0", "--eval-episodes", "1")
    rows = result["rows"]
    assert {(r["library"], r["task"]) for r in rows} == {(lib, task) for lib in ("ppokit", "sb3-contrib MaskablePPO")
                                                         for task in ("discrete", "multidiscrete")}
    assert all(r["train_invalid"] == 0 and r["eval_invalid"] == 0 and r["train_actions"] > 0 for r in rows)


def test_multiagent_benchmark_scripts_run():
    pytest.importorskip("mpe2")
    learning = _run("marl_mpe.py", "--task", "speaker_listener", "--algo", "mappo", "--seeds", "1", "--steps", "2048",
                    "--eval-episodes", "1")
    assert learning["groups"] == {"speaker": ["speaker_0"], "listener": ["listener_0"]}
    assert learning["steps"] == 2048 and learning["final_training_return"] < 0
    speed = _run("marl_ppokit.py", "--num-envs", "2", "--rollout", "64", "--total-steps", "384", "--warmup-steps", "128")
    assert speed["timed_steps"] == 256 and speed["sps"] > 0
    ceiling = _run("marl_env_limit.py", "--num-envs", "2", "--steps", "100")
    assert ceiling["steps"] >= 100 and ceiling["sps"] > 0


@pytest.mark.parametrize("algo,num_envs", [("mappo", 1), ("ippo", 3)])
def test_skrl_marl_anchor_runs(algo, num_envs):
    """skrl's side of the multi-agent throughput row, tiny, in .venv-bench: it trains the steps asked for and
    counts every 25-step simple_spread episode once, so the lock-step batch of copies (num_envs > 1) resets
    each copy exactly when its episode ends. Needs skrl and mpe2 in .venv-bench."""
    python = ROOT / ".venv-bench" / "bin" / "python"
    if not list((ROOT / ".venv-bench").glob("lib/python*/site-packages/skrl/__init__.py")):
        pytest.skip(".venv-bench has no skrl: bash benchmarks/make_bench_venv.sh")
    proc = subprocess.run(
        [str(python), str(ROOT / "benchmarks" / "marl_skrl_anchor.py"), "--algo", algo, "--num-envs", str(num_envs),
         "--rollout", "50", "--epochs", "1", "--minibatches", "2", "--total-steps", "300", "--warmup-steps", "150"],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    per_update = 50 * num_envs
    assert result["total_env_steps"] == (300 // per_update) * per_update
    assert result["timed_env_steps"] == result["total_env_steps"] - (150 // per_update) * per_update
    assert result["episodes"] == result["total_env_steps"] // 25
    assert result["env_steps_per_s"] > 0 and result["last100_mean_return_per_agent"] < 0


def test_atari_learning_script_reads_a_runs_curve(tmp_path, monkeypatch):
    """benchmarks/atari_learning.py: the command it runs sets only real config fields, and the summary
    reads a run's curve at the reference's marks (the training row at or before each) and its final
    evaluation. (A real run is ~90 minutes; the Atari preset's training is tested in tests/control.)"""
    import dataclasses

    from ppokit import ControlConfig

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import atari_learning
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    seen: list[list[str]] = []
    monkeypatch.setattr(atari_learning.subprocess, "run", lambda cmd, **kw: seen.append(cmd))
    atari_learning.train(1024, tmp_path / "run", 0, 1, 3)
    (cmd,) = seen
    fields = {f.name for f in dataclasses.fields(ControlConfig)}
    sets = [cmd[i + 1].split("=")[0] for i, arg in enumerate(cmd) if arg == "--set"]
    assert sets and set(sets) <= fields and "BreakoutNoFrameskip-v4" in cmd

    run = tmp_path / "run"
    run.mkdir()
    rows = [{"global_step": step, "episodic_return": step / 50_000, "time_elapsed": step / 200}
            for step in range(8192, 520_000, 8192)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "eval.json").write_text(json.dumps({"mean_return": 9.5, "std_return": 2.0, "returns": [7.5, 11.5]}))
    result = atari_learning.summary(run)
    last = rows[-1]["global_step"]
    assert last == 516_096 and list(result["curve"]) == [250_000, 500_000, last]
    assert result["curve"][250_000] == 245_760 / 50_000  # the last row at or before the mark
    assert "| 500,000 (2M) | 10.0 |" in atari_learning.table(result)
    assert "9.5 ± 2.0 over 2 games" in atari_learning.table(result)


def test_blas_threads_script_runs_both_sides_without_thread_variables():
    """benchmarks/blas_threads.py, tiny, this checkout on both sides: each side trains and is timed."""
    result = _run("blas_threads.py", "--before", str(ROOT), "--after", str(ROOT), "--rounds", "1", "--steps", "1024")
    assert set(result["times"]) == {"before", "after"} and all(len(v) == 1 and v[0] > 0 for v in result["times"].values())
