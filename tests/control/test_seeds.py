"""Several seeds in one process (``--seeds``): each is its solo run, bit for bit."""

import hashlib
import json

import numpy as np
import pytest
import torch

from ppokit.cli.main import main
from ppokit.control.agent import PPO
from ppokit.control.config import ControlConfig
from ppokit.control.fast.policy import NumpyPolicy
from ppokit.control.fast.stacked import StackedPolicy
from ppokit.control.policy.networks import ActorCritic, PolicySpec
from ppokit.control.seeds import SeedGroup, parse_seeds
from ppokit.errors import ConfigError

QUICK = dict(num_envs=4, num_steps=128, num_epochs=4, num_minibatches=4, total_steps=2048, progress=False,
             tensorboard=False, eval_episodes=2, checkpoint_minutes=0)


def _model(run_dir):
    return hashlib.sha256((run_dir / "model" / "model.safetensors").read_bytes()).hexdigest()


def _rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for row in rows:  # wall-clock figures differ between any two runs
        for key in ("sps", "time_elapsed", "time", "wall_time"):
            row.pop(key, None)
    return rows


def _solo(config, seed, run_dir):
    agent = PPO(ControlConfig(**{**config, "seed": seed})).learn(run_dir=run_dir)
    agent.close()
    return run_dir


@pytest.mark.parametrize("text, seeds", [("1-4", [1, 2, 3, 4]), ("1,3,5", [1, 3, 5]), ("0-2,10", [0, 1, 2, 10]),
                                         (" 7 ", [7])])
def test_seed_lists(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text, says", [("3-1", "ends before"), ("1,1", "twice"), ("a-b", "expected"),
                                        ("1-100000", "more than"), ("", "expected")])
def test_bad_seed_lists_are_named(text, says):
    with pytest.raises(ConfigError, match=says):
        parse_seeds(text)


@pytest.mark.parametrize("head", ["categorical", "gaussian"])
def test_the_batched_forward_pass_is_each_policy_alone_bit_for_bit(head):
    import gymnasium as gym

    obs_space = gym.spaces.Box(-1, 1, (5,))
    action_space = gym.spaces.Discrete(3) if head == "categorical" else gym.spaces.Box(-1, 1, (2,))
    policies = []
    for seed in range(3):
        torch.manual_seed(seed)
        policies.append(NumpyPolicy(ActorCritic(PolicySpec.from_spaces(obs_space, action_space))))
    obs = np.random.default_rng(0).standard_normal((3, 6, 5)).astype(np.float32)
    together = StackedPolicy(policies).act(obs, [np.random.default_rng([s, 1]) for s in range(3)])
    for s, policy in enumerate(policies):
        alone = policy.act(obs[s], np.random.default_rng([s, 1]))
        for got, want in zip(together, alone):
            assert got[s].dtype == want.dtype
            np.testing.assert_array_equal(got[s], want)


@pytest.mark.parametrize("extra", [
    {},                                                                                   # fast path, batched acting
    {"env_id": "Pendulum-v1", "normalize_obs": True, "normalize_reward": True, "total_steps": 1024},  # Gaussian, normalisers
    {"update_backend": "torch", "total_steps": 1024},                                     # seed by seed, torch
], ids=["cartpole-fast", "pendulum-normalised", "torch-path"])
def test_each_seed_of_a_group_is_its_solo_run(tmp_path, extra):
    config = {**QUICK, **extra}
    group = SeedGroup(ControlConfig(**config), [3, 5]).learn(run_dir=tmp_path / "group")
    group.close()
    assert json.loads((tmp_path / "group" / "seeds.json").read_text())["seeds"] == [3, 5]
    models = set()
    for seed in (3, 5):
        solo = _solo(config, seed, tmp_path / f"solo{seed}")
        member = tmp_path / "group" / f"seed_{seed}"
        assert _model(member) == _model(solo)
        assert _rows(member) == _rows(solo)
        assert json.loads((member / "eval.json").read_text()) == json.loads((solo / "eval.json").read_text())
        models.add(_model(member))
    assert len(models) == 2  # the seeds are different runs


def test_a_resumed_group_continues_each_seed_exactly(tmp_path):
    whole = SeedGroup(ControlConfig(**QUICK), [1, 2]).learn(run_dir=tmp_path / "whole")
    whole.close()
    # Stopped by the callback after two updates (each seed checkpoints), then resumed from the directory.
    part = SeedGroup(ControlConfig(**QUICK), [1, 2])
    part.learn(run_dir=tmp_path / "part", callback=lambda row: row["update"] < 2)
    part.close()
    assert all(len(_rows(tmp_path / "part" / f"seed_{s}")) == 2 for s in (1, 2))
    resumed = SeedGroup.resume(tmp_path / "part").learn()
    resumed.close()
    for seed in (1, 2):
        assert _model(tmp_path / "part" / f"seed_{seed}") == _model(tmp_path / "whole" / f"seed_{seed}")
        assert _rows(tmp_path / "part" / f"seed_{seed}") == _rows(tmp_path / "whole" / f"seed_{seed}")


def test_the_command_line_trains_resumes_and_refuses_bad_lists(tmp_path, capsys):
    args = ["train", "CartPole-v1", "--preset", "CartPole-v1-cleanrl", "--total-steps", "1024", "--set", "eval_episodes=1",
            "--set", "tensorboard=false", "--no-progress", "--run-dir", str(tmp_path / "g")]
    assert main(args + ["--seeds", "1-2"]) == 0
    out = capsys.readouterr().out
    assert "seed 1: evaluation" in out and "seed 2: evaluation" in out
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["seed_1", "seed_2", "seeds.json"]
    assert main(["resume", str(tmp_path / "g"), "--total-steps", "1536", "--no-progress"]) == 0
    assert all(len(_rows(tmp_path / "g" / f"seed_{s}")) == 3 for s in (1, 2))
    assert main(args + ["--seeds", "2-1"]) == 2
    assert "ends before it starts" in capsys.readouterr().err
    assert main(args + ["--seeds", "1-2", "--seed", "3"]) == 2
    assert "--seed and --seeds" in capsys.readouterr().err
