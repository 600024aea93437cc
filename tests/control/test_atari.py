"""Atari through ale-py: each rule of the standard preprocessing, game scores in training logs and in
evaluation, a short training run, and the presets (ppokit.control.envs.atari)."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("ale_py", reason="needs ppokit[atari] (ale-py)")
cv2 = pytest.importorskip("cv2", reason="needs ppokit[atari] (opencv-python-headless)")

from ppokit import PPO, ControlConfig  # noqa: E402
from ppokit.configuration import from_mapping  # noqa: E402
from ppokit.control.envs.make import atari, check_env_id, make_single_env, make_vector_env  # noqa: E402
from ppokit.control.envs.source import EnvSource  # noqa: E402
from ppokit.control.evaluation import evaluate_policy  # noqa: E402
from ppokit.control.presets import default_preset_for, load_preset  # noqa: E402
from ppokit.errors import EnvError  # noqa: E402

BREAKOUT = "BreakoutNoFrameskip-v4"
NOOP, FIRE, RIGHT = 0, 1, 2


def _layer(env: gym.Env, kind: type) -> gym.Env:
    while not isinstance(env, kind):
        env = env.env  # type: ignore[attr-defined]
    return env


def _frame(env: gym.Env) -> int:
    return int(env.unwrapped.ale.getEpisodeFrameNumber())


def test_the_stack_gives_stacked_84x84_grey_uint8_frames_in_the_standard_order():
    env = make_single_env(BREAKOUT)
    obs, _ = env.reset(seed=0)
    assert env.observation_space == gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    order = []
    layer: gym.Env = env
    while isinstance(layer, gym.Wrapper):
        order.append(type(layer).__name__)
        layer = layer.env
    wanted = ["FrameStackObservation", "TransformReward", "FireReset", "EpisodicLife", "RecordEpisodeStatistics",
              "AtariPreprocessing"]
    assert order[:len(wanted)] == wanted
    pre = _layer(env, gym.wrappers.AtariPreprocessing)
    assert (pre.noop_max, pre.frame_skip, pre.env.unwrapped._frameskip) == (30, 4, 1)
    assert env.metadata["episode_statistics"] is True
    # The policy's network reads (4, 84, 84) as channels first: the Nature CNN's input.
    agent = PPO(ControlConfig(env_id=BREAKOUT, num_envs=1, num_steps=8, num_minibatches=1, total_steps=8,
                              normalize_obs=False, normalize_reward=False, progress=False))
    assert agent.policy.spec.encoder == "cnn" and agent.observation_space.shape == (4, 84, 84)
    agent.close()


def test_reset_takes_1_to_30_noops_then_fire_and_the_seed_decides_how_many():
    env = make_single_env(BREAKOUT)
    frames = set()
    for seed in range(6):
        env.reset(seed=seed)
        # The no-ops are single frames; FIRE and action 2 are one agent step (4 frames) each.
        frames.add(_frame(env) - 2 * 4)
        env.reset(seed=seed)
        assert _frame(env) - 2 * 4 in frames
    assert all(1 <= f <= 30 for f in frames) and len(frames) > 1


def test_fire_reset_launches_the_ball_so_a_policy_that_never_fires_still_loses_a_life():
    fired = make_single_env(BREAKOUT)
    fired.reset(seed=0)
    lives = fired.unwrapped.ale.lives()
    for _ in range(300):
        *_, terminated, _, _ = fired.step(NOOP)
        if terminated:
            break
    assert fired.unwrapped.ale.lives() == lives - 1
    # Without FireReset (no preprocessing at all) the ball waits: nothing happens in as many frames.
    raw = make_single_env(BREAKOUT, preprocessing="none")
    raw.reset(seed=0)
    for _ in range(300 * 4):
        raw.step(NOOP)
    assert raw.unwrapped.ale.lives() == lives


def test_a_lost_life_ends_the_training_episode_but_the_game_goes_on():
    env = make_single_env(BREAKOUT)
    env.reset(seed=1)
    for _ in range(300):
        _, _, terminated, truncated, info = env.step(NOOP)
        if terminated:
            break
    assert terminated and not truncated and "episode" not in info
    ale = env.unwrapped.ale
    assert ale.lives() == 4 and not ale.game_over()
    before = _frame(env)
    env.reset()  # what the vector env's autoreset calls
    assert ale.lives() == 4 and _frame(env) > before  # the same game, not a new one


def test_rewards_are_clipped_to_their_sign_but_the_score_is_the_games():
    env = make_single_env("SpaceInvadersNoFrameskip-v4")
    stats = _layer(env, gym.wrappers.RecordEpisodeStatistics)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    seen = []
    for _ in range(400):
        _, reward, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
        seen.append(reward)
        if terminated or truncated:
            env.reset()
        if stats.episode_returns > sum(seen):
            break
    assert set(seen) <= {-1.0, 0.0, 1.0} and 1.0 in seen
    # Space Invaders scores 5 to 30 a hit: the game's score runs ahead of the clipped sum.
    assert stats.episode_returns > sum(seen)
    assert atari.reward_sign(7.0) == 1.0 and atari.reward_sign(-4.0) == -1.0 and atari.reward_sign(0.0) == 0.0


def test_a_step_repeats_the_action_four_frames_and_keeps_the_max_of_the_last_two():
    env = make_single_env(BREAKOUT)
    env.reset(seed=0)
    for _ in range(10):
        env.step(RIGHT)
    ale = env.unwrapped.ale
    state, start = ale.cloneState(), _frame(env)
    obs, *_ = env.step(RIGHT)
    assert _frame(env) - start == 4
    # Replay the same four frames on the emulator by hand (NoFrameskip-v4 has no sticky actions).
    ale.restoreState(state)
    screens = []
    for _ in range(4):
        ale.act(env.unwrapped._action_set[RIGHT])
        screens.append(ale.getScreenGrayscale())
    pooled = cv2.resize(np.maximum(screens[2], screens[3]), (84, 84), interpolation=cv2.INTER_AREA)
    last = cv2.resize(screens[3], (84, 84), interpolation=cv2.INTER_AREA)
    assert np.array_equal(obs[-1], pooled) and not np.array_equal(obs[-1], last)


def test_the_observation_stacks_the_last_four_frames():
    env = make_single_env(BREAKOUT)
    obs, _ = env.reset(seed=0)
    assert all(np.array_equal(obs[0], frame) for frame in obs)  # padded with the first frame
    for _ in range(3):
        new, *_ = env.step(RIGHT)
        assert np.array_equal(new[:3], obs[1:])
        obs = new


def test_evaluation_scores_whole_games_by_the_games_own_statistics():
    env = make_vector_env(BREAKOUT, 2)
    games: list[list[tuple[float, int]]] = [[], []]  # (score, length) of each env's games, as the env reports
    lost_lives = 0
    step = env.step

    def spy(actions):
        nonlocal lost_lives
        out = step(actions)
        info, done = out[4], out[2] | out[3]
        over = info.get("_episode", np.zeros(2, dtype=bool))
        for i in np.flatnonzero(over):
            games[i].append((float(info["episode"]["r"][i]), int(info["episode"]["l"][i])))
        lost_lives += int((done & ~over).sum())
        return out

    env.step = spy  # type: ignore[method-assign]
    rng = np.random.default_rng(0)
    starts = 0

    def act(obs, deterministic, mask, new_episode):
        nonlocal starts
        starts += int(new_episode.sum())
        return rng.integers(0, 4, size=len(obs))

    result = evaluate_policy(act, env, BREAKOUT, episodes=2, seed=3)
    first = [g[0] for g in games]
    assert result["episodes"] == 2 and lost_lives >= 8  # four lives lost in each game before it ended
    assert sorted(result["returns"]) == sorted(score for score, _ in first)
    assert result["mean_length"] == np.mean([length for _, length in first])
    # Each new life is a new start for a recurrent policy, as in training.
    assert starts >= 2 + 8
    env.close()


def test_a_video_records_one_file_per_whole_game(tmp_path):
    pytest.importorskip("moviepy", reason="needs ppokit[video]")
    from ppokit.control.evaluation import record_video

    rng = np.random.default_rng(0)
    env = make_single_env(BREAKOUT, render_mode="rgb_array")
    result = record_video(lambda obs, *_: rng.integers(0, 4, size=1), env, BREAKOUT, 1, tmp_path / "videos", seed=2)
    assert result["episodes"] == 1 and result["mean_length"] > 100  # five lives, not one
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 1


def test_a_short_training_run_logs_game_scores_and_writes_an_evaluation(tmp_path):
    config = ControlConfig(env_id=BREAKOUT, num_envs=2, num_steps=128, num_epochs=1, num_minibatches=2,
                           total_steps=512, normalize_obs=False, normalize_reward=False, eval_episodes=1,
                           progress=False, tensorboard=False, seed=0)
    agent = PPO(config)
    assert agent.collector is not None and agent.collector.env_reports_episodes
    agent.learn(run_dir=tmp_path / "run")
    assert agent.num_updates == 2 and (tmp_path / "run" / "model").is_dir()
    evaluation = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert evaluation["episodes"] == 1 and evaluation["mean_length"] > 100  # a whole game, not one life
    # 512 steps of random-ish play end a few games, each logged once with its full length.
    assert agent.collector.episodes.total >= 1
    assert min(agent.collector.episodes.lengths) > 100
    assert agent.collector.episodes.total < 10  # not one per life
    agent.close()


def test_preprocessing_none_gives_the_raw_frames_and_atari_refuses_other_envs():
    raw = EnvSource(BREAKOUT, {}, preprocessing="none").evaluation(1)
    assert raw.single_observation_space.shape == (210, 160, 3)
    raw.close()
    with pytest.raises(EnvError, match="'atari' needs an ale-py Atari id"):
        make_single_env("CartPole-v1", preprocessing="atari")
    with pytest.raises(EnvError, match="frameskip"):
        make_single_env("ALE/Breakout-v5", {"frameskip": 4})
    v5 = make_single_env("ALE/Breakout-v5")  # made at frameskip 1 under the stack; sticky actions kept
    assert v5.unwrapped._frameskip == 1 and v5.spec is not None
    assert v5.unwrapped.spec.kwargs["repeat_action_probability"] == 0.25


def test_the_configs_env_preprocessing_reaches_the_envs_of_a_run_and_of_a_loaded_model(tmp_path):
    with pytest.raises(EnvError, match="'atari' needs an ale-py Atari id"):
        PPO(ControlConfig(env_id="CartPole-v1", env_preprocessing="atari", progress=False))
    config = ControlConfig(env_id=BREAKOUT, env_preprocessing="none", network="cnn", num_envs=1, num_steps=8,
                           num_minibatches=1, total_steps=8, normalize_obs=False, normalize_reward=False,
                           eval_episodes=0, progress=False, tensorboard=False)
    agent = PPO(config)
    assert agent.observation_space.shape == (210, 160, 3)  # raw RGB frames
    agent.learn(run_dir=tmp_path / "run")
    agent.close()
    loaded = PPO.load(tmp_path / "run")
    assert loaded.config.env_preprocessing == "none"
    assert loaded.env_source.single().observation_space.shape == (210, 160, 3)


def test_ale_ids_are_known_without_importing_ale_py_first_and_a_missing_ale_py_is_named(monkeypatch):
    check_env_id("ALE/Pong-v5")
    assert atari.is_atari_id("PongNoFrameskip-v4") and not atari.is_atari_id("CartPole-v1")
    assert not atari.is_atari_id("ALE/Pong-ram-v5")  # RAM observations get no image stack
    monkeypatch.setattr(atari, "register_ale", lambda: False)
    with pytest.raises(EnvError, match=r"needs ale-py .*ppokit\[atari\]"):
        check_env_id("ALE/NoSuchGame-v5")


def test_presets_carry_cleanrl_ppo_atari_settings_and_serve_both_id_schemes():
    for game in ("Breakout", "Pong"):
        name = f"{game}NoFrameskip-v4"
        assert default_preset_for(name) == name and default_preset_for(f"ALE/{game}-v5") == name
        config = from_mapping(ControlConfig, load_preset(name))
        assert (config.num_envs, config.num_steps, config.num_epochs, config.num_minibatches) == (8, 128, 4, 4)
        assert (config.learning_rate, config.lr_schedule, config.clip_range, config.clip_range_vf) == (
            2.5e-4, "linear", 0.1, 0.1)
        assert (config.ent_coef, config.vf_coef, config.max_grad_norm, config.gamma, config.gae_lambda) == (
            0.01, 0.5, 0.5, 0.99, 0.95)
        assert not config.normalize_obs and not config.normalize_reward
        # CleanRL's total_timesteps counts agent steps (global_step += num_envs): 10M steps = 40M frames.
        assert config.total_steps == 10_000_000
    assert default_preset_for("ALE/Pong-ram-v5") is None
