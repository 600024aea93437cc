"""The multi-agent front end: the shared update is control's on stacked rows, agents without a step are
masked, MAPPO's critic reads the global state, exact resume, AEC envs, and bad input in one line."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("pettingzoo")

from ppokit.configuration import replace as replace_config  # noqa: E402
from ppokit.control.algorithm import PPOAlgorithm  # noqa: E402
from ppokit.control.rollout.storage import Rollout  # noqa: E402
from ppokit.errors import ConfigError, EnvError, UntrustedCodeError  # noqa: E402
from ppokit.multiagent import MultiAgentConfig, MultiAgentPPO  # noqa: E402
from ppokit.multiagent.rollout import GroupBuffers  # noqa: E402
from tests.multiagent.envs import LEAK  # noqa: E402

QUIET = {"progress": False, "tensorboard": False, "eval_episodes": 0}
PLAIN = {"normalize_obs": False, "normalize_reward": False, "normalize_value": False}


def _spy(agent: MultiAgentPPO) -> dict[int, Any]:
    """Keep each group's buffers and last values as the collector hands them to GAE."""
    assert agent.collector is not None
    collector = agent.collector
    seen: dict[int, Any] = {}
    batch, last_values = collector._batch, collector._last_values

    def keep_last(g: int) -> np.ndarray:
        seen[("last", g)] = values = last_values(g)  # type: ignore[index]
        return values

    def keep(g: int, b: GroupBuffers, initial: torch.Tensor) -> Any:
        seen[g] = copy.deepcopy(b)
        return batch(g, b, initial)

    collector._batch, collector._last_values = keep, keep_last  # type: ignore[method-assign]
    return seen


def test_the_shared_update_is_control_update_on_the_agents_stacked() -> None:
    """A parameter-shared group is single-agent PPO on its agents' rows: control's PPOAlgorithm.update
    on those rows as a control rollout gives the same weights, bit for bit."""
    pytest.importorskip("mpe2")
    config = MultiAgentConfig(env_id="mpe2.simple_spread_v3", env_kwargs={"max_cycles": 1000}, critic="ippo",
                              num_envs=2, num_steps=16, num_minibatches=4, num_epochs=2, total_steps=32, **PLAIN, **QUIET)
    agent = MultiAgentPPO(config)
    group = agent.groups[0]
    assert group.agents == ["agent_0", "agent_1", "agent_2"]
    seen = _spy(agent)
    reference_policy = copy.deepcopy(group.policy)
    reference = PPOAlgorithm(group.config, reference_policy, torch.device("cpu"))
    reference.optimizer.load_state_dict(group.algorithm.optimizer.state_dict())
    assert agent.collector is not None
    batches = agent.collector.collect()
    b = seen[0]
    assert b.acted.all()  # every agent acts at every step of these long episodes
    rollout = Rollout(
        obs=torch.from_numpy(b.obs), actions=torch.from_numpy(b.actions), logp=torch.from_numpy(b.logp),
        values=torch.from_numpy(b.values), rewards=torch.from_numpy(b.raw_rewards.astype(np.float32)),
        terminated=torch.from_numpy(b.terminated), truncated=torch.zeros_like(torch.from_numpy(b.terminated)),
        valid=torch.from_numpy(b.acted), last_value=torch.from_numpy(seen[("last", 0)]))  # type: ignore[index]
    torch.manual_seed(5)
    group.algorithm.train(batches[0], 0.0)
    torch.manual_seed(5)
    reference.update(rollout, 0.0)
    for (name, mine), theirs in zip(group.policy.state_dict().items(), reference_policy.state_dict().values()):
        assert torch.equal(mine, theirs), name


def test_agents_that_finished_or_have_not_joined_have_no_step_and_their_rewards_are_not_learned() -> None:
    config = MultiAgentConfig(env_id="tests.multiagent.envs:leaky", critic="ippo", num_envs=2, num_steps=12,
                              total_steps=24, **PLAIN, **QUIET)
    agent = MultiAgentPPO(config)
    seen = _spy(agent)
    assert agent.collector is not None
    batches = agent.collector.collect()
    b = seen[0]
    rows = {a: [e * 3 + j for e in range(2)] for j, a in enumerate(agent.groups[0].agents)}  # early, late, steady
    # Episodes of 6 steps: 'early' acts at steps 0-1 of each, 'late' at 3-5, 'steady' at 0-5.
    expected = {"early": [0, 1], "late": [3, 4, 5], "steady": [0, 1, 2, 3, 4, 5]}
    for name, row_list in rows.items():
        for row in row_list:
            acted = np.flatnonzero(b.acted[:, row]).tolist()
            assert acted == [t + 6 * k for k in range(2) for t in expected[name]], (name, acted)
    assert b.raw_rewards.max() < LEAK  # the finished agent's "reward" never reaches a row
    assert b.terminated[1, rows["early"][0]] and not b.terminated[5, rows["steady"][0]]
    assert b.ended[5, rows["steady"][0]] and b.end_values[5, rows["steady"][0]] != 0  # truncation bootstraps
    assert batches[0].rows == int(b.acted.sum()) == 2 * 2 * (2 + 3 + 6)
    assert float(batches[0].returns.abs().max()) < 20

    # bootstrap_truncation: false ends a truncated life there, as a termination does.
    agent = MultiAgentPPO(replace_config(config, bootstrap_truncation=False))
    seen = _spy(agent)
    assert agent.collector is not None
    agent.collector.collect()
    b = seen[0]
    assert b.ended[5, rows["steady"][0]] and b.terminated[5, rows["steady"][0]] and (b.end_values == 0).all()


def test_mappo_critic_reads_the_global_state() -> None:
    config = MultiAgentConfig(env_id="tests.multiagent.envs:leaky", critic="mappo", agent_id=True, num_envs=2,
                              num_steps=6, total_steps=12, **PLAIN, **QUIET)
    agent = MultiAgentPPO(config)
    group = agent.groups[0]
    assert group.spec.critic_obs_shape == (5 + 3,)  # the env's state() and the one-hot agent index
    seen = _spy(agent)
    assert agent.collector is not None
    agent.collector.collect()
    critic = seen[0].critic
    np.testing.assert_array_equal(critic[:, :, :5], np.broadcast_to((7.0 + np.arange(6) % 6)[:, None, None],
                                                                    (6, 6, 5)))
    np.testing.assert_array_equal(critic[0, :, 5:], np.tile(np.eye(3, dtype=np.float32), (2, 1)))


def test_mappo_without_a_state_reads_every_agent_observation() -> None:
    config = MultiAgentConfig(env_id="tests.multiagent.envs:leaky", env_kwargs={"state_size": None}, critic="mappo",
                              num_envs=1, num_steps=6, total_steps=6, **PLAIN, **QUIET)
    agent = MultiAgentPPO(config)
    assert agent.groups[0].spec.critic_obs_shape == (9,)
    seen = _spy(agent)
    assert agent.collector is not None
    agent.collector.collect()
    b = seen[0]
    # At step 0 'late' has not joined: its third of the global input is zeros; the others' are theirs.
    np.testing.assert_array_equal(b.critic[0, 0, 3:6], 0.0)
    np.testing.assert_array_equal(b.critic[0, 0, 0:3], b.obs[0, 0])
    np.testing.assert_array_equal(b.critic[0, 0, 6:9], b.obs[0, 2])


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "model" / "model.safetensors"))


def test_a_resumed_run_is_the_uninterrupted_run(tmp_path: Path) -> None:
    pytest.importorskip("mpe2")
    config = MultiAgentConfig(env_id="mpe2.simple_spread_v3", num_envs=2, num_steps=40, num_minibatches=4,
                              num_epochs=2, total_steps=320, checkpoint_every=2, **QUIET)
    MultiAgentPPO(config).learn(run_dir=tmp_path / "straight")
    # Stopped after two updates (as by Ctrl-C: the loop checkpoints, the schedules still aim at 320 steps).
    MultiAgentPPO(config).learn(run_dir=tmp_path / "stopped", callback=lambda row: row["update"] < 2)
    MultiAgentPPO.resume(tmp_path / "stopped").learn()
    straight, again = _weights(tmp_path / "straight"), _weights(tmp_path / "stopped")
    assert straight.keys() == again.keys()
    for name in straight:
        assert torch.equal(straight[name], again[name]), name
    rows = [line for line in (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4


def test_aec_envs_are_converted_or_driven_turn_by_turn_with_their_masks() -> None:
    pytest.importorskip("mpe2")
    parallelizable = MultiAgentPPO(MultiAgentConfig(env_id="mpe2.simple_spread_v3:env", num_envs=1, num_steps=30,
                                                    total_steps=30, **QUIET))
    assert type(parallelizable.envs[0]).__name__ == "ParallelAgents"  # type: ignore[index]
    pytest.importorskip("pettingzoo.classic.connect_four_v3")
    game = MultiAgentPPO(MultiAgentConfig(env_id="pettingzoo.classic.connect_four_v3", critic="ippo", num_envs=2,
                                          num_steps=40, total_steps=80, **QUIET))
    assert type(game.envs[0]).__name__ == "TurnBasedAgents"  # type: ignore[index]
    seen = _spy(game)
    assert game.collector is not None
    game.collector.collect()
    b = seen[0]
    assert b.masks is not None
    # One agent acts per step in each copy, and never a column the board has filled.
    assert (b.acted.reshape(40, 2, 2).sum(axis=2) == 1).all()
    taken = np.take_along_axis(b.masks, b.actions[..., None], axis=2)[..., 0]
    assert taken[b.acted].all()
    assert game.collector.episodes.total > 0  # games end, and reset
    assert set(np.unique(b.raw_rewards[b.ended])) <= {-1.0, 0.0, 1.0}


def test_a_shared_group_with_different_spaces_is_refused_naming_the_agent() -> None:
    with pytest.raises(EnvError, match=r"agent 'late'.*action space.*shared group 'shared'"):
        MultiAgentPPO(MultiAgentConfig(env_id="tests.multiagent.envs:mixed", policies="shared", **QUIET))
    auto = MultiAgentPPO(MultiAgentConfig(env_id="tests.multiagent.envs:mixed", critic="ippo", num_envs=1, **QUIET))
    assert [g.agents for g in auto.groups] == [["early"], ["late"], ["steady"]]
    grouped = MultiAgentPPO(MultiAgentConfig(env_id="tests.multiagent.envs:mixed", critic="ippo", num_envs=1,
                                             policies={"both": ["early", "steady"], "other": ["late"]}, **QUIET))
    assert [g.agents for g in grouped.groups] == [["early", "steady"], ["late"]]
    with pytest.raises(ConfigError, match="agent 'late' is in no group"):
        MultiAgentPPO(MultiAgentConfig(env_id="tests.multiagent.envs:leaky", policies={"a": ["early", "steady"]},
                                       **QUIET))


def test_an_agent_without_an_observation_is_refused_naming_it() -> None:
    agent = MultiAgentPPO(MultiAgentConfig(env_id="tests.multiagent.envs:silent", critic="ippo", num_envs=1,
                                           num_steps=4, total_steps=4, **QUIET))
    assert agent.collector is not None
    with pytest.raises(EnvError, match="agent 'steady' is live after a step but returned no observation"):
        agent.collector.collect()


def test_loading_a_run_whose_env_is_not_pettingzoos_own_needs_consent(tmp_path: Path) -> None:
    config = MultiAgentConfig(env_id="tests.multiagent.envs:leaky", critic="ippo", num_envs=1, num_steps=12,
                              total_steps=12, **QUIET)
    MultiAgentPPO(config).learn(run_dir=tmp_path / "run")
    untrusted = MultiAgentPPO.load(tmp_path / "run")  # the weights alone: nothing is imported yet
    with pytest.raises(UntrustedCodeError, match="would import module 'tests.multiagent.envs'"):
        untrusted.evaluate(1)
    loaded = MultiAgentPPO.load(tmp_path / "run", trust=True)
    assert loaded.evaluate(2)["episodes"] == 2


@pytest.mark.learning
def test_a_shared_policy_learns_the_rewarded_action(tmp_path: Path) -> None:
    """Every step rewards action 1: the shared policy of the three agents (finishing early, joining late)
    learns it within a few thousand steps."""
    config = MultiAgentConfig(env_id="tests.multiagent.envs:leaky", critic="mappo", num_envs=4, num_steps=32,
                              total_steps=4096, learning_rate=3e-3, seed=3, **QUIET)
    agent = MultiAgentPPO(config)
    before = agent.evaluate(10, deterministic=False)["mean_return"]
    agent.learn(run_dir=tmp_path / "run")
    after = agent.evaluate(10)
    # Best return: early 2, late 3, steady 6 steps of reward 1 -> mean over agents 11/3.
    assert after["mean_return"] >= 0.95 * 11 / 3 > before, (before, after)


@pytest.mark.parametrize("env_id", ["mpe2.simple_spread_v3", "mpe2.simple_speaker_listener_v4",
                                    "mpe2.simple_reference_v3", "pettingzoo.classic.connect_four_v3"])
def test_an_env_copy_state_restores_exactly_references_included(env_id: str) -> None:
    """Saved mid-episode into JSON and put back into a copy reset with another seed, the copy steps on
    exactly as the original (MPE agents point at goals among the landmarks: those references come back)."""
    import json

    from ppokit.multiagent.checkpointing import capture_envs, restore_envs
    from ppokit.multiagent.envs import as_agent_env, make_env

    pytest.importorskip(env_id.split(".")[0] if env_id.startswith("mpe2") else "pettingzoo.classic")
    original, other = (as_agent_env(make_env(env_id, {})) for _ in range(2))
    original.reset(seed=3)
    other.reset(seed=11)
    rng = np.random.default_rng(0)

    def play(env: Any, steps: int) -> list[str]:
        trace = []
        for _ in range(steps):
            actions = {}
            for agent, obs in env.acting.items():
                mask = obs["action_mask"] if isinstance(obs, dict) else None
                choices = np.flatnonzero(mask) if mask is not None else np.arange(env.env.action_space(agent).n)
                actions[agent] = int(rng.choice(choices))
            result = env.step(actions)
            trace.append(repr((sorted(env.acting), result.rewards, result.ended)))
            if result.over:
                env.reset()
        return trace

    play(original, 4)
    saved, why = capture_envs([original], env_id)
    assert why is None and saved is not None
    saved = json.loads(json.dumps(saved))
    restore_envs([other], saved)
    state = rng.bit_generator.state
    expected = play(original, 40)
    rng.bit_generator.state = state
    assert play(other, 40) == expected


def test_an_env_object_or_a_function_making_one_trains_and_evaluates(tmp_path: Path) -> None:
    from tests.multiagent.envs import LeakyDeathEnv

    for given in (LeakyDeathEnv(length=4), lambda: LeakyDeathEnv(length=4)):
        agent = MultiAgentPPO(MultiAgentConfig(critic="ippo", num_envs=2, num_steps=8, total_steps=16, **QUIET),
                              env=given)
        assert agent.config.env_id.startswith("<object")
        agent.learn(run_dir=tmp_path / str(id(given)))
        assert agent.evaluate(2)["mean_length"] == 4.0
    with pytest.raises(EnvError, match="was an object given in code.*MultiAgentPPO.load\\(path, env=make_env\\)"):
        MultiAgentPPO.load(tmp_path / str(id(given))).evaluate(1)


def test_image_observations_train_with_the_cnn_and_each_agent_own_critic(tmp_path: Path) -> None:
    agent = MultiAgentPPO(MultiAgentConfig(env_id="tests.multiagent.envs:images", num_envs=1, num_steps=12,
                                           total_steps=12, num_minibatches=2, num_epochs=1, **QUIET))
    assert agent.config.critic == "ippo"  # adapted: the CNN is one trunk for actor and critic
    assert agent.groups[0].spec.encoder == "cnn"
    agent.learn(run_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="group 'shared' sees images"):
        MultiAgentPPO(MultiAgentConfig(env_id="tests.multiagent.envs:images", critic="mappo", **QUIET))
