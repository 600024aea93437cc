"""Invalid-action masks are checked wherever they enter (issue 30, classes 4 and 5): every entry point
(``predict``'s ``action_mask``, a Dict observation given to ``predict``, ``info["action_mask"]`` and a
Dict observation's key while training, ``info`` during an evaluation) × every kind of bad mask (a
string, one element, the wrong length, a batch for one observation, None, all false mid-episode,
integers or floats other than 0 and 1) is refused in one line naming the mask, the expected size and,
for an env, the env index and step; never broadcast to "all allowed", never cast silently. Booleans,
0/1 integers and 0/1 floats are accepted, and so is an empty mask on the step that ends an episode.

Without the fix, 38 of these 57 cases (4 more are skipped) failed: the bad masks were broadcast, cast or ignored (the
policy acted and trained as if every action were allowed), or raised a bare NumPy error."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from ppokit import PPO, ControlConfig
from ppokit.errors import EnvError, ObservationError

N = 8
BAD = {
    "a string": "00010000",
    "one element": [True],
    "the wrong length": [True] * (N - 1),
    "a batch for one observation": np.ones((2, N), dtype=bool),
    "None": None,
    "all false mid-episode": np.zeros(N, dtype=bool),
    "integers other than 0 and 1": np.full(N, 2, dtype=np.int64),
    "floats other than 0 and 1": np.full(N, 0.5),
}
GOOD = {
    "0/1 integers": np.array([0, 0, 1, 0, 0, 0, 0, 0], dtype=np.int64),
    "0/1 floats": np.array([0, 0, 1, 0, 0, 0, 0, 0], dtype=np.float64),
    "booleans": np.arange(N) == 2,
}
#: what the one line must say, per bad kind
SAYS = {"a string": "string", "one element": "1 entries", "the wrong length": f"{N - 1} entries",
        "a batch for one observation": "16 entries", "None": "None", "all false mid-episode": "allows no action",
        "integers other than 0 and 1": "holds 2", "floats other than 0 and 1": "holds 0.5"}
SAYS_PREDICT = {**SAYS, "one element": "shape (1,)", "the wrong length": f"shape ({N - 1},)",
                "a batch for one observation": f"shape (2, {N})"}


class MaskEnv(gym.Env):
    """Gives ``mask`` (from step ``at`` on; a good mask before) in ``info`` or in a Dict observation;
    ``ends``: the step that returns it also ends the episode. Raises on a masked action taken."""

    def __init__(self, mask=None, where="info", at=1, ends=False):
        self.mask, self.where, self.at, self.ends = mask, where, at, ends
        inner = spaces.Box(0.0, 1.0, (1,), np.float32)
        self.observation_space = (spaces.Dict({"observation": inner, "action_mask": spaces.MultiBinary(N)})
                                  if where == "obs" else inner)
        self.action_space = spaces.Discrete(N)
        self.t = 0

    def _out(self):
        mask = self.mask if self.t >= self.at else np.arange(N) < 3
        obs = np.array([self.t / 8], np.float32)
        if self.where == "obs":
            return {"observation": obs, "action_mask": mask}, {}
        return obs, {"action_mask": mask}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._out()

    def step(self, action):
        if self.t < self.at and int(action) >= 3:
            raise RuntimeError(f"masked action {action} taken")
        self.t += 1
        obs, info = self._out()
        return obs, 0.0, self.ends and self.t >= self.at, self.t >= 6, info


SMALL = dict(num_envs=2, num_steps=8, num_minibatches=1, num_epochs=1, total_steps=16, progress=False,
             tensorboard=False, eval_episodes=0)


def _train(where):
    def go(mask, tmp_path, **env):
        PPO(ControlConfig(run_dir=str(tmp_path / "run"), **SMALL), env=MaskEnv(mask, where, **env)).learn()
    return go


def _evaluate(mask, tmp_path, **env):
    agent = PPO(ControlConfig(run_dir=str(tmp_path / "run"), **SMALL), env=lambda: MaskEnv(mask, **env))
    agent.evaluate(episodes=2)


def _predict(mask, tmp_path, **env):
    agent = PPO(ControlConfig(run_dir=str(tmp_path / "run"), **SMALL), env=MaskEnv())
    assert agent.predict(np.array([0.5], np.float32), action_mask=mask) == 2


def _predict_dict(mask, tmp_path, **env):
    agent = PPO(ControlConfig(run_dir=str(tmp_path / "run"), **SMALL), env=MaskEnv(where="obs"))
    assert agent.predict({"observation": np.array([0.5], np.float32), "action_mask": mask}) == 2


ENV_ENTRIES = {"info while training": _train("info"), "a Dict observation while training": _train("obs"),
               "info during an evaluation": _evaluate}
PREDICT_ENTRIES = {"predict(action_mask=...)": _predict, "predict(a Dict observation)": _predict_dict}


@pytest.mark.parametrize("kind", list(BAD))
@pytest.mark.parametrize("entry", list(ENV_ENTRIES) + list(PREDICT_ENTRIES))
def test_a_bad_mask_is_one_line_naming_it(entry, kind, tmp_path):
    if entry in PREDICT_ENTRIES and kind == "None":
        pytest.skip("predict's action_mask=None means no mask")
    if entry == "a Dict observation while training" and kind == "a string":
        pytest.skip("Gymnasium's vector env cannot batch a string into a MultiBinary observation")
    go = {**ENV_ENTRIES, **PREDICT_ENTRIES}[entry]
    expected = ObservationError if entry in PREDICT_ENTRIES else EnvError
    with pytest.raises(expected) as info:
        go(BAD[kind], tmp_path)
    message = str(info.value)
    assert "\n" not in message and "action_mask" in message
    if entry in PREDICT_ENTRIES:
        assert SAYS_PREDICT[kind] in message
    elif "under key 'action_mask'" not in message:  # else the observation's own check caught it first
        assert SAYS[kind] in message and "env 0" in message and "at step 1" in message
    if "entries" in SAYS.get(kind, "") and entry not in PREDICT_ENTRIES and "under key" not in message:
        assert f"needs {N} booleans, one per action" in message


@pytest.mark.parametrize("kind", list(GOOD))
@pytest.mark.parametrize("entry", list(ENV_ENTRIES) + list(PREDICT_ENTRIES))
def test_booleans_and_0_1_numbers_are_masks(entry, kind, tmp_path):
    if entry == "a Dict observation while training" and kind == "0/1 floats":
        pytest.skip("a float mask does not fit a MultiBinary observation (the observation check says so)")
    go = {**ENV_ENTRIES, **PREDICT_ENTRIES}[entry]
    go(GOOD[kind], tmp_path, at=0)


@pytest.mark.parametrize("entry", list(ENV_ENTRIES))
def test_an_empty_mask_on_the_step_that_ends_the_episode_is_allowed(entry, tmp_path):
    ENV_ENTRIES[entry](np.zeros(N, dtype=bool), tmp_path, ends=True)


def test_a_multidiscrete_mask_names_the_sum_of_nvec_and_each_dimension_needs_an_action(tmp_path):
    from tests.envs import LowestValidEnv

    agent = PPO(ControlConfig(run_dir=str(tmp_path / "run"), **SMALL), env=LowestValidEnv(multi=True))
    obs = np.array([0.5], np.float32)
    with pytest.raises(ObservationError, match=r"expected \(10,\) for one observation \(10 booleans, the sum of "
                                               r"nvec \[8, 2\]\)"):
        agent.predict(obs, action_mask=np.ones(8, dtype=bool))
    with pytest.raises(ObservationError, match="allows no action for dimension 1"):
        agent.predict(obs, action_mask=np.r_[np.ones(8, dtype=bool), np.zeros(2, dtype=bool)])
    with pytest.raises(ObservationError, match="row 1 allows no action"):
        agent.predict(np.stack([obs, obs]), action_mask=np.r_[[np.ones(10, bool)], [np.zeros(10, bool)]])


class _TwoKeys(gym.Env):
    """A Dict observation of two parts beside its mask: the policy sees the two flattened."""

    observation_space = spaces.Dict({"a": spaces.Box(-1.0, 1.0, (2,), np.float32), "b": spaces.Discrete(3),
                                     "action_mask": spaces.MultiBinary(4)})
    action_space = spaces.Discrete(4)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return {"a": np.zeros(2, np.float32), "b": 1, "action_mask": np.array([0, 1, 0, 0], np.int8)}, {}

    def step(self, action):
        return self.reset()[0], 0.0, False, False, {}


def test_predict_reads_a_dict_observation_as_the_env_returns_it_one_or_a_batch(tmp_path):
    agent = PPO(ControlConfig(run_dir=str(tmp_path / "run"), **SMALL), env=_TwoKeys())
    # one, with float64 values (not exactly the space's dtype) and the mask in it
    assert agent.predict({"a": np.zeros(2), "b": 1, "action_mask": np.array([0, 1, 0, 0])}) == 1
    batch = {"a": np.zeros((3, 2), np.float32), "b": np.array([0, 1, 2]), "action_mask": np.array([[0, 0, 1, 0]] * 3)}
    assert agent.predict(batch).tolist() == [2, 2, 2]
    with pytest.raises(ObservationError, match=r"keys \['a', 'c'\]; the policy reads \['a', 'b'\]"):
        agent.predict({"a": np.zeros(2), "c": 1})


class _QuietThenEmpty(gym.Env):
    """No info at steps 1 and 2, then a mask allowing nothing at step 3."""

    observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = spaces.Discrete(4)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {"action_mask": np.ones(4, bool)}

    def step(self, action):
        self.t += 1
        return np.zeros(1, np.float32), 0.0, False, False, {} if self.t < 3 else {"action_mask": np.zeros(4, bool)}


def test_the_step_named_counts_the_steps_without_info_too(tmp_path):
    config = ControlConfig(run_dir=str(tmp_path / "run"), **{**SMALL, "num_envs": 1})
    with pytest.raises(EnvError, match=r"env 0's info\['action_mask'\] at step 3 allows no action"):
        PPO(config, env=_QuietThenEmpty()).learn()
