"""Masks in sb3-contrib's convention (issue 31, item 2): an ``action_masks()`` method on the env or any
wrapper, per sub-env of a Sync or Async vector env, read after every reset and step in training,
evaluation and videos; checked like any other mask; agreeing with a keyed mask when an env gives both;
and a warning, once, for masks a run does not use.

Without the fix, sb3-contrib's own maskable envs trained unmasked (thousands of invalid actions in a
few thousand steps), the strict envs below raised on the first masked action, and nothing warned."""

from __future__ import annotations

import json
import logging
import re

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from ppokit import PPO, ControlConfig
from ppokit.envs.torch_cartpole import TorchCartPole
from ppokit.errors import EnvError, ObservationError

contrib_envs = pytest.importorskip("sb3_contrib.common.envs")


class CountedDiscrete(contrib_envs.InvalidActionEnvDiscrete):
    """sb3-contrib's env, counting the masked actions it is given (a SyncVectorEnv steps it in this process)."""

    taken = 0
    invalid = 0

    def step(self, action):
        CountedDiscrete.taken += 1
        CountedDiscrete.invalid += int(int(action) in self.invalid_actions)
        return super().step(action)


class CountedMultiDiscrete(contrib_envs.InvalidActionEnvMultiDiscrete):
    taken = 0
    invalid = 0

    def step(self, action):
        offsets = np.concatenate([[0], np.cumsum(self.action_space.nvec)[:-1]])
        CountedMultiDiscrete.taken += 1
        CountedMultiDiscrete.invalid += int(any(int(o + a) in self.invalid_actions for o, a in zip(offsets, action)))
        return super().step(action)


def _config(tmp_path, name="run", **fields) -> ControlConfig:
    base = dict(num_envs=4, num_steps=128, num_minibatches=4, num_epochs=4, total_steps=4 * 128 * 2, progress=False,
                tensorboard=False, eval_episodes=4, run_dir=str(tmp_path / name), seed=0)
    return ControlConfig(**{**base, **fields})


@pytest.mark.parametrize("env, kwargs", [(CountedDiscrete, {"dim": 80, "n_invalid_actions": 60}),
                                         (CountedMultiDiscrete, {"dims": [4, 4], "n_invalid_actions": 3})],
                         ids=["discrete", "multidiscrete"])
def test_sb3_contrib_maskable_envs_train_and_evaluate_masked_with_no_wrapper(tmp_path, env, kwargs):
    env.taken = env.invalid = 0
    agent = PPO(_config(tmp_path, env_kwargs={**kwargs, "ep_length": 20}), env=env)
    assert agent.policy.spec.action_mask and agent.numpy_policy is None  # masked from the start, the torch path
    agent.learn()
    agent.evaluate(4, deterministic=False)
    assert env.taken > 1000 and env.invalid == 0
    assert json.loads((tmp_path / "run" / "model" / "state.json").read_text())["action_mask"] is True


@pytest.mark.learning
def test_masked_training_on_sb3_contribs_discrete_env_learns_what_unmasked_does_not(tmp_path):
    CountedDiscrete.taken = CountedDiscrete.invalid = 0
    config = _config(tmp_path, total_steps=8192, num_steps=256, eval_episodes=20,
                     env_kwargs={"dim": 80, "n_invalid_actions": 60})
    PPO(config, env=CountedDiscrete).learn()
    assert CountedDiscrete.invalid == 0
    # The env draws its states and invalid actions unseeded (sb3-contrib's), so the return varies from run
    # to run: masked runs scored 59-74 of 100, unmasked about 20; 45 keeps a wide margin on both sides.
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["mean_return"] >= 45


class StateEnv(gym.Env):
    """Its state (0-3) is the observation; episodes of 1 to 3 steps."""

    def __init__(self, render_mode=None, info_mask=None):
        self.observation_space, self.action_space = spaces.Discrete(4), spaces.Discrete(4)
        self.render_mode, self.info_mask = render_mode, info_mask

    def _out(self):
        info = {}
        if self.info_mask == "same":
            info = {"action_mask": np.arange(4) == self.state}
        elif self.info_mask == "other":
            info = {"action_mask": np.arange(4) == (self.state + 1) % 4}
        return self.state, info

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.length = 0, int(self.np_random.integers(1, 4))
        self.state = int(self.np_random.integers(4))
        return self._out()

    def step(self, action):
        self.t += 1
        self.state = int(self.np_random.integers(4))
        obs, info = self._out()
        return obs, 1.0, False, self.t >= self.length, info

    def render(self):
        return np.zeros((16, 16, 3), dtype=np.uint8)


class StateMasked(StateEnv):
    """The one allowed action is the state (``action_masks()``): a mask read before or after the
    state it belongs to allows a wrong action, which raises."""

    def step(self, action):
        if int(action) != self.state:
            raise RuntimeError(f"masked action {action} taken in state {self.state}")
        return super().step(action)

    def action_masks(self):
        return np.arange(4) == self.state


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_each_mask_belongs_to_the_observation_it_comes_with_across_autoresets(tmp_path, vectorization):
    """Next-step autoreset: the step that ends an episode returns its last observation and the reset
    step the next one's first; the method, called after each step, gives each its own mask."""
    agent = PPO(_config(tmp_path, vectorization=vectorization, eval_every=0), env=StateMasked)
    for _ in range(3):
        rollout = agent.collector.collect()  # a stale mask would raise in the env
        states = rollout.obs.argmax(-1)  # Discrete observations are one-hot
        assert torch.equal(rollout.masks, torch.nn.functional.one_hot(states, 4).bool())
    assert agent.evaluate(6)["episodes"] == 6
    agent.close()


def test_videos_read_the_method_too(tmp_path):
    agent = PPO(_config(tmp_path, eval_every=0), env=StateMasked)
    result = agent.evaluate(3, video_dir=tmp_path / "video")
    assert result["episodes"] == 3 and len(list((tmp_path / "video").glob("*.mp4"))) == 3


def test_the_method_is_found_on_any_wrapper(tmp_path):
    from sb3_contrib.common.wrappers import ActionMasker

    def make():
        env = gym.wrappers.TimeLimit(StateMasked(), 50)  # the method is not on the outermost wrapper
        inner = ActionMasker(env, lambda e: e.unwrapped.action_masks())
        return gym.wrappers.ClipReward(inner, -1.0, 1.0)

    agent = PPO(_config(tmp_path), env=make).learn()  # a masked action would raise
    assert agent.policy.spec.action_mask


def test_a_mask_in_two_places_must_be_the_same_mask(tmp_path):
    same = PPO(_config(tmp_path, "same", env_kwargs={"info_mask": "same"}), env=StateMasked)
    same.collector.collect()
    with pytest.raises(EnvError, match=r"env 0's info\['action_mask'\] and its action_masks\(\) give different masks "
                                       r"at step 0 \(\[\d\] vs \[\d\] allowed\)"):
        PPO(_config(tmp_path, "other", env_kwargs={"info_mask": "other"}), env=StateMasked)  # its first reset


class BadMethod(StateMasked):
    def action_masks(self):
        return "0001" if self.t >= 1 else super().action_masks()


class NoAction(StateMasked):
    def action_masks(self):
        return np.zeros(4, bool)


def test_masks_from_the_method_are_checked_like_any_other(tmp_path):
    agent = PPO(_config(tmp_path), env=BadMethod)
    with pytest.raises(EnvError, match=r"^env 0's action_masks\(\) at step 1 is a string"):
        agent.collector.collect()
    with pytest.raises(EnvError, match=r"^env 0's action_masks\(\) at step 0 allows no action"):
        PPO(_config(tmp_path, "empty"), env=NoAction)


def test_sub_envs_that_disagree_on_having_the_method_are_refused():
    from ppokit.control.envs.observations import has_mask_method

    envs = gym.vector.SyncVectorEnv([StateMasked, lambda: gym.wrappers.TimeLimit(StateEnv(), 5)])
    with pytest.raises(EnvError, match=r"sub-envs \[0\] of the vector env have an action_masks\(\) method and \[1\]"):
        has_mask_method(envs)


def test_predict_takes_sb3_contribs_keyword(tmp_path):
    agent = PPO(_config(tmp_path), env=StateMasked)
    env = gym.wrappers.TimeLimit(StateMasked(), 10)
    masks = env.get_wrapper_attr("action_masks")  # through the wrappers (Gymnasium 1 forwards no attribute)
    obs, _ = env.reset(seed=1)
    for deterministic in (True, False):
        assert agent.predict(obs, deterministic, action_masks=masks()) == obs
    with pytest.raises(ObservationError, match="action_mask and action_masks were both given"):
        agent.predict(obs, action_mask=masks(), action_masks=masks())
    agent.close()


def test_multibinary_actions_of_sb3_contrib_are_refused_in_one_line(tmp_path):
    with pytest.raises(EnvError, match=r"action space MultiBinary\(3\) is not supported"):
        PPO(_config(tmp_path, env_kwargs={"dims": 3}), env=contrib_envs.InvalidActionEnvMultiBinary)


# ---------------------------------------------------------------- masks the run does not use: one warning


class BoxActions(gym.Env):
    """Box actions, with a mask-like ``info`` key."""

    def __init__(self, info_key=None):
        self.observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.info_key = info_key

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {self.info_key: np.ones(2, bool)} if self.info_key else {}

    def step(self, action):
        self.t += 1
        info = {self.info_key: np.ones(2, bool)} if self.info_key else {}
        return np.zeros(2, np.float32), 0.0, False, self.t >= 5, info


class BoxActionsMasked(BoxActions):
    def action_masks(self):
        return np.ones(2, bool)


class KeyedElsewhere(StateEnv):
    """The mask in ``info["legal_actions"]`` or a Dict observation's ``"mask"``."""

    def __init__(self, where="info"):
        super().__init__()
        self.where = where
        if where == "obs":
            self.observation_space = spaces.Dict({"obs": spaces.Discrete(4), "mask": spaces.MultiBinary(4)})

    def _out(self):
        mask = (np.arange(4) == self.state).astype(np.int8)
        if self.where == "obs":
            return {"obs": self.state, "mask": mask}, {}
        return self.state, {"legal_actions": mask}


@pytest.mark.parametrize("env, kwargs, says", [
    (BoxActionsMasked, {}, r"has an action_masks\(\) method, but its action space Box.* takes no mask"),
    (BoxActions, {"info_key": "action_mask"}, r"info\['action_mask'\] looks like an action mask, but Box"),
    (KeyedElsewhere, {}, r"info\['legal_actions'\] looks like an action mask, but action_mask_key is 'action_mask': "
                         r"the run trains unmasked; set action_mask_key=legal_actions"),
    (KeyedElsewhere, {"where": "obs"}, r"Dict observation's key 'mask' looks like an action mask, but action_mask_key "
                                       r"is 'action_mask': .*set action_mask_key=mask"),
], ids=["method-with-box-actions", "info-key-with-box-actions", "another-info-key", "another-observation-key"])
def test_masks_a_run_does_not_use_are_warned_about_once(tmp_path, caplog, env, kwargs, says):
    with caplog.at_level(logging.WARNING, logger="ppokit"):
        PPO(_config(tmp_path, env_kwargs=kwargs, eval_every=0), env=env).learn()
    said = [r.getMessage() for r in caplog.records if "looks like an action mask" in r.getMessage()
            or "action_masks()" in r.getMessage()]
    assert len(said) == 1, said
    assert re.search(says, said[0]), said[0]


def test_the_key_named_is_used_and_nothing_is_warned(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ppokit"):
        agent = PPO(_config(tmp_path, action_mask_key="legal_actions"), env=KeyedElsewhere)
        rollout = agent.collector.collect()
    assert torch.equal(rollout.masks, torch.nn.functional.one_hot(rollout.obs.argmax(-1), 4).bool())
    assert not [r for r in caplog.records if "action mask" in r.getMessage()]
    agent.close()


class MaskedTorchCartPole(TorchCartPole):
    def action_masks(self):
        return torch.ones(self.num_envs, 2, dtype=torch.bool)


def test_a_torch_env_with_the_method_is_warned_about(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ppokit"):
        PPO(_config(tmp_path, eval_every=0), env=MaskedTorchCartPole)
    said = [r.getMessage() for r in caplog.records if "action_masks()" in r.getMessage()]
    assert len(said) == 1 and "torch envs train unmasked" in said[0], said
