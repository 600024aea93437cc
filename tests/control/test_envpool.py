"""vectorization: envpool keeps the Gymnasium path's rules: terminated vs truncated, the reset step
after a done, the collector's valid mask, game scores for Atari, seeded resets, and resume
(ppokit.control.envs.envpool_env)."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys

import numpy as np
import pytest

from ppokit import PPO, ControlConfig
from ppokit.control.envs.envpool_env import EnvPoolVectorEnv
from ppokit.control.envs.make import make_vector_env
from ppokit.control.envs.state import capture_env_state
from ppokit.errors import EnvError

needs_envpool = pytest.mark.skipif(importlib.util.find_spec("envpool") is None, reason="needs ppokit[envpool]")


def _balance(obs: np.ndarray) -> np.ndarray:
    """Push the cart toward where the pole falls: keeps CartPole up for its 500 steps."""
    return (obs[:, 2] + 0.5 * obs[:, 3] > 0).astype(np.int64)


def _play(env, policy, steps: int, seed: int = 0):
    obs, _ = env.reset(seed=seed)
    rows = []
    for _ in range(steps):
        action = policy(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        rows.append((obs.copy(), np.asarray(reward, dtype=np.float64), np.asarray(terminated), np.asarray(truncated)))
    return rows


@needs_envpool
@pytest.mark.parametrize("vectorization", ["sync", "envpool"])
def test_cartpole_truncates_at_500_and_the_next_step_starts_the_new_episode(vectorization):
    env = make_vector_env("CartPole-v1", 2, vectorization=vectorization)
    rows = _play(env, _balance, 502)
    env.close()
    for t, (_, reward, terminated, truncated) in enumerate(rows[:499]):
        assert not terminated.any() and not truncated.any() and (reward == 1.0).all(), t
    _, reward, terminated, truncated = rows[499]  # the 500th step
    assert truncated.all() and not terminated.any() and (reward == 1.0).all()
    first, reward, terminated, truncated = rows[500]  # the reset step: its action is ignored
    assert (reward == 0.0).all() and not terminated.any() and not truncated.any()
    assert (np.abs(first) <= 0.05).all()  # CartPole's start states are uniform in ±0.05
    assert (rows[501][1] == 1.0).all()


@needs_envpool
@pytest.mark.parametrize("vectorization", ["sync", "envpool"])
def test_a_fall_terminates_without_truncation_then_resets(vectorization):
    env = make_vector_env("CartPole-v1", 2, vectorization=vectorization)
    rows = _play(env, lambda obs: np.ones(len(obs), dtype=np.int64), 40)  # always push right: falls in ~10
    env.close()
    done_at = [t for t, row in enumerate(rows) if row[2][0]]
    assert done_at and not rows[done_at[0]][3][0]
    after = rows[done_at[0] + 1]
    assert after[1][0] == 0.0 and not after[2][0] and (np.abs(after[0][0]) <= 0.05).all()


@needs_envpool
@pytest.mark.parametrize("vectorization", ["sync", "envpool"])
def test_the_collectors_valid_mask_drops_exactly_the_reset_steps(vectorization):
    config = ControlConfig(env_id="CartPole-v1", vectorization=vectorization, num_envs=2, num_steps=128,
                           num_minibatches=2, total_steps=256, normalize_obs=False, normalize_reward=False,
                           progress=False, seed=0)
    agent = PPO(config)
    assert agent.collector is not None
    rollout = agent.collector.collect()
    done = (rollout.terminated | rollout.truncated).numpy()
    valid = rollout.valid.numpy()
    assert done.any()
    assert (valid[1:] == ~done[:-1]).all() and valid[0].all()
    assert (rollout.rewards.numpy()[~valid] == 0).all()
    agent.close()


@needs_envpool
def test_atari_uses_envpools_standard_preprocessing_and_reports_whole_games():
    env = EnvPoolVectorEnv("BreakoutNoFrameskip-v4", 2)
    assert env.task_id == "Breakout-v5" and env.metadata["episode_statistics"]
    assert env.options["episodic_life"] and env.options["reward_clip"] and env.options["noop_max"] == 30
    assert env.options["frame_skip"] == 4 and env.options["repeat_action_probability"] == 0.0
    assert str(env.single_observation_space) == "Box(0, 255, (4, 84, 84), uint8)"
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    rng = np.random.default_rng(0)
    score, length, resetting, lost_lives = np.zeros(2), np.zeros(2, dtype=int), np.zeros(2, dtype=bool), 0
    games = []
    while len(games) < 2:
        obs, reward, terminated, truncated, info = env.step(rng.integers(0, 4, 2))
        assert set(np.unique(reward)) <= {-1.0, 0.0, 1.0}
        score += info["reward"] * ~resetting  # EnvPool's unclipped reward
        length += ~resetting
        done = terminated | truncated
        over = info.get("_episode", np.zeros(2, dtype=bool))
        lost_lives += int((done & ~over).sum())
        for i in np.flatnonzero(over):
            games.append((info["episode"]["r"][i], info["episode"]["l"][i], score[i], length[i]))
            score[i], length[i] = 0, 0
        resetting = done
    assert lost_lives >= 4  # Breakout has five lives: four lost lives before the first game ends
    for reported_score, reported_length, own_score, own_length in games:
        assert reported_score == own_score and reported_length == own_length > 100
    env.close()
    assert EnvPoolVectorEnv("ALE/Breakout-v5", 1).options["repeat_action_probability"] == 0.25


@needs_envpool
def test_a_seeded_reset_repeats_the_episodes():
    env = make_vector_env("CartPole-v1", 3, vectorization="envpool")
    random = np.random.default_rng(0)
    actions = [random.integers(0, 2, 3) for _ in range(30)]
    runs = []
    for _ in range(2):
        obs, _ = env.reset(seed=7)
        trace = [obs]
        for action in actions:
            trace.append(env.step(action)[0])
        runs.append(np.stack(trace))
    assert np.array_equal(runs[0], runs[1])
    other, _ = env.reset(seed=8)
    assert not np.array_equal(other, runs[0][0])
    assert not np.array_equal(runs[0][0][0], runs[0][0][1])  # env i is seeded seed + i
    env.close()


@needs_envpool
def test_ids_envpool_lacks_and_misused_options_are_clear_errors():
    with pytest.raises(EnvError, match="EnvPool does not provide env 'NoSuchEnv-v0'"):
        make_vector_env("NoSuchEnv-v0", 2, vectorization="envpool")
    with pytest.raises(EnvError, match="env_preprocessing 'none' needs vectorization 'sync' or 'async'"):
        EnvPoolVectorEnv("PongNoFrameskip-v4", 2, preprocessing="none")
    with pytest.raises(EnvError, match="'frameskip'"):
        make_vector_env("PongNoFrameskip-v4", 2, {"frameskip": 4}, vectorization="envpool")


@needs_envpool
def test_a_short_ppo_run_on_envpool_saves_says_why_its_envs_are_not_saved_and_resumes(tmp_path, caplog):
    config = ControlConfig(env_id="CartPole-v1", vectorization="envpool", num_envs=4, num_steps=64,
                           num_minibatches=2, num_epochs=2, total_steps=512, eval_episodes=4, checkpoint_every=1,
                           progress=False, tensorboard=False, seed=0)
    agent = PPO(config)
    assert isinstance(agent.env, EnvPoolVectorEnv)
    state, why = capture_env_state(agent.env)
    assert state is None and "EnvPool" in why
    agent.learn(run_dir=tmp_path / "run")
    assert agent.global_step == 512 and agent.collector is not None and agent.collector.episodes.total > 0
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["episodes"] == 4
    checkpoint = sorted((tmp_path / "run" / "checkpoints").iterdir())[-1]
    assert "EnvPool" in json.loads((checkpoint / "resume.json").read_text())["env_not_saved"]
    agent.close()
    with caplog.at_level(logging.WARNING, logger="ppokit"):
        resumed = PPO.resume(tmp_path / "run", total_steps=768)
    assert "fresh episodes" in caplog.text
    resumed.learn()
    assert resumed.global_step == 768
    resumed.close()


def test_without_envpool_installed_the_error_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "envpool", None)  # what an uninstalled package looks like to import
    with pytest.raises(EnvError, match=r"needs EnvPool: pip install 'ppokit\[envpool\]'"):
        make_vector_env("CartPole-v1", 2, vectorization="envpool")
