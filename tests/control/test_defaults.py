"""The general defaults (no preset): fields left to the action space, and that they learn."""

import gymnasium as gym
import numpy as np
import pytest
import yaml

from ppokit import PPO, ControlConfig
from ppokit.control.config import DISCRETE_ENT_COEF
from ppokit.control.policy.actions import all_discrete
from tests.seed_votes import median_passes

BOX = gym.spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)


@pytest.mark.parametrize("space, discrete", [
    (gym.spaces.Discrete(3), True),
    (gym.spaces.MultiDiscrete([2, 3]), True),
    (gym.spaces.MultiBinary(4), True),
    (gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.MultiBinary(2))), True),
    (BOX, False),
    (gym.spaces.Tuple((gym.spaces.Discrete(2), BOX)), False),
    (gym.spaces.Dict({"pick": gym.spaces.Discrete(2), "force": BOX}), False),
])
def test_entropy_bonus_left_to_the_action_space(space, discrete):
    assert all_discrete(space) is discrete
    resolved = ControlConfig().for_actions(all_discrete(space))
    assert resolved.ent_coef == (DISCRETE_ENT_COEF if discrete else 0.0)
    # A value the user gave is theirs, whatever the actions.
    assert ControlConfig(ent_coef=0.003).for_actions(discrete).ent_coef == 0.003


@pytest.mark.parametrize("env_id, ent_coef", [("CartPole-v1", DISCRETE_ENT_COEF), ("Pendulum-v1", 0.0)])
def test_the_run_records_the_value_it_used(tmp_path, env_id, ent_coef):
    agent = PPO(ControlConfig(env_id=env_id, total_steps=2048, progress=False, tensorboard=False, eval_episodes=0))
    assert agent.config.ent_coef == ent_coef and agent.algorithm.settings(0.0).ent_coef == ent_coef
    agent.learn(run_dir=tmp_path / "run")
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["ent_coef"] == ent_coef
    assert PPO.load(tmp_path / "run").config.ent_coef == ent_coef


# The old defaults (8 envs x 2,048 steps per update: two to six updates in these budgets) fail the
# CartPole and Pendulum cases (401 and -1064 at seed 1). Acrobot's deterministic evaluation was
# already -76 after their three updates, so that case guards the new defaults only. The median of
# seeds is asserted: one seed's result moves with any change in rounding (CartPole's seed 1 reached
# 328 after the fast path's fused products; with a fresh install on 2026-12-07 (numpy 2.4.6, Gymnasium
# 1.4.0, torch 2.13.0) seed 3 reaches 445, at the code of the day before too, and seeds 2, 4 to 8 all
# 500), so CartPole takes five. They run in the order 2, 4, 5, 1, 3 (the steady ones first) so that a
# majority is usually reached in three runs; the order cannot change the median's verdict.
@pytest.mark.learning
@pytest.mark.parametrize("env_id, steps, threshold, seeds", [
    ("CartPole-v1", 40_000, 475.0, (2, 4, 5, 1, 3)),
    ("Acrobot-v1", 50_000, -100.0, (1, 2, 3)),
    ("Pendulum-v1", 100_000, -300.0, (1, 2, 3)),
])
def test_the_general_defaults_learn_small_tasks_in_small_budgets(tmp_path, env_id, steps, threshold, seeds):
    def run(seed: int) -> float:
        agent = PPO(ControlConfig(env_id=env_id, total_steps=steps, seed=seed, progress=False, tensorboard=False,
                                  eval_episodes=0, run_dir=str(tmp_path / f"run{seed}")))
        agent.learn()
        result = agent.evaluate(episodes=10)["mean_return"]
        agent.close()
        return result

    # Seeds run until a majority has passed or failed: the median's verdict, with fewer runs (tests/seed_votes.py).
    learned, returns = median_passes(run, seeds, lambda r: r >= threshold)
    assert learned, returns
