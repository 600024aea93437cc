"""A deterministic evaluation that hides a working policy is said, once, in the log and in eval.json,
with how to evaluate sampling (``ppokit eval RUN --stochastic``, ``eval_deterministic: false``)."""

import json
import logging

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from ppokit import PPO, ControlConfig
from ppokit.cli.main import main
from ppokit.control.evaluation_checks import deterministic_gap


class EitherWayEnv(gym.Env):
    """A trap for the argmax: the observation never changes, and an episode succeeds (reward 1) once
    both actions have been taken twice, else ends with nothing after 16 steps. Sampling succeeds
    almost always; the most likely action, the same at every step, never does."""

    observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.counts, self.t = [0, 0], 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.counts[int(action)] += 1
        self.t += 1
        done = min(self.counts) >= 2
        return np.zeros(1, np.float32), float(done), done, self.t >= 16 and not done, {}


ENV = f"{__name__}:EitherWayEnv"
TINY = dict(total_steps=1024, num_envs=4, num_steps=64, num_minibatches=2, num_epochs=2, eval_episodes=8,
            progress=False, tensorboard=False, seed=0)


def test_a_looping_argmax_is_warned_once_in_the_log_and_in_eval_json(tmp_path, caplog, capsys):
    caplog.set_level(logging.WARNING, logger="ppokit")
    run = tmp_path / "run"
    PPO(ControlConfig(env_id=ENV, run_dir=str(run), **TINY)).learn()
    result = json.loads((run / "eval.json").read_text())
    assert result["deterministic"] and result["mean_return"] == 0.0
    assert result["training_mean_return"] > 0.9 and result["training_episodes"] >= 20
    assert f"ppokit eval {run} --stochastic" in result["deterministic_warning"]
    assert "eval_deterministic=false" in result["deterministic_warning"]
    warned = [r.getMessage() for r in caplog.records if "deterministic evaluation" in r.getMessage()]
    assert warned == [result["deterministic_warning"]]
    # The advice works: sampling, the same policy solves the task.
    assert main(["eval", str(run), "--stochastic", "--trust", "--episodes", "8", "--out", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["mean_return"] > 0.9


def test_a_sampled_evaluation_is_not_warned(tmp_path):
    run = tmp_path / "run"
    PPO(ControlConfig(env_id=ENV, run_dir=str(run), eval_deterministic=False, **TINY)).learn()
    result = json.loads((run / "eval.json").read_text())
    assert result["mean_return"] > 0.9 and "deterministic_warning" not in result


def _result(returns, deterministic=True):
    return {"returns": list(returns), "deterministic": deterministic, "mean_return": float(np.mean(returns))}


DISCRETE = spaces.Discrete(3)


@pytest.mark.parametrize("case, training, evaluated, space, warned", [
    # MiniGrid's trap: training solves it by sampling (0.74-0.82), the argmax scores nothing.
    ("argmax loops", np.linspace(0.74, 0.82, 100), [0.0] * 20, DISCRETE, True),
    ("a mixed action with a discrete part", np.linspace(0.74, 0.82, 100), [0.0] * 20,
     spaces.Tuple((spaces.Box(-1, 1, (2,)), spaces.Discrete(2))), True),
    # Half of the training episodes succeed, the argmax never: not far enough below their spread.
    ("within the training spread", [0.0, 1.0] * 50, [0.0] * 20, DISCRETE, False),
    # An untrained CartPole policy: the argmax falls sooner than sampling, within the noise.
    ("early training", 22 + 12 * np.random.default_rng(0).standard_normal(100), [9.4] * 20, DISCRETE, False),
    ("a few points below a steady return", [500.0] * 100, [497.0, 499.0, 500.0, 498.0, 496.0], DISCRETE, False),
    ("too few training episodes", [1.0] * 19, [0.0] * 20, DISCRETE, False),
    ("too few evaluation episodes", [1.0] * 100, [0.0] * 4, DISCRETE, False),
    ("a Gaussian policy's mean action", np.linspace(0.74, 0.82, 100), [0.0] * 20, spaces.Box(-1, 1, (2,)), False),
    ("negative returns, far below", -100 + 10 * np.random.default_rng(1).standard_normal(100), [-500.0] * 10,
     DISCRETE, True),
])
def test_the_rule_warns_only_far_below_the_training_returns(case, training, evaluated, space, warned):
    gap = deterministic_gap(_result(evaluated), list(training), space, "runs/x")
    assert (gap is not None) == warned, case
    if warned:
        assert "ppokit eval runs/x --stochastic" in gap["deterministic_warning"]
    assert deterministic_gap(_result(evaluated, deterministic=False), list(training), space) is None
