"""The rollout never lets a transition or an advantage cross an episode boundary."""

import numpy as np
import pytest
import torch

from ppokit.control.agent import PPO
from ppokit.control.algorithm import make_batch
from ppokit.control.config import ControlConfig
from tests.core.test_advantages import reference_gae
from tests.envs import UnevenEpisodesEnv


def _agent(terminate: bool, num_envs: int = 1, **kw):
    # Raw observations and rewards, so the test can read the env's counters in the rollout.
    kw = {"normalize_obs": False, "normalize_reward": False, **kw}
    cfg = ControlConfig(
        env_id="tests.envs:CountingEnv", env_kwargs={"length": 3, "terminate": terminate},
        num_envs=num_envs, num_steps=8, num_minibatches=1, num_epochs=1, gamma=0.9, gae_lambda=0.8,
        progress=False, tensorboard=False, eval_episodes=0, **kw,
    )
    return PPO(cfg)


@pytest.mark.parametrize("terminate", [False, True])
def test_reset_steps_are_masked_and_boundaries_respected(terminate):
    agent = _agent(terminate)
    ro = agent.collector.collect()
    obs = ro.obs[:, 0].numpy()
    # Episode 0 is steps 0-2; step 3 is the env's reset step (input: the final obs [0, 3]).
    np.testing.assert_array_equal(obs[:, 1], [0, 1, 2, 3, 0, 1, 2, 3])
    np.testing.assert_array_equal(obs[:, 0], [0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(ro.valid[:, 0].numpy(), [1, 1, 1, 0, 1, 1, 1, 0])
    ends = (ro.terminated | ro.truncated)[:, 0].numpy()
    np.testing.assert_array_equal(ends, [0, 0, 1, 0, 0, 0, 1, 0])
    assert bool(ro.terminated[2, 0]) is terminate

    batch = make_batch(ro, agent.config.gamma, agent.config.gae_lambda)
    assert batch.obs.shape[0] == 6  # the two reset steps are dropped
    assert (batch.obs[:, 1] < 3).all()  # no final observation is ever trained on as a state

    values = ro.values[:, 0].double().numpy()
    with torch.no_grad():
        final_value = agent.policy.value(torch.tensor([[0.0, 3.0]])).item()
    final_values = np.zeros(8)
    final_values[2] = final_value
    final_values[6] = agent.policy.value(torch.tensor([[1.0, 3.0]])).item()
    rewards = ro.rewards[:, 0].double().numpy()
    expected = reference_gae(
        rewards, values, terminated=ends.astype(bool) & terminate, truncated=ends.astype(bool) & (not terminate),
        final_values=final_values, last_value=ro.last_value[0].item(), gamma=0.9, lam=0.8,
    )
    valid = ro.valid[:, 0].numpy().astype(bool)
    np.testing.assert_allclose(batch.advantages.double().numpy(), expected[valid], rtol=1e-5, atol=1e-6)


def test_episode_statistics_count_only_real_steps():
    agent = _agent(terminate=False, num_envs=2)
    agent.collector.collect()
    returns, lengths = agent.collector.episodes.last
    assert lengths == [3, 3, 3, 3] and returns == [3.0, 3.0, 3.0, 3.0]


def test_an_env_that_records_its_episodes_is_believed_over_the_rewards_ppokit_sees():
    # Training episodes end every 2 steps (a lost life) and rewards are halved, but the env's own
    # statistics (below those wrappers) say a game is 6 steps scoring 6: that is what gets logged.
    cfg = ControlConfig(env_id="tests.envs:game_with_lives", num_envs=2, num_steps=21, num_minibatches=1, num_epochs=1,
                        normalize_obs=False, normalize_reward=False, progress=False, tensorboard=False, eval_episodes=0)
    agent = PPO(cfg)
    ro = agent.collector.collect()
    assert int((ro.terminated & ro.valid).sum()) > 4  # the lives ended training episodes
    returns, lengths = agent.collector.episodes.last
    assert returns == [6.0] * 4 and lengths == [6] * 4


def test_episode_returns_are_the_rewards_summed_as_they_came_across_rollouts():
    # Float rewards, episodes that span rollouts, both kinds of end: the log must hold each
    # episode's exact sequential sum and length, in the order the episodes ended (step, then env).
    UnevenEpisodesEnv.made = 0
    cfg = ControlConfig(env_id="tests.envs:UnevenEpisodesEnv", num_envs=3, num_steps=5, num_minibatches=1,
                        num_epochs=1, normalize_obs=False, normalize_reward=False, progress=False,
                        tensorboard=False, eval_episodes=0, vectorization="sync")
    agent = PPO(cfg)
    logged: list[tuple[float, int]] = []
    for _ in range(6):
        agent.collector.collect()
        logged += list(zip(*agent.collector.episodes.last))
    envs = agent.env.unwrapped.envs
    expected = sorted((e for env in envs for e in env.unwrapped.log), key=lambda e: (e[0], e[1]))
    assert len(expected) >= 10
    assert logged == [(r, n) for _, _, r, n in expected]
