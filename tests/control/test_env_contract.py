"""Envs that break the Gymnasium API (issue 30, class 5): every kind of broken answer × every way an
env reaches ppokit (an id in-process and in async workers, through the CLI; an instance, a class
and a SyncVectorEnv through the library) is one line naming the env, what it returned and what
Gymnasium expects, at its first reset or step, never a traceback from inside Gymnasium.

Without the fix, all 25 cases failed (a ValueError about unpacking or broadcasting from inside
Gymnasium, or an EnvError naming only that ValueError inside an async worker)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from ppokit import PPO, ControlConfig
from ppokit.cli.main import main
from ppokit.errors import EnvError


class _Good(gym.Env):
    observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, False, False, {}


class OldStepEnv(_Good):
    def step(self, action):  # the old gym API: done, no truncated
        return np.zeros(2, np.float32), 0.0, False, {}


class OldResetEnv(_Good):
    def reset(self, *, seed=None, options=None):  # the old gym API: no info
        return np.zeros(2, np.float32)


class WrongShapeEnv(_Good):
    def step(self, action):
        return np.zeros(3, np.float32), 0.0, False, False, {}


class WrongDtypeEnv(_Good):
    def reset(self, *, seed=None, options=None):
        return np.array(["a", "b"]), {}


class WrongKeysEnv(_Good):
    observation_space = spaces.Dict({"position": spaces.Box(-1.0, 1.0, (2,), np.float32)})

    def reset(self, *, seed=None, options=None):
        return {"pos": np.zeros(2, np.float32)}, {}


#: the env, and what its one line must say
BROKEN = {
    "step returns 4 values": (OldStepEnv, "step() returned 4 values; Gymnasium envs return 5 (obs, reward, "
                                          "terminated, truncated, info)"),
    "reset returns the observation alone": (OldResetEnv, "reset() returned a value of type ndarray, not a tuple; "
                                                         "Gymnasium envs return 2 (obs, info)"),
    "observation of the wrong shape": (WrongShapeEnv, "step() returned an observation of shape (3,), not (2,)"),
    "observation of the wrong dtype": (WrongDtypeEnv, "reset() returned values of type <U1"),
    "dict observation with other keys": (WrongKeysEnv, "reset() returned a dict with keys ['pos'], not ['position']"),
}
SMALL = dict(num_envs=2, num_steps=8, num_minibatches=1, num_epochs=1, total_steps=16, progress=False,
             tensorboard=False, eval_episodes=0)


def _cli(vectorization: str):
    def go(env_class, tmp_path, capsys) -> str:
        env_id = f"{__name__}:{env_class.__name__}"
        code = main(["train", env_id, "--no-preset", "--run-dir", str(tmp_path / "run"), "--no-progress",
                     *[f"--set={k}={v}" for k, v in SMALL.items() if k != "progress"],
                     f"--set=vectorization={vectorization}"])
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("ppokit: error: ")]
        assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
        assert env_id in errors[0]
        return errors[0]
    return go


def _library(make):
    def go(env_class, tmp_path, capsys) -> str:
        with pytest.raises(EnvError) as info:
            PPO(ControlConfig(run_dir=str(tmp_path / "run"), **SMALL), env=make(env_class)).learn()
        assert "\n" not in str(info.value)
        return str(info.value)
    return go


GIVEN = {
    "id, sync": _cli("sync"),
    "id, async workers": _cli("async"),
    "an instance": _library(lambda cls: cls()),
    "a class": _library(lambda cls: cls),
    "a SyncVectorEnv": _library(lambda cls: gym.vector.SyncVectorEnv(
        [cls, cls], autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)),
}


@pytest.mark.parametrize("given", list(GIVEN))
@pytest.mark.parametrize("broken", list(BROKEN))
def test_a_broken_env_answer_is_one_line_naming_it(broken, given, tmp_path, capsys):
    env_class, expected = BROKEN[broken]
    message = GIVEN[given](env_class, tmp_path, capsys)
    assert expected in message
    assert "Traceback" not in message


def test_a_good_env_is_not_slowed_by_its_check_after_the_first_step(tmp_path):
    env = gym.vector.SyncVectorEnv([_Good, _Good], autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    agent = PPO(ControlConfig(run_dir=str(tmp_path / "run"), **SMALL), env=env).learn()
    assert all(type(sub) is _Good for sub in env.envs)  # the checking proxies took themselves out
    assert agent.global_step == 16
