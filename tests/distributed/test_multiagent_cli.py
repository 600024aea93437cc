"""`ppokit train --nproc 2` of a multi-agent run: the command line over the multi-agent front end's
data parallelism (tests/distributed/test_control_dp.py checks the training itself)."""

from __future__ import annotations

import json

import pytest

from ppokit.cli.main import main


def test_nproc_trains_a_multiagent_run_and_rank_0_alone_speaks(tmp_path, capfd):
    pytest.importorskip("pettingzoo")
    run = tmp_path / "run"
    code = main(["train", "tests.multiagent.envs:leaky", "--set", "critic=ippo", "--total-steps", "200", "--set",
                 "num_envs=2", "--set", "num_steps=25", "--set", "eval_episodes=1", "--set", "tensorboard=false",
                 "--no-progress", "--nproc", "2", "--run-dir", str(run)])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert err.count("(multi-agent, IPPO) for 200 env steps with the general defaults in 2 processes") == 1, err
    assert out.count("run directory:") == 1 and "per agent: early" in out
    assert json.loads((run / "model" / "state.json").read_text())["global_step"] == 200
