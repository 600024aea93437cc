"""The ppokit commands on multi-agent runs: train (one seed, --seeds, presets), info, eval, resume,
export (one file per policy group, checked with onnxruntime against predict), plot, trackers, and
the one-line refusals. Runs in process, with tiny budgets."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ppokit.cli.main import main
from ppokit.cli.train_config import MULTIAGENT_FIELDS, is_multiagent
from tests.io.test_outputs import BAD_TARGETS, Writer, snapshot

TINY = ["--total-steps", "200", "--set", "num_envs=2", "--set", "num_steps=25", "--set", "eval_episodes=1",
        "--no-progress", "--set", "tensorboard=false"]
LEAKY = "tests.multiagent.envs:leaky"


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(code: int, err: str, message: str) -> None:
    """Exit 2 and one error line saying ``message`` (info lines before it are fine), no traceback."""
    errors = [line for line in err.splitlines() if line.startswith("ppokit: error: ")]
    assert code == 2 and len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished IPPO run on the leaky env: a shared policy with the agent-id input, two checkpoints."""
    run_dir = tmp_path_factory.mktemp("ma") / "run"
    assert main(["train", LEAKY, *TINY, "--set", "critic=ippo", "--set", "agent_id=true", "--set", "checkpoint_every=2",
                 "--run-dir", str(run_dir)]) == 0
    return run_dir


def test_the_multiagent_fields_are_the_ones_multiagent_config_adds():
    from ppokit.control.config import ControlConfig
    from ppokit.multiagent import MultiAgentConfig

    added = {f.name for f in dataclasses.fields(MultiAgentConfig)} - {f.name for f in dataclasses.fields(ControlConfig)}
    assert MULTIAGENT_FIELDS == added


@pytest.mark.parametrize("env_id,fields,expected", [
    ("mpe2.simple_spread_v3", (), True),                      # PettingZoo's own form: a module path
    ("pettingzoo.classic.connect_four_v3", (), True),
    ("mpe2:simple_spread_v3", (), True),                      # module:attr, the attr a (sub)module
    (LEAKY, (), False),                                       # a factory: control's unless a field says so
    (LEAKY, ("critic",), True),
    (LEAKY, ("normalize_value", "num_envs"), True),
    ("CartPole-v1", (), False),
    ("ALE/Pong-v5", (), False),
    ("minigrid:MiniGrid-Empty-5x5-v0", (), False),            # Gymnasium's 'module:Env-v0'
    ("gymnasium.envs.classic_control.cartpole:CartPoleEnv", (), False),
    ("nosuchmodule:thing", (), False),                        # control names the import error
])
def test_one_place_decides_the_front_end(env_id, fields, expected):
    assert is_multiagent(env_id, fields) is expected


def test_train_info_eval_resume_export_plot(run, tmp_path, capsys):
    code, out, err = _run(["info", str(run)], capsys)
    assert code == 0
    assert f"{run}: multi-agent PPO (IPPO) on {LEAKY}" in out
    assert "policies: shared -> early, late, steady" in out and "state: finished" in out

    # eval: the env module is imported only with consent, as for control
    code, out, err = _run(["eval", str(run), "--episodes", "2"], capsys)
    _one_line(code, err, "--trust")
    code, out, err = _run(["eval", str(run), "--episodes", "2", "--env", LEAKY, "--out", str(tmp_path / "e.json")], capsys)
    assert code == 0 and "per agent: early" in out
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["episodes"] == 2 and set(result["agent_returns"]) == {"early", "late", "steady"}

    # resume past the run's end: from its latest checkpoint, to the new budget
    code, out, err = _run(["resume", str(run), "--total-steps", "300", "--trust", "--no-progress"], capsys)
    assert code == 0, err
    assert "resuming" in err and json.loads((run / "model" / "state.json").read_text())["global_step"] == 300

    # plot draws it as a control run
    code, out, err = _run(["plot", str(run), "-o", str(tmp_path / "curves.png")], capsys)
    assert code == 0 and (tmp_path / "curves.png").stat().st_size > 0


def test_export_writes_each_group_and_onnxruntime_acts_as_predict(run, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    from ppokit.multiagent import MultiAgentPPO

    out_dir = tmp_path / "policies"
    code, out, err = _run(["export", str(run), "-o", str(out_dir)], capsys)
    assert code == 0, err
    listing = json.loads((out_dir / "policies.json").read_text())
    assert listing["groups"] == [{"group": "shared", "file": "shared.onnx", "agents": ["early", "late", "steady"],
                                  "inputs": ["obs", "agent_id"]}]
    agent = MultiAgentPPO.load(run, trust=True)
    session = ort.InferenceSession(str(out_dir / "shared.onnx"))
    rng = np.random.default_rng(0)
    obs = rng.normal(0, 3, (12, 3)).astype(np.float32)
    slots = np.arange(12) % 3
    action, = session.run(None, {"obs": obs, "agent_id": np.eye(3, dtype=np.float32)[slots]})
    expected = [agent.predict({["early", "late", "steady"][s]: o})[["early", "late", "steady"][s]]
                for o, s in zip(obs, slots)]
    assert action.tolist() == [int(a) for a in expected]

    # the directory holds files now: replaced only with --overwrite
    code, out, err = _run(["export", str(run), "-o", str(out_dir)], capsys)
    _one_line(code, err, "--overwrite")


@pytest.mark.parametrize("target", list(BAD_TARGETS))
def test_export_refuses_every_bad_target_and_changes_nothing(target, run, tmp_path, capsys):
    """The generated output check (tests/io/test_outputs.py) for a multi-agent export's directory."""
    writer = Writer("export -o DIR", "dir", lambda r, t: ["export", str(r), "--format", "torchscript", "-o", str(t)],
                    True)
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    path, extra = BAD_TARGETS[target](tmp_path, copy, writer)
    if path is None:
        pytest.skip("not a bad target for this writer")
    before = snapshot(tmp_path)
    code, out, err = _run([*writer.argv(copy, path), *extra], capsys)
    assert code == 2 and err.startswith("ppokit: error: ") and err.count("\n") == 1 and str(path) in err, err
    assert snapshot(tmp_path) == before


def test_separate_policies_export_one_file_each_and_log_each_group(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, out, err = _run(["train", "tests.multiagent.envs:mixed", *TINY, "--set", "critic=ippo",
                           "--set", "policies=separate", "--run-dir", str(run_dir)], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"early/policy_loss", "late/policy_loss", "steady/policy_loss"} <= set(rows[-1])
    code, out, err = _run(["export", str(run_dir), "-o", str(tmp_path / "ts"), "--format", "torchscript"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "ts").iterdir()) == ["early.pt", "late.pt", "policies.json", "steady.pt"]
    code, out, err = _run(["info", str(run_dir)], capsys)
    assert "policies: early -> early; late -> late; steady -> steady" in out


def test_an_mpe_id_trains_multiagent_with_the_mpe_preset(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, out, err = _run(["train", "mpe2.simple_spread_v3", *TINY, "--run-dir", str(run_dir)], capsys)
    assert code == 0, err
    assert "with preset 'mpe'" in err and "multi-agent, MAPPO" in err
    state = json.loads((run_dir / "model" / "state.json").read_text())
    assert state["kind"] == "ppokit.multiagent"
    config = state["config"]
    assert (config["learning_rate"], config["num_epochs"], config["hidden_sizes"], config["activation"]) == (
        0.0007, 10, [64, 64], "relu")
    assert config["num_envs"] == 2  # --set beats the preset


def test_seeds_train_one_after_another_each_its_own_run(tmp_path, capsys):
    group = tmp_path / "group"
    code, out, err = _run(["train", LEAKY, *TINY, "--set", "critic=ippo", "--seeds", "1-2", "--run-dir", str(group)],
                          capsys)
    assert code == 0, err
    assert "seed 1: evaluation" in out and "seed 2: evaluation" in out
    assert json.loads((group / "seeds.json").read_text())["front_end"] == "multiagent"
    # seed 2 of the group is the run --seed 2 alone
    code, out, err = _run(["train", LEAKY, *TINY, "--set", "critic=ippo", "--seed", "2", "--run-dir",
                           str(tmp_path / "alone")], capsys)
    assert (group / "seed_2" / "model" / "model.safetensors").read_bytes() == (
        tmp_path / "alone" / "model" / "model.safetensors").read_bytes()

    code, out, err = _run(["info", str(group)], capsys)
    assert "a group of 2 seeds trained one after another" in out and "multi-agent PPO" in out
    code, out, err = _run(["resume", str(group), "--total-steps", "300", "--trust", "--no-progress"], capsys)
    assert code == 0, err
    for seed in (1, 2):
        assert json.loads((group / f"seed_{seed}" / "model" / "state.json").read_text())["global_step"] == 300
    code, out, err = _run(["plot", str(group), "-o", str(tmp_path / "band.png")], capsys)
    assert code == 0
    # a group trains in one process, seed after seed: refused before any process starts
    code, out, err = _run(["resume", str(group), "--nproc", "2"], capsys)
    _one_line(code, err, "is a group of seeds, which trains in one process")


@pytest.mark.parametrize("argv,message", [
    (["train", LEAKY, *TINY], "a PettingZoo env has many agents: train it with ppokit.MultiAgentPPO (docs/guides/"
                              f"multi-agent.md) (on the command line: ppokit train {LEAKY} --set critic=mappo, or "
                              "critic=ippo)"),
    (["train", "CartPole-v1", "--set", "critic=ippo"], "'CartPole-v1' is a Gymnasium id"),
    (["train", "mpe2.simple_spread_v3", "--seeds", "1-2", "--seed", "3"], "--seed and --seeds"),
    (["train", "mpe2.simple_spread_v3", "--set", "critic=ipo"], "'critic': 'ipo' is not allowed"),
])
def test_bad_training_input_is_one_line(argv, message, tmp_path, capsys):
    code, out, err = _run([*argv, "--run-dir", str(tmp_path / "run")], capsys)
    _one_line(code, err, message)


@pytest.mark.parametrize("argv,message", [
    (["eval", "{run}", "--video", "{tmp}/video", "--trust"], "--video: recording is not supported for multi-agent"),
    (["resume", "{run}", "--total-updates", "100", "--trust"], "counted in env steps: pass --total-steps"),
    (["resume", "{run}", "--total-steps", "1000"], "--trust"),
])
def test_bad_input_on_a_saved_run_is_one_line(argv, message, run, tmp_path, capsys):
    code, out, err = _run([a.format(run=run, tmp=tmp_path) for a in argv], capsys)
    _one_line(code, err, message)
