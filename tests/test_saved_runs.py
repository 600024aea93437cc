"""Run directories written by an earlier ppokit (``tests/fixtures/saved_runs``, made by
``tests/fixtures/make_saved_runs.py`` before the package's modules were moved) still load, evaluate
and resume: what users already have on disk survives changes to ppokit's insides."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ppokit.cli.main import main
from tests.fixtures.make_saved_runs import ROOT

SAVED = Path(__file__).resolve().parent / "fixtures" / "saved_runs"


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """A copy of the saved runs, with the absolute path they were written under replaced by the copy's."""
    out = tmp_path / "runs"
    shutil.copytree(SAVED, out)
    for path in out.rglob("*"):
        if path.suffix in (".yaml", ".json", ".jsonl", ".md") and path.is_file():
            text = path.read_text(encoding="utf-8")
            if str(ROOT) in text:
                path.write_text(text.replace(str(ROOT), str(out)), encoding="utf-8")
    return out


def _answers_as_saved(agent, probe: dict) -> None:
    from ppokit.control.rollout.host import policy_input

    obs = np.asarray(probe["obs"], dtype=np.float32)
    assert np.asarray(agent.predict(obs)).tolist() == probe["actions"]
    with torch.no_grad():
        values = agent.policy.value(torch.as_tensor(policy_input(obs, agent.obs_rms, agent.config.clip_obs)))
    np.testing.assert_allclose(values.numpy(), probe["values"], rtol=1e-5, atol=1e-6)


def test_a_control_run_loads_evaluates_and_resumes(runs, capsys):
    from ppokit import PPO

    run = runs / "control"
    agent = PPO.load(run)
    assert agent.num_updates == 2 and agent.global_step == 512
    _answers_as_saved(agent, json.loads((run / "probe.json").read_text()))
    assert agent.evaluate(episodes=2)["episodes"] == 2
    assert main(["eval", str(run), "--episodes", "2", "--out", str(runs / "eval.json")]) == 0
    assert json.loads((runs / "eval.json").read_text())["episodes"] == 2
    assert main(["resume", str(run), "--no-progress"]) == 0
    resumed = PPO.load(run)
    assert resumed.num_updates == 4 and resumed.global_step == 1024
    assert main(["info", str(run)]) == 0
    assert "CartPole-v1" in capsys.readouterr().out


def test_a_control_run_of_a_module_env_asks_before_importing_it(runs, capsys):
    from ppokit import PPO

    run = runs / "control_module_env"
    assert main(["eval", str(run), "--episodes", "2", "--out", str(runs / "e.json")]) == 2
    assert "tests.envs" in capsys.readouterr().err
    assert main(["eval", str(run), "--episodes", "2", "--out", str(runs / "e.json"), "--trust"]) == 0
    agent = PPO.resume(run, trust=True)
    _answers_as_saved(agent, json.loads((run / "probe.json").read_text()))
    agent.learn()
    assert agent.num_updates == 4 and (run / "model" / "state.json").is_file()
    agent.close()


def test_a_seed_group_resumes_every_seed(runs):
    from ppokit import PPO, SeedGroup

    root = runs / "seeds"
    probes = json.loads((root / "probe.json").read_text())
    for name, probe in probes.items():
        _answers_as_saved(PPO.load(root / name), probe)
    group = SeedGroup.resume(root)
    group.learn()
    assert [agent.num_updates for agent in group.agents] == [4, 4]
    group.close()


def test_an_rlhf_lora_run_resumes_and_its_policy_loads(runs, capsys):
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from ppokit.rlhf.ppo.trainer import RLHFTrainer

    run = runs / "rlhf_lora"
    assert main(["resume", str(run), "--no-progress"]) == 2  # its reward is 'module:function'
    assert "tests.rlhf.helpers" in capsys.readouterr().err
    trainer = RLHFTrainer.resume(run, trust=True)
    assert trainer.num_updates == 1
    summary = trainer.learn()
    assert summary["updates"] == 2
    model = AutoModelForCausalLM.from_pretrained(run / "policy")
    assert model.config.n_layer == 1
    assert (run / "policy_adapter" / "adapter_model.safetensors").is_file()
    assert main(["info", str(run)]) == 0


def test_an_sft_run_resumes_and_its_model_loads(runs):
    from transformers import AutoModelForCausalLM

    run = runs / "sft"
    assert main(["resume", str(run), "--no-progress"]) == 2  # reading its data file needs the user's word
    assert main(["resume", str(run), "--no-progress", "--data", str(runs / "sft.jsonl")]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2
    AutoModelForCausalLM.from_pretrained(run / "model")


@pytest.mark.parametrize("command", ["eval", "export", "package", "plot"])
def test_a_seed_group_is_plotted_as_a_band_and_refused_by_one_run_commands(runs, tmp_path, capsys, command):
    pytest.importorskip("matplotlib")
    group = runs / "seeds"
    out = {"eval": [], "export": ["-o", str(tmp_path / "p.onnx")], "package": [str(tmp_path / "pkg")],
           "plot": ["-o", str(tmp_path / "g.png")]}[command]
    code = main([command, str(group), *out])
    err = capsys.readouterr().err
    if command == "plot":  # the group's seeds, one band
        assert code == 0 and (tmp_path / "g.png").stat().st_size > 0, err
        return
    assert code == 2 and "is a group of seeds (seed_1, seed_2)" in err and f"{group / 'seed_1'}" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
