"""Separate critic observations (issue 14): the env gives the critic a privileged observation under
the Dict key "critic_obs"; the critic reads it, the actor never sees it."""

from __future__ import annotations

import json

import numpy as np

from ppokit import PPO, ControlConfig


def _config(tmp_path, name, **changes) -> ControlConfig:
    values = dict(env_id="tests.envs:PrivilegedCriticEnv", num_envs=4, num_steps=64, num_minibatches=4, num_epochs=4,
                  total_steps=4 * 64 * 15, learning_rate=3e-3, gamma=0.9, progress=False, tensorboard=False,
                  eval_episodes=2, run_dir=str(tmp_path / name))
    values.update(changes)
    return ControlConfig(**values)


def test_the_critic_reads_its_own_observation_and_the_actor_does_not(tmp_path):
    agent = PPO(_config(tmp_path, "run"))
    assert agent.policy.spec.critic_obs_shape == (1,) and agent.observation_space.shape == (1,)
    assert agent.policy.actor_trunk.linears[0].in_features == 1  # the actor: [t / length] only
    assert not agent.algorithm.fast_update  # the fast path declares it does not implement it
    agent.learn()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # The return is the hidden bonus times the steps left: only a critic that sees the bonus explains it.
    assert rows[-1]["explained_variance"] > 0.9, [round(r["explained_variance"], 2) for r in rows]
    raw = {"observation": np.array([0.5], np.float32), "critic_obs": np.array([1.0], np.float32)}
    assert agent.predict(raw["observation"]) in (0, 1)  # acting needs only the actor's part

    loaded = PPO.load(tmp_path / "run", trust=True)
    assert loaded.policy.spec.critic_obs_shape == (1,)
    assert loaded.evaluate(2)["episodes"] == 2
    resumed = PPO.resume(tmp_path / "run", trust=True, total_steps=4 * 64 * 16).learn()
    assert resumed.num_updates == 16
