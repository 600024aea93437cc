"""Loading, evaluating or resuming a saved run never imports or calls code that the saved files name
unless the user allows it (issue 13, section 1). Every case runs in a fresh process with code that
leaves a trace file when it is imported or called, and checks the trace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ppokit import PPO, ControlConfig
from ppokit.errors import CheckpointError
from ppokit.io.checkpoints import RESUME_FILE, latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TRACE_ENV = "tests.trace_code:make_env"


def _run(args: list[str], trace: Path, code: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PPOKIT_TRACE": str(trace)}
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "ppokit", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def control_run(tmp_path_factory) -> Path:
    """A finished CartPole run whose model/ and checkpoint state.json now name the tracing env."""
    run = tmp_path_factory.mktemp("control") / "run"
    agent = PPO(ControlConfig(env_id="CartPole-v1", num_envs=2, num_steps=32, num_minibatches=2, num_epochs=1,
                              total_steps=128, progress=False, tensorboard=False, eval_episodes=0,
                              run_dir=str(run)))
    agent.learn()
    agent.close()
    for state_file in (run / "model" / "state.json", latest_checkpoint(run) / "state.json"):
        state = json.loads(state_file.read_text())
        state["config"]["env_id"] = TRACE_ENV
        state["config"]["total_steps"] = 256
        state_file.write_text(json.dumps(state))
    return run


def test_eval_of_a_model_naming_a_module_refuses_and_says_what_would_run(control_run, tmp_path):
    trace = tmp_path / "trace"
    proc = _run(["eval", str(control_run), "--episodes", "1"], trace)
    assert proc.returncode == 2, proc.stderr
    assert "import module 'tests.trace_code'" in proc.stderr and "--trust" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not trace.exists()


@pytest.mark.parametrize("consent", [["--trust"], ["--env", TRACE_ENV]])
def test_eval_runs_the_named_env_once_the_user_allows_it(control_run, tmp_path, consent):
    trace = tmp_path / "trace"
    proc = _run(["eval", str(control_run), "--episodes", "1", *consent], trace)
    assert proc.returncode == 0, proc.stderr
    assert "env made" in trace.read_text()


def test_resume_of_a_run_naming_a_module_refuses(control_run, tmp_path):
    trace = tmp_path / "trace"
    proc = _run(["resume", str(control_run), "--no-progress"], trace)
    assert proc.returncode == 2 and "import module 'tests.trace_code'" in proc.stderr, proc.stderr
    assert not trace.exists()


def test_the_python_api_refuses_too_until_trusted(control_run, tmp_path):
    trace = tmp_path / "trace"
    code = ("from ppokit import PPO\nfrom ppokit.errors import UntrustedCodeError\n"
            f"agent = PPO.load({str(control_run)!r})\n"
            "agent.predict([0.0, 0.0, 0.0, 0.0])  # acting needs no env\n"
            "try:\n    agent.evaluate(1)\nexcept UntrustedCodeError as err:\n    print('refused:', err)\n"
            f"open({str(trace)!r}, 'a').write('-- trust=True --\\n')\n"
            f"PPO.load({str(control_run)!r}, trust=True).evaluate(1)\n")
    proc = _run([], trace, code)
    assert proc.returncode == 0, proc.stderr
    assert "refused:" in proc.stdout
    lines = trace.read_text().splitlines()
    assert lines[:2] == ["-- trust=True --", "imported"] and "env made" in lines  # nothing ran before


def test_a_resume_file_cannot_put_data_where_the_env_keeps_code(tmp_path):
    run = tmp_path / "run"
    agent = PPO(ControlConfig(env_id="Pendulum-v1", num_envs=1, num_steps=32, num_minibatches=1, num_epochs=1,
                              total_steps=64, progress=False, tensorboard=False, eval_episodes=0, run_dir=str(run)))
    agent.learn()
    agent.close()
    file = latest_checkpoint(run) / RESUME_FILE
    state = json.loads(file.read_text())
    env = state["env"]
    while env["children"]:  # down to the innermost env
        child = next(iter(env["children"].values()))
        env = child[0] if isinstance(child, list) else child
    env["attrs"]["step"] = 1  # a method on the env class
    file.write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=r"would replace .*step, a method"):
        PPO.resume(run)


@pytest.fixture(scope="module")
def rlhf_run(tmp_path_factory, tiny_lm) -> Path:
    from ppokit.rlhf.config import RLHFConfig
    from ppokit.rlhf.ppo.trainer import RLHFTrainer
    from tests.rlhf.helpers import PROMPTS

    run = tmp_path_factory.mktemp("rlhf") / "run"
    data = run.parent / "prompts.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    config = RLHFConfig(policy=tiny_lm, data=str(data), rewards=["tests.rlhf.helpers:pleasant_minus_unpleasant"],
                        total_updates=1, batch_size=4, max_new_tokens=4, progress=False, tensorboard=False,
                        device="cpu", sample_every=0)
    RLHFTrainer(config, run_dir=run).learn()
    return run


def _edit_config(run: Path, **changes) -> Path:
    copy = run.parent / f"copy-{len(list(run.parent.iterdir()))}"
    import shutil

    shutil.copytree(run, copy)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config.update(changes, total_updates=2, run_dir=str(copy))
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    return copy


def test_rlhf_resume_refuses_a_reward_module_the_saved_config_names(rlhf_run, tmp_path):
    run = _edit_config(rlhf_run, rewards=["tests.trace_code:reward"])
    trace = tmp_path / "trace"
    proc = _run(["resume", str(run), "--no-progress"], trace)
    assert proc.returncode == 2, proc.stderr
    assert "reward 'tests.trace_code:reward' (imports module 'tests.trace_code'" in proc.stderr
    assert not trace.exists()
    proc = _run(["resume", str(run), "--no-progress", "--trust"], trace)
    assert proc.returncode == 0, proc.stderr
    assert "reward called" in trace.read_text()


def test_rlhf_resume_refuses_remote_code_the_saved_config_turns_on(rlhf_run, tmp_path):
    run = _edit_config(rlhf_run, trust_remote_code=True)
    proc = _run(["resume", str(run), "--no-progress"], tmp_path / "trace")
    assert proc.returncode == 2 and "trust_remote_code: true" in proc.stderr and "--trust" in proc.stderr


def test_the_resume_command_printed_at_an_interruption_names_the_module_env(tmp_path, capsys):
    """The command printed on Ctrl-C must work as shown: a 'module:Env' run's names the env again."""
    import signal

    run = tmp_path / "run"
    agent = PPO(ControlConfig(env_id="tests.envs:CountingEnv", num_envs=2, num_steps=16, num_minibatches=2,
                              num_epochs=1, total_steps=256, progress=False, tensorboard=False, eval_episodes=0,
                              run_dir=str(run)))

    def ctrl_c(record):
        if record["global_step"] >= 64:
            os.kill(os.getpid(), signal.SIGINT)

    from ppokit.errors import TrainingInterrupted

    with pytest.raises(TrainingInterrupted) as info:
        agent.learn(callback=ctrl_c)
    agent.close()
    assert info.value.resume_command == f"ppokit resume {run} --env tests.envs:CountingEnv"
    from ppokit.cli.main import main

    assert main([*info.value.resume_command.split()[1:], "--no-progress"]) == 0, capsys.readouterr().err


# ---------------------------------------------------------------------------------------- multi-agent runs

TRACE_PARALLEL_ENV = "tests.trace_code:make_parallel_env"


@pytest.fixture(scope="module")
def multiagent_run(tmp_path_factory) -> Path:
    """A finished multi-agent run whose saved states name the tracing PettingZoo env, and a group of
    seeds (train --seeds) whose seeds.json names it, holding that run as its seed 1."""
    from ppokit.multiagent import MultiAgentConfig, MultiAgentPPO

    root = tmp_path_factory.mktemp("multiagent")
    run = root / "run"
    agent = MultiAgentPPO(MultiAgentConfig(env_id="tests.multiagent.envs:leaky", critic="ippo", num_envs=2, num_steps=25,
                                           total_steps=100, progress=False, tensorboard=False, eval_episodes=0))
    agent.learn(run_dir=run)
    agent.close()
    for state_file in (run / "model" / "state.json", latest_checkpoint(run) / "state.json"):
        state = json.loads(state_file.read_text())
        state["config"]["env_id"] = TRACE_PARALLEL_ENV
        state_file.write_text(json.dumps(state))
    group = root / "group"
    shutil.copytree(run, group / "seed_1")
    config = {k: v for k, v in state["config"].items() if k not in ("seed", "run_dir")}
    (group / "seeds.json").write_text(json.dumps({"kind": "ppokit.seeds", "front_end": "multiagent", "seeds": [1],
                                                  "runs": ["seed_1"], "config": config}))
    return root


@pytest.mark.parametrize("command", [["eval", "{root}/run", "--episodes", "1"], ["resume", "{root}/run", "--no-progress"],
                                     ["resume", "{root}/group", "--no-progress", "--total-steps", "200"]])
def test_a_multiagent_run_naming_a_module_is_refused_until_allowed(multiagent_run, tmp_path, command):
    trace = tmp_path / "trace"
    proc = _run([a.format(root=multiagent_run) for a in command], trace)
    assert proc.returncode == 2 and "import module 'tests.trace_code'" in proc.stderr, proc.stderr
    assert "--trust" in proc.stderr and "Traceback" not in proc.stderr
    assert not trace.exists()


def test_exporting_a_multiagent_run_imports_nothing_it_names(multiagent_run, tmp_path):
    trace = tmp_path / "trace"
    proc = _run(["export", str(multiagent_run / "run"), "--format", "torchscript", "-o", str(tmp_path / "out")], trace)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "shared.pt").is_file() and not trace.exists()
