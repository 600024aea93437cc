"""Env objects given in code are saved so evaluation and resume rebuild the same env, or refuse (issue 31,
item 1); every vector env kind is evaluated or refused before training (items 5, 6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

from ppokit import PPO, ControlConfig
from ppokit.control.envs.make import consent_flags
from ppokit.errors import EnvError, UntrustedCodeError
from tests.envs import PositionOnlyCartPole, ScaledReward

ROOT = Path(__file__).resolve().parents[2]
NEXT_STEP = gym.vector.AutoresetMode.NEXT_STEP


def _config(tmp_path, name: str, **changes) -> ControlConfig:
    values = dict(num_envs=2, num_steps=16, num_minibatches=1, num_epochs=1, total_steps=32, progress=False,
                  tensorboard=False, eval_episodes=2, run_dir=str(tmp_path / name))
    values.update(changes)
    return ControlConfig(**values)


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "ppokit", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def _five_steps() -> gym.Env:
    return gym.make("CartPole-v1", max_episode_steps=5)  # no policy drops the pole in 5 steps: returns are 5


def test_a_sync_vector_env_is_rebuilt_with_its_time_limit(tmp_path):
    vec = gym.vector.SyncVectorEnv([_five_steps] * 2, autoreset_mode=NEXT_STEP)
    agent = PPO(_config(tmp_path, "sync"), env=vec).learn()
    assert agent.config.env_id == "CartPole-v1" and agent.config.env_spec["max_episode_steps"] == 5
    loaded = PPO.load(tmp_path / "sync")  # a registered env with Gymnasium's wrappers: no consent needed
    result = loaded.evaluate(4)
    assert result["mean_return"] == 5.0 and result["std_return"] == 0.0  # TimeLimit(5), as trained
    assert "TimeLimit" in str(loaded.env_source.single())
    # The command line rebuilds the same env.
    out = _cli("eval", tmp_path / "sync", "--episodes", 3)
    assert out.returncode == 0, out.stderr
    [written] = (tmp_path / "sync" / "evals").glob("eval_*.json")
    assert json.loads(written.read_text())["mean_return"] == 5.0
    # Resuming makes the same envs from the spec, in Python and on the command line.
    resumed = PPO.resume(tmp_path / "sync", total_steps=64)
    assert "TimeLimit" in str(resumed.env.envs[0]) and resumed.env.envs[0].spec.max_episode_steps == 5
    resumed.close()
    out = _cli("resume", tmp_path / "sync", "--total-steps", 64, "--no-progress")
    assert out.returncode == 0, out.stderr


def test_a_wrapped_instance_keeps_its_wrappers_after_save_and_load(tmp_path):
    env = gym.wrappers.TimeAwareObservation(gym.make("CartPole-v1", max_episode_steps=7))
    PPO(_config(tmp_path, "wrapped"), env=env).learn()
    loaded = PPO.load(tmp_path / "wrapped")
    assert "TimeAwareObservation<TimeLimit" in str(loaded.env_source.single())
    assert loaded.evaluate(3)["mean_return"] == 7.0  # five observation values, the policy's, and the limit


def test_an_env_that_cannot_be_rebuilt_is_recorded_so_and_refused(tmp_path):
    doubled = gym.wrappers.TransformReward(gym.make("CartPole-v1"), lambda r: 2 * r)  # a lambda: no spec to save
    by_hand = gym.wrappers.TimeLimit(CartPoleEnv(), 50)  # no gym.make: no spec at all
    unrecorded = PositionOnlyCartPole()  # a wrapper that does not record its arguments (no RecordConstructorArgs)

    class Local(ScaledReward):  # records its arguments, but its name leads nowhere importable
        pass

    local = Local(gym.make("CartPole-v1"), scale=1.0)
    for name, env in (("lambda", doubled), ("hand", by_hand), ("unrecorded", unrecorded), ("local", local)):
        agent = PPO(_config(tmp_path, name), env=env).learn()
        assert agent.config.env_id == "<object CartPoleEnv>" and agent.config.env_spec is None
        with pytest.raises(EnvError, match=r"cannot rebuild exactly; pass it again \(PPO.load\(path, env=\.\.\.\)\)"):
            PPO.load(tmp_path / name, trust=True).evaluate(1)
        with pytest.raises(EnvError, match="pass it again"):
            PPO.resume(tmp_path / name, trust=True, total_steps=64)
    assert PPO.load(tmp_path / "lambda", env=doubled).evaluate(1)["mean_return"] > 0
    out = _cli("eval", tmp_path / "hand", "--trust")
    assert out.returncode != 0 and "pass it again" in out.stderr and "Traceback" not in out.stderr


def test_a_saved_spec_naming_code_needs_consent(tmp_path):
    env = ScaledReward(_five_steps(), scale=2.0)
    agent = PPO(_config(tmp_path, "code"), env=env).learn()
    assert agent.config.env_spec["additional_wrappers"][0]["entry_point"].endswith(":ScaledReward")
    with pytest.raises(UntrustedCodeError, match="ScaledReward"):
        PPO.load(tmp_path / "code").evaluate(1)
    # Naming the env again is consent too, and the printed resume command carries it.
    assert consent_flags(agent.config.env_id, agent.config.env_spec, []) == " --env CartPole-v1"
    assert PPO.load(tmp_path / "code", env_id="CartPole-v1").evaluate(2)["mean_return"] == 10.0
    assert PPO.load(tmp_path / "code", trust=True).evaluate(2)["mean_return"] == 10.0


@pytest.mark.parametrize("kind", ["async", "make_vec"])
def test_async_and_make_vec_envs_are_evaluated_at_the_end(tmp_path, kind):
    if kind == "async":
        vec = gym.vector.AsyncVectorEnv([_five_steps] * 2, autoreset_mode=NEXT_STEP)
    else:
        vec = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="vector_entry_point", max_episode_steps=5)
    try:
        agent = PPO(_config(tmp_path, kind), env=vec).learn()
    finally:
        vec.close()
    assert (tmp_path / kind / "eval.json").exists()
    assert agent.config.env_id == "CartPole-v1" and agent.config.env_spec["max_episode_steps"] == 5
    assert PPO.load(tmp_path / kind).evaluate(2)["mean_return"] == 5.0


def test_a_watching_vector_wrapper_keeps_the_spec(tmp_path):
    vec = gym.wrappers.vector.RecordEpisodeStatistics(gym.vector.SyncVectorEnv([_five_steps] * 2,
                                                                               autoreset_mode=NEXT_STEP))
    agent = PPO(_config(tmp_path, "watched"), env=vec).learn()
    assert agent.config.env_spec["max_episode_steps"] == 5
    assert PPO.load(tmp_path / "watched").evaluate(2)["mean_return"] == 5.0


def test_a_vector_env_that_cannot_be_evaluated_is_refused_before_training(tmp_path):
    vec = gym.wrappers.vector.NormalizeObservation(gym.vector.SyncVectorEnv([_five_steps] * 2, autoreset_mode=NEXT_STEP))
    with pytest.raises(EnvError, match="NormalizeObservation.*eval_episodes=0"):
        PPO(_config(tmp_path, "wrapped_vec"), env=vec)
    PPO(_config(tmp_path, "no_eval", eval_episodes=0), env=vec).learn()  # evaluation explicitly off: it trains


class NoSingleSpaces(gym.vector.VectorEnv):
    """Like SuperSuit's vector envs: batched spaces, but no single_observation_space."""

    def __init__(self, infos_as_list: bool = False) -> None:
        self.num_envs, self.infos_as_list = 2, infos_as_list
        self.observation_space = gym.spaces.Box(-1, 1, (2, 3), np.float32)
        self.action_space = gym.spaces.MultiDiscrete([2, 2])
        self.single_action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        infos = [{}, {}] if self.infos_as_list else {}
        return np.zeros((2, 3), np.float32), infos

    def step(self, actions):
        infos = [{}, {}] if self.infos_as_list else {}
        return np.zeros((2, 3), np.float32), np.zeros(2), np.zeros(2, bool), np.zeros(2, bool), infos


def test_a_vector_env_lacking_what_ppokit_needs_is_refused_in_one_line(tmp_path):
    with pytest.raises(EnvError, match="NoSingleSpaces has no 'single_observation_space'"):
        PPO(_config(tmp_path, "bare", eval_episodes=0), env=NoSingleSpaces())
    listed = NoSingleSpaces(infos_as_list=True)
    listed.single_observation_space = gym.spaces.Box(-1, 1, (3,), np.float32)
    listed.metadata = {"autoreset_mode": NEXT_STEP}
    with pytest.raises(EnvError, match="infos as a list"):
        PPO(_config(tmp_path, "listed", eval_episodes=0), env=listed).learn()


class Batched(gym.vector.VectorEnv):
    """A hand-made vector env with every attribute ppokit reads, whose episodes last 3 steps and reset on
    the step after (next-step); ``metadata`` as given (a class default ``{}`` declares no mode)."""

    def __init__(self, metadata=None) -> None:
        self.num_envs = 2
        self.single_observation_space = gym.spaces.Box(-10, 10, (2,), np.float32)
        self.single_action_space = gym.spaces.Discrete(2)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, 2)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, 2)
        if metadata is not None:
            self.metadata = metadata
        self.t = np.zeros(2)

    def _infos(self):
        return {}

    def reset(self, *, seed=None, options=None):
        self.t[:] = 0
        return np.repeat(self.t[:, None], 2, 1).astype(np.float32), self._infos()

    def step(self, actions):
        self.t = np.where(self.t >= 3, 0, self.t + 1)
        return np.repeat(self.t[:, None], 2, 1).astype(np.float32), np.ones(2), self.t >= 3, np.zeros(2, bool), \
            self._infos()


class ListedInfos(Batched):
    def _infos(self):
        return [{}, {}]  # SB3's and SuperSuit's convention


def test_a_vector_env_that_declares_no_autoreset_mode_is_refused_in_one_line(tmp_path):
    """Issue 32: ppokit cannot tell how such an env resets (SuperSuit's reset in the same step and declare
    nothing), so it asks instead of assuming next-step; declared, the same env trains and evaluates."""
    with pytest.raises(EnvError, match=r"Batched declares no metadata\['autoreset_mode'\].*AutoresetMode.NEXT_STEP"):
        PPO(_config(tmp_path, "undeclared", eval_episodes=0), env=Batched())
    agent = PPO(_config(tmp_path, "declared", eval_episodes=0), env=Batched({"autoreset_mode": NEXT_STEP}))
    agent.learn()
    assert agent.global_step == 32
    assert agent.evaluate(2, env=Batched({"autoreset_mode": NEXT_STEP}))["mean_return"] == 3.0


def test_evaluate_checks_the_env_it_is_given(tmp_path):
    """Issue 32: ``evaluate(env=...)`` read ``single_observation_space`` unchecked (an AttributeError from
    inside ppokit); it now checks the env as training does, and plays one gymnasium.Env as a vector env of
    one."""
    from tests.envs import CountingEnv

    agent = PPO(_config(tmp_path, "run", eval_episodes=0), env=CountingEnv)
    agent.learn()
    with pytest.raises(EnvError, match="NoSingleSpaces has no 'single_observation_space'"):
        agent.evaluate(2, env=NoSingleSpaces())
    with pytest.raises(EnvError, match="declares no metadata"):
        agent.evaluate(2, env=Batched())
    with pytest.raises(EnvError, match="infos as a list"):
        agent.evaluate(2, env=ListedInfos({"autoreset_mode": NEXT_STEP}))
    with pytest.raises(EnvError, match=r"evaluate\(env=<object int>\): expected a Gymnasium vector env"):
        agent.evaluate(2, env=42)
    assert agent.evaluate(2, env=Batched({"autoreset_mode": NEXT_STEP}))["mean_return"] == 3.0
    result = agent.evaluate(3, env=CountingEnv(length=5))
    assert result["mean_return"] == 5.0 and result["episodes"] == 3


@pytest.mark.parametrize("names", ["spec_entry_point", "spec_wrapper", "env_wrappers"])
def test_a_saved_spec_or_wrapper_naming_code_imports_nothing_without_consent(tmp_path, names):
    """The saved file is edited to name code that leaves a trace when imported (tests/trace_code.py)."""
    vec = gym.vector.SyncVectorEnv([_five_steps] * 2, autoreset_mode=NEXT_STEP)
    PPO(_config(tmp_path, "run", eval_episodes=0), env=vec).learn()
    state_file = tmp_path / "run" / "model" / "state.json"
    state = json.loads(state_file.read_text())
    config = state["config"]
    if names == "spec_entry_point":
        config["env_spec"]["entry_point"] = "tests.trace_code:make_env"
    elif names == "spec_wrapper":
        config["env_spec"]["additional_wrappers"].append(
            {"name": "Traced", "entry_point": "tests.trace_code:Traced", "kwargs": {}})
    else:
        config["env_wrappers"] = ["tests.trace_code:Traced"]
    state_file.write_text(json.dumps(state))
    trace = tmp_path / "trace"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PPOKIT_TRACE": str(trace)}
    out = subprocess.run([sys.executable, "-m", "ppokit", "eval", str(tmp_path / "run"), "--episodes", "1"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 2 and "tests.trace_code" in out.stderr and "--trust" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and not trace.exists()
