"""SuperSuit's vector envs given to the control front end (issue 32): refused in one line that names the
class, what it lacks and where a PettingZoo env trains instead (``ppokit.MultiAgentPPO``), on every way
an env reaches ``PPO`` (an object, a factory, an id at the command line, ``evaluate(env=...)``).

Why a refusal and not a path: SuperSuit 3.11's ``pettingzoo_env_to_vec_env_v1`` and
``concat_vec_envs_v1`` subclass Gymnasium's ``VectorEnv`` but keep Stable-Baselines3's conventions,
which :func:`test_supersuit_still_keeps_sb3_conventions` pins down. Without the fix, ``evaluate(env=...)``
failed with an AttributeError from inside ppokit and the other refusals named no way forward.

CI installs the interop extra: there a missing SuperSuit fails these tests; elsewhere they skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from ppokit import PPO, ControlConfig
from ppokit.errors import EnvError

ROOT = Path(__file__).resolve().parents[2]

#: The whole refusal of a SuperSuit vector env, as the CLI prints it after ``ppokit: error:``.
REFUSAL = (
    "env '<object MarkovVectorEnv>': the vector env MarkovVectorEnv has no 'single_observation_space' or "
    "'single_action_space', which ppokit needs of a Gymnasium VectorEnv (num_envs, single_observation_space, "
    "single_action_space, batched observation_space and action_space); SuperSuit's vector envs keep "
    "Stable-Baselines3's conventions (the unbatched observation_space, a list of infos, an undeclared same-step "
    "reset), which ppokit cannot train on: give the PettingZoo env to ppokit.MultiAgentPPO "
    "(docs/guides/multi-agent.md)")


def _needs(module: str):
    try:
        return __import__(module)
    except Exception as err:  # noqa: BLE001 - absent, or broken by what is installed beside it
        if os.environ.get("CI"):
            raise
        pytest.skip(f"needs {module} (pip install 'ppokit[interop]'): {err}")


def two_walkers(length: int = 3):
    """A PettingZoo ParallelEnv of two agents whose observation is [step, agent index]; every agent earns 1
    a step, and the episode is truncated for all of them after ``length`` steps."""
    from pettingzoo import ParallelEnv

    class TwoWalkers(ParallelEnv):
        metadata = {"name": "two_walkers"}
        render_mode = None

        def __init__(self) -> None:
            self.possible_agents = ["walker_0", "walker_1"]

        def observation_space(self, agent):
            return gym.spaces.Box(-100, 100, (2,), np.float32)

        def action_space(self, agent):
            return gym.spaces.Discrete(2)

        def _obs(self):
            return {a: np.array([self.t, i], np.float32) for i, a in enumerate(self.possible_agents)}

        def reset(self, seed=None, options=None):
            self.agents, self.t = list(self.possible_agents), 0
            return self._obs(), {a: {} for a in self.agents}

        def step(self, actions):
            self.t += 1
            ended = self.t >= length
            out = (self._obs(), {a: 1.0 for a in self.agents}, {a: False for a in self.agents},
                   {a: ended for a in self.agents}, {a: {} for a in self.agents})
            self.agents = [] if ended else self.agents
            return out

    return TwoWalkers()


def supersuit_vector_env(**kwargs):
    """An env id for the command line: ``tests.control.test_supersuit:supersuit_vector_env``."""
    import supersuit

    return supersuit.pettingzoo_env_to_vec_env_v1(two_walkers(**kwargs))


def _vector_env(kind: str):
    ss = _needs("supersuit")
    _needs("pettingzoo")
    if kind == "markov":
        return ss.pettingzoo_env_to_vec_env_v1(two_walkers())
    if kind == "black_death":
        return ss.pettingzoo_env_to_vec_env_v1(ss.black_death_v3(two_walkers()))
    if kind == "concat":
        return ss.concat_vec_envs_v1(ss.pettingzoo_env_to_vec_env_v1(two_walkers()), 2, num_cpus=0)
    if kind == "concat_processes":
        return ss.concat_vec_envs_v1(ss.pettingzoo_env_to_vec_env_v1(two_walkers()), 2, num_cpus=2)
    assert kind == "stable_baselines3"
    _needs("stable_baselines3")
    return ss.concat_vec_envs_v1(ss.pettingzoo_env_to_vec_env_v1(two_walkers()), 1, base_class="stable_baselines3")


def _config(tmp_path: Path, name: str) -> ControlConfig:
    return ControlConfig(num_envs=2, num_steps=16, num_minibatches=1, num_epochs=1, total_steps=32, progress=False,
                         tensorboard=False, eval_episodes=0, run_dir=str(tmp_path / name))


KINDS = {  # what each base class and wrapper makes: the class the refusal names
    "markov": "MarkovVectorEnv", "black_death": "MarkovVectorEnv", "concat": "ConcatVecEnv",
    "concat_processes": "ProcConcatVec", "stable_baselines3": "SB3VecEnvWrapper"}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_supersuit_vector_env_is_refused_in_one_line(tmp_path, kind):
    env = _vector_env(kind)
    try:
        with pytest.raises(EnvError) as refused:
            PPO(_config(tmp_path, kind), env=env)
        with pytest.raises(EnvError) as made:  # the same env from a factory
            PPO(_config(tmp_path, kind + "_factory"), env=lambda: env)
    finally:
        env.close()
    for message in (str(refused.value), str(made.value)):
        assert KINDS[kind] in message and "\n" not in message
        assert message.endswith("give the PettingZoo env to ppokit.MultiAgentPPO (docs/guides/multi-agent.md)")
    if kind == "markov":
        assert str(refused.value) == REFUSAL


def test_evaluate_refuses_a_supersuit_vector_env_in_one_line(tmp_path):
    """It raised AttributeError: 'MarkovVectorEnv' object has no attribute 'single_observation_space'."""
    from tests.envs import CountingEnv

    agent = PPO(_config(tmp_path, "run"), env=CountingEnv)
    agent.learn()
    env = _vector_env("markov")
    with pytest.raises(EnvError) as refused:
        agent.evaluate(2, env=env)
    assert str(refused.value) == REFUSAL


def test_a_pettingzoo_env_is_pointed_to_the_multi_agent_front_end(tmp_path):
    _needs("pettingzoo")
    with pytest.raises(EnvError, match=r"a PettingZoo env has many agents: train it with ppokit\.MultiAgentPPO"):
        PPO(_config(tmp_path, "parallel"), env=two_walkers())


def test_the_command_line_refuses_a_supersuit_vector_env_in_one_line(tmp_path):
    _needs("supersuit")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "ppokit", "train", "tests.control.test_supersuit:supersuit_vector_env",
                          "--total-steps", "32", "--no-progress", "--run-dir", str(tmp_path / "run")],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("ppokit: error: env id 'tests.control.test_supersuit:supersuit_vector_env': the factory "
                           "returned MarkovVectorEnv, not a gymnasium.Env; SuperSuit's vector envs keep")
    assert line.endswith("ppokit.MultiAgentPPO (docs/guides/multi-agent.md)")


def test_supersuit_still_keeps_sb3_conventions():
    """The evidence for the refusal, on the installed SuperSuit: no single spaces, ``observation_space``
    one agent's, infos a list, and the reset in the same step as the episode's end with the last
    observation in ``info['terminal_observation']``, its metadata (the PettingZoo env's) naming no
    autoreset mode. If SuperSuit adopts Gymnasium's vector API, this fails: revisit the refusal."""
    env = _vector_env("markov")
    assert not hasattr(env, "single_observation_space") and env.observation_space.shape == (2,)
    assert "autoreset_mode" not in env.metadata
    obs, infos = env.reset(seed=0)
    assert isinstance(infos, list)
    env.step(np.zeros(2, np.int64))
    env.step(np.zeros(2, np.int64))
    obs, _, _, truncated, infos = env.step(np.zeros(2, np.int64))  # the third step ends the episode
    assert truncated.tolist() == [1, 1] and obs[:, 0].tolist() == [0, 0]  # already reset, the same step
    assert [info["terminal_observation"][0] for info in infos] == [3, 3]
