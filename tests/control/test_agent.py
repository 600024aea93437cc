"""The Python API: save/load/predict, normalisation statistics, other spaces and networks."""

import json

import numpy as np
import pytest
import torch

from ppokit import PPO, ControlConfig
from ppokit.errors import CheckpointError, ConfigError, EnvError


def _tiny(env_id="CartPole-v1", **kw):
    base = dict(env_id=env_id, num_envs=4, num_steps=32, num_minibatches=2, num_epochs=2, total_steps=256,
                progress=False, tensorboard=False, eval_episodes=0)
    base.update(kw)
    return ControlConfig(**base)


def test_save_load_predict_round_trip_with_normalisation(tmp_path):
    agent = PPO(_tiny("Pendulum-v1", normalize_obs=True, normalize_reward=True))
    agent.learn(run_dir=tmp_path / "run")
    assert agent.obs_rms is not None and float(agent.obs_rms.count) > 100
    loaded = PPO.load(tmp_path / "run")
    torch.testing.assert_close(loaded.obs_rms.mean, agent.obs_rms.mean)
    torch.testing.assert_close(loaded.ret_rms.var, agent.ret_rms.var)
    obs = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(obs), agent.predict(obs))
    single = loaded.predict(obs[0])
    assert single.shape == (1,) and -2.0 <= single[0] <= 2.0  # clipped to the Box bounds
    # The stored statistics are used: without them the actions differ.
    loaded.obs_rms = None
    assert not np.allclose(loaded.predict(obs), agent.predict(obs))
    state = json.loads((tmp_path / "run" / "model" / "state.json").read_text())
    assert state["global_step"] == 256 and state["action_space"]["type"] == "Box"


def test_loaded_agent_can_continue_learning(tmp_path):
    agent = PPO(_tiny())
    agent.learn(run_dir=tmp_path / "a")
    more = PPO.load(tmp_path / "a")
    more.learn(512, run_dir=tmp_path / "b")
    assert more.global_step == 512
    more.learn(600, run_dir=tmp_path / "c")  # less than one more rollout left: the budget holds
    assert more.global_step == 512


def test_a_budget_below_one_rollout_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="'total_steps' = 100 is less than one rollout"):
        _tiny(total_steps=100)
    with pytest.raises(ConfigError, match="total_steps = 100 is less than one rollout"):
        PPO(_tiny()).learn(100, run_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()  # a refused run leaves nothing behind


def test_predict_rejects_wrong_shapes():
    agent = PPO(_tiny())
    with pytest.raises(ValueError, match="does not match"):
        agent.predict(np.zeros(7, dtype=np.float32))


def test_cnn_policy_on_image_observations_learns_the_pixel_rule(tmp_path):
    cfg = _tiny("tests.envs:TinyImageEnv", num_envs=8, num_steps=64, num_minibatches=4, num_epochs=4,
                total_steps=8 * 64 * 12, learning_rate=1e-3, eval_episodes=20)
    agent = PPO(cfg)
    assert type(agent.policy.encoder).__name__ == "ImageEncoder"
    agent.learn(run_dir=tmp_path / "img")
    result = json.loads((tmp_path / "img" / "eval.json").read_text())
    assert result["mean_return"] >= 7.0  # out of 8; a random policy scores 4


def test_multidiscrete_actions_learn(tmp_path):
    cfg = _tiny("tests.envs:MultiDiscreteMatchEnv", num_envs=8, num_steps=64, num_minibatches=4, num_epochs=4,
                total_steps=8 * 64 * 15, learning_rate=3e-3, eval_episodes=10)
    agent = PPO(cfg)
    agent.learn(run_dir=tmp_path / "md")
    result = json.loads((tmp_path / "md" / "eval.json").read_text())
    assert result["mean_return"] >= 8.0  # out of 10; random scores 3.3


def _expected_next(value, kl, target, factor, shrink_when_over):
    if kl > 1.5 * target:
        return value / factor if shrink_when_over else value * factor
    if kl < target / 1.5:
        return value * factor if shrink_when_over else value / factor
    return value


def test_penalty_variant_adapts_beta_by_the_paper_rule(tmp_path):
    pen = PPO(_tiny(loss="penalty", kl_coef=1.0, kl_target=0.002, total_steps=128 * 6, learning_rate=3e-3))
    pen.learn(run_dir=tmp_path / "pen")
    rows = [json.loads(line) for line in (tmp_path / "pen" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["kl_coef"] == 1.0
    betas = [r["kl_coef"] for r in rows] + [pen.algorithm.kl_coef]
    for row, beta, nxt in zip(rows, betas, betas[1:]):
        assert nxt == pytest.approx(_expected_next(beta, row["kl_after_update"], 0.002, 2.0, False))
    assert len(set(betas)) > 1  # it did adapt


def test_adaptive_clip_range_follows_the_kl(tmp_path):
    agent = PPO(_tiny(adaptive_clip=True, kl_target=0.002, total_steps=128 * 6, learning_rate=3e-3))
    agent.learn(run_dir=tmp_path / "clip")
    rows = [json.loads(line) for line in (tmp_path / "clip" / "metrics.jsonl").read_text().splitlines()]
    eps = [r["clip_range"] for r in rows] + [agent.algorithm.clip_controller.clip_range]
    for row, e, nxt in zip(rows, eps, eps[1:]):
        expected = min(max(_expected_next(e, row["kl_after_update"], 0.002, 1.5, True), 0.02), 0.5)
        assert nxt == pytest.approx(expected)
    assert len(set(eps)) > 1


def test_env_errors_are_clear():
    with pytest.raises(EnvError, match="unknown env id"):
        PPO(_tiny("NoSuchEnv-v0"))
    with pytest.raises(ConfigError, match="unknown config field"):
        PPO(_tiny(), learnig_rate=1.0)


def test_load_refuses_missing_or_foreign_directories(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        PPO.load(tmp_path / "nothing")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "state.json").write_text('{"kind": "something-else"}')
    with pytest.raises(CheckpointError, match="not a ppokit control checkpoint"):
        PPO.load(tmp_path / "m")
    (tmp_path / "m" / "state.json").write_text('{"kind": "ppokit.control", "format": 99, "config": {}}')
    with pytest.raises(CheckpointError, match="format 99 is not supported"):
        PPO.load(tmp_path / "m")


def test_periodic_checkpoints_keep_the_newest(tmp_path):
    agent = PPO(_tiny(total_steps=128 * 5, checkpoint_every=1, keep_checkpoints=2))
    agent.learn(run_dir=tmp_path / "ck")
    kept = sorted(p.name for p in (tmp_path / "ck" / "checkpoints").iterdir())
    assert kept == ["update_000000000004", "update_000000000005"]
    assert (tmp_path / "ck" / "checkpoints" / kept[-1] / "optimizer.pt").is_file()
    restored = PPO.load(tmp_path / "ck" / "checkpoints" / kept[-1])
    assert restored.global_step == 640


def test_debugging_checklist_warns_when_updates_overshoot(tmp_path, caplog):
    import logging

    caplog.set_level(logging.WARNING, logger="ppokit")
    # A trust region of ±0.1 % with a large step: nearly every ratio lands outside it.
    agent = PPO(_tiny(learning_rate=0.01, clip_range=0.001, num_epochs=10, total_steps=128 * 6, lr_schedule="constant"))
    agent.learn(run_dir=tmp_path / "hot")
    rows = [json.loads(line) for line in (tmp_path / "hot" / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        flagged = any("clip fraction" in w for w in row.get("warnings", []))
        assert flagged == (row["clip_fraction"] > 0.6)
    assert sum(r["clip_fraction"] > 0.6 for r in rows[:3]) == 3, [r["clip_fraction"] for r in rows]
    console = [rec.getMessage() for rec in caplog.records if rec.name == "ppokit"]
    assert len([m for m in console if "clip fraction" in m]) == 1  # reported once, after 3 updates in a row
    assert console[0].startswith("update 3:")


def test_gentle_updates_raise_no_warning(tmp_path):
    agent = PPO(_tiny(total_steps=128 * 4))
    agent.learn(run_dir=tmp_path / "calm")
    rows = [json.loads(line) for line in (tmp_path / "calm" / "metrics.jsonl").read_text().splitlines()]
    assert not any(w for r in rows for w in r.get("warnings", []) if "approx KL" in w or "clip fraction" in w)
