"""Recurrent policies (issue 14): the state is carried through rollouts and reset at episode starts,
the update re-runs the core over whole stored sequences from their initial states, checkpoints keep
the state (exact resume), and predict carries it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ppokit import PPO, ControlConfig
from ppokit.configuration import replace
from ppokit.control.algorithm import make_sequence_batch
from ppokit.errors import ConfigError
from tests.seed_votes import median_passes


def _config(tmp_path, name="run", recurrent="lstm", **changes) -> ControlConfig:
    values = dict(env_id="tests.envs:PositionOnlyCartPole", num_envs=4, num_steps=64, num_minibatches=2,
                  num_epochs=2, total_steps=4 * 64 * 4, recurrent=recurrent, recurrent_size=16, hidden_sizes=[16],
                  progress=False, tensorboard=False, eval_episodes=2, run_dir=str(tmp_path / name))
    values.update(changes)
    return ControlConfig(**values)


@pytest.mark.parametrize("recurrent", ["lstm", "gru"])
def test_the_update_re_runs_exactly_what_the_rollout_computed(tmp_path, recurrent):
    agent = PPO(_config(tmp_path, recurrent=recurrent))
    assert agent.policy.core is not None and not agent.algorithm.fast_update
    rollout = agent.collector.collect()
    assert int(rollout.starts[1:].sum()) > 0  # episodes end inside the rollout: resets are exercised
    batch = make_sequence_batch(rollout, 0.99, 0.95)
    with torch.no_grad():
        logp, _, values = agent.algorithm._sequence_evaluate(batch, slice(None))
    torch.testing.assert_close(logp, batch.logp, rtol=0, atol=1e-5)
    torch.testing.assert_close(values, batch.values, rtol=0, atol=1e-5)
    agent.close()


def test_an_episode_start_resets_the_state(tmp_path):
    policy = PPO(_config(tmp_path)).policy
    obs = torch.randn(3, 2)
    state = torch.randn(3, policy.state_size)
    fresh = policy.initial_state(3)
    with torch.no_grad():
        reset = policy.step_value(obs, state, torch.ones(3, dtype=torch.bool))
        zero = policy.step_value(obs, fresh, torch.zeros(3, dtype=torch.bool))
        kept = policy.step_value(obs, state, torch.zeros(3, dtype=torch.bool))
    torch.testing.assert_close(reset, zero)
    assert not torch.allclose(kept, zero)


def test_stop_and_resume_of_a_recurrent_run_is_bit_identical(tmp_path):
    straight = PPO(_config(tmp_path, "straight")).learn()
    PPO(_config(tmp_path, "split")).learn(callback=lambda record: record["update"] < 2)
    resumed = PPO.resume(tmp_path / "split", trust=True).learn()
    for a, b in zip(straight.policy.parameters(), resumed.policy.parameters()):
        assert torch.equal(a, b)


def test_predict_carries_the_state(tmp_path):
    agent = PPO(_config(tmp_path))
    obs = np.zeros((2, 2), dtype=np.float32)
    actions, state = agent.predict(obs)
    assert actions.shape == (2,) and tuple(state.shape) == (2, agent.policy.state_size)
    again, state2 = agent.predict(obs, state=state, episode_start=np.array([False, True]))
    assert not torch.equal(state2[0], state[0])
    assert agent.evaluate(2)["episodes"] == 2  # evaluation carries the state per env
    agent.close()


def test_recurrent_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="num_minibatches.*must divide num_envs"):
        _config(tmp_path, num_minibatches=3)
    with pytest.raises(ConfigError, match="'recurrent': 'rnn' is not allowed; expected one of 'lstm', 'gru' or null"):
        replace(_config(tmp_path), recurrent="rnn")


@pytest.mark.learning
def test_cartpole_without_velocities_needs_memory(tmp_path):
    """Only position and angle are observed. The LSTM policy solves it in the budget; the MLP does not.
    The median of three seeds: one seed alone depends on the machine's arithmetic (seed 1 reached 500 on
    one machine and 235 on another at 60k steps, where seeds 2 and 3 reached 500)."""
    import json

    def run(recurrent, seed):
        name = f"run-{recurrent}-{seed}"
        config = _config(tmp_path, name, recurrent=recurrent, num_envs=16, num_steps=32,
                         num_minibatches=4, num_epochs=4, total_steps=60_000, recurrent_size=64,
                         hidden_sizes=[64, 64], learning_rate=1e-3, lr_schedule="constant", ent_coef=0.0,
                         normalize_reward=True, eval_episodes=10, seed=seed)
        PPO(config).learn()
        return json.loads((tmp_path / name / "eval.json").read_text())["mean_return"]

    # The median of three is decided by the first two seeds when they agree (tests/seed_votes.py).
    solved, returns = median_passes(lambda seed: run("lstm", seed), (1, 2, 3), lambda r: r >= 450.0)
    assert solved, returns
    unsolved, returns = median_passes(lambda seed: run(None, seed), (1, 2, 3), lambda r: r <= 150.0)
    assert unsolved, returns


@pytest.mark.learning
def test_recurrence_masks_and_dict_observations_combine(tmp_path):
    """A recurrent, masked policy on a Dict-observation env ({"observation", "action_mask"}): the task
    needs the mask (choose the lowest valid of 8 actions), and the env raises if a masked action is
    ever taken, in training or evaluation."""
    import json

    config = ControlConfig(env_id="tests.envs:LowestValidEnv", env_kwargs={"strict": True, "in_obs": True},
                           num_envs=8, num_steps=32, num_minibatches=4, num_epochs=4, total_steps=8 * 32 * 30,
                           learning_rate=1e-3, recurrent="gru", recurrent_size=64, hidden_sizes=[64],
                           normalize_reward=True, progress=False, tensorboard=False, eval_episodes=10,
                           run_dir=str(tmp_path / "run"), seed=1)
    agent = PPO(config).learn()
    assert agent.policy.core is not None and agent.policy.spec.action_mask
    # Of 16; untrained about 5. Seeds 1, 2 and 3 all reach 16.0 in these 30 updates (and in 60).
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["mean_return"] >= 15.0
