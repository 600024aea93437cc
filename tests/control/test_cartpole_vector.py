"""ppokit's CartPole vector env against Gymnasium's: the same outputs, bit for bit, step by step."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from gymnasium.envs.classic_control import cartpole

from ppokit.control.envs.make import make_vector_env
from ppokit.control.envs.state import capture_env_state, restore_env_state
from ppokit.envs import cartpole_vector
from ppokit.envs.cartpole_vector import MOST_ENVS, CartPoleVectorEnv


def _same(a: Any, b: Any, where: str) -> None:
    assert type(a) is type(b), where
    if isinstance(a, np.ndarray):
        # bytes, not values: -0.0 and 0.0 differ, and so do dtypes and shapes
        assert (a.dtype, a.shape, a.tobytes()) == (b.dtype, b.shape, b.tobytes()), where
    else:
        assert a == b, where


def _side_by_side(num_envs: int, steps: int, integrator: str = "euler", **kwargs: Any) -> int:
    ours, theirs = CartPoleVectorEnv(num_envs, **kwargs), cartpole.CartPoleVectorEnv(num_envs, **kwargs)
    ours.kinematics_integrator = theirs.kinematics_integrator = integrator
    for a, b in zip(ours.reset(seed=7), theirs.reset(seed=7)):
        _same(a, b, "reset")
    actions = np.random.default_rng(0)
    resets = 0
    for t in range(steps):
        if t == steps // 2:  # a reset in mid-episode, with new bounds, is Gymnasium's own
            for a, b in zip(ours.reset(seed=8, options={"low": -0.2, "high": 0.2}),
                            theirs.reset(seed=8, options={"low": -0.2, "high": 0.2})):
                _same(a, b, "second reset")
        action = actions.integers(0, 2, num_envs)
        for i, (a, b) in enumerate(zip(ours.step(action), theirs.step(action))):
            _same(a, b, f"step {t}, output {i}")
        _same(ours.state, theirs.state, f"step {t}, state")
        _same(ours.steps, theirs.steps, f"step {t}, episode lengths")
        resets += int(ours.prev_done.sum())
    return resets


@pytest.mark.parametrize("num_envs", [1, 4, MOST_ENVS, MOST_ENVS + 1])
def test_steps_as_gymnasium_does_through_terminations_truncations_and_resets(num_envs: int) -> None:
    resets = _side_by_side(num_envs, 600, max_episode_steps=40)
    assert resets > num_envs * 10  # the comparison went through many resets


@pytest.mark.parametrize("kwargs", [{"sutton_barto_reward": True}, {"integrator": "semi-implicit euler"},
                                    {"max_episode_steps": 5}])
def test_the_options_step_as_gymnasium_does(kwargs: dict[str, Any]) -> None:
    assert _side_by_side(4, 300, **kwargs) > 0


def test_an_action_out_of_the_space_is_refused_as_gymnasium_refuses_it() -> None:
    env = CartPoleVectorEnv(2)
    env.reset(seed=0)
    with pytest.raises(AssertionError, match="invalid"):
        env.step(np.array([0, 2]))


def test_training_and_evaluation_envs_of_the_gymnasium_id_are_this_env() -> None:
    env = make_vector_env("CartPole-v1", 4, {"sutton_barto_reward": True})
    assert type(env.unwrapped) is CartPoleVectorEnv
    assert env.unwrapped._sutton_barto_reward and env.unwrapped.max_episode_steps == 500
    assert env.spec is not None and env.spec.id == "CartPole-v1"
    assert env.spec.vector_entry_point == cartpole_vector.ENTRY_POINT
    assert make_vector_env("CartPole-v0", 2).unwrapped.max_episode_steps == 200
    sync = make_vector_env("CartPole-v1", 2, vectorization="sync")
    assert not isinstance(sync.unwrapped, cartpole.CartPoleVectorEnv)


def test_a_gymnasium_release_not_read_keeps_its_own_cartpole(monkeypatch: pytest.MonkeyPatch) -> None:
    import gymnasium

    assert cartpole_vector.stands_in()  # the release the side-by-side tests ran against
    monkeypatch.setattr(gymnasium, "__version__", "1.9.0")
    assert type(make_vector_env("CartPole-v1", 4).unwrapped) is cartpole.CartPoleVectorEnv


def test_a_checkpointed_state_of_gymnasiums_env_resumes_in_this_one_and_back() -> None:
    """Checkpoints written before ppokit stepped CartPole itself name Gymnasium's class."""
    theirs, ours = cartpole.CartPoleVectorEnv(4), CartPoleVectorEnv(4)
    theirs.reset(seed=3)
    ours.reset(seed=99)
    for _ in range(30):
        theirs.step(np.array([1, 0, 1, 1]))
    saved, why = capture_env_state(theirs)
    assert saved is not None, why
    restore_env_state(ours, saved)
    for t in range(200):
        action = np.array([t % 2, 1, 0, (t // 3) % 2])
        for i, (a, b) in enumerate(zip(ours.step(action), theirs.step(action))):
            _same(a, b, f"step {t}, output {i}")
    back, _ = capture_env_state(ours)
    restore_env_state(theirs, back)
