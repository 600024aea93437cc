"""Tiny environments for tests, importable as ``tests.envs:ClassName`` env ids."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import RecordConstructorArgs


class CountingEnv(gym.Env):
    """Observation = [episode index, step within the episode]; ends after ``length`` steps.

    ``terminate=True`` ends episodes by termination, else by truncation (a time limit).
    Reward = 1 per step, so an episode's return is its length.
    """

    def __init__(self, length: int = 3, terminate: bool = False):
        self.length = length
        self.terminate = terminate
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self.episode = -1
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode += 1
        self.t = 0
        return np.array([self.episode, self.t], dtype=np.float32), {}

    def step(self, action):
        self.t += 1
        end = self.t >= self.length
        obs = np.array([self.episode, self.t], dtype=np.float32)
        return obs, 1.0, end and self.terminate, end and not self.terminate, {}


class TinyImageEnv(gym.Env):
    """A 12x12 uint8 image with a bright pixel left or right; the right action earns 1. 8 steps."""

    def __init__(self):
        self.observation_space = spaces.Box(0, 255, shape=(12, 12, 1), dtype=np.uint8)
        self.action_space = spaces.Discrete(2)
        self.t = 0
        self.side = 0

    def _obs(self):
        img = np.zeros((12, 12, 1), dtype=np.uint8)
        img[6, 1 if self.side == 0 else 10, 0] = 255
        return img

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.side = int(self.np_random.integers(2))
        return self._obs(), {}

    def step(self, action):
        reward = 1.0 if int(action) == self.side else 0.0
        self.t += 1
        self.side = int(self.np_random.integers(2))
        return self._obs(), reward, False, self.t >= 8, {}


class MultiDiscreteMatchEnv(gym.Env):
    """Observation is a one-hot pair of targets; the MultiDiscrete action earns 0.5 per match. 10 steps."""

    def __init__(self):
        self.observation_space = spaces.Box(0, 1, shape=(6,), dtype=np.float32)
        self.action_space = spaces.MultiDiscrete([3, 3])
        self.t = 0
        self.target = np.zeros(2, dtype=np.int64)

    def _obs(self):
        obs = np.zeros(6, dtype=np.float32)
        obs[self.target[0]] = 1
        obs[3 + self.target[1]] = 1
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.target = self.np_random.integers(3, size=2)
        return self._obs(), {}

    def step(self, action):
        reward = 0.5 * float(np.sum(np.asarray(action) == self.target))
        self.t += 1
        self.target = self.np_random.integers(3, size=2)
        return self._obs(), reward, False, self.t >= 10, {}


class CrashingEnv(gym.Env):
    """Steps normally until ``crash_at`` steps, then raises (``mode='raise'``) or kills its own
    process (``mode='exit'``), as a buggy or segfaulting env would."""

    def __init__(self, crash_at: int = 5, mode: str = "raise"):
        self.crash_at = crash_at
        self.mode = mode
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, dtype=np.float32), {}

    def step(self, action):
        self.t += 1
        if self.t >= self.crash_at:
            if self.mode == "exit":
                import os

                os._exit(3)
            raise RuntimeError(f"simulator diverged at step {self.t}")
        return np.zeros(2, dtype=np.float32), 0.0, False, False, {}


class NaNRewardEnv(gym.Env):
    """Reward 1 per step until ``nan_after`` steps in total, then NaN: a reward bug showing up mid-run."""

    def __init__(self, nan_after: int = 100):
        self.nan_after = nan_after
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self.steps = 0
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.uniform(-1, 1, size=2).astype(np.float32), {}

    def step(self, action):
        self.steps += 1
        self.t += 1
        reward = float("nan") if self.steps > self.nan_after else 1.0
        return self.np_random.uniform(-1, 1, size=2).astype(np.float32), reward, False, self.t >= 20, {}


class KeyedMemoryEnv(gym.Env):
    """Keeps a count per action in a dict with int keys (and a tuple-keyed one): state that exact
    resume must save, although its keys are not strings. Observation = the two counts."""

    def __init__(self):
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self.counts = {0: 0, 1: 0}
        self.pairs = {(0, 0): 0.5}

    def _obs(self):
        return np.array([self.counts[0], self.counts[1]], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._obs(), {}

    def step(self, action):
        self.counts[int(action)] += 1
        self.pairs[(int(action), self.counts[int(action)] % 3)] = float(self.counts[1])
        total = self.counts[0] + self.counts[1]
        return self._obs(), float(action), False, total % 7 == 0, {}


class LowestValidEnv(gym.Env):
    """A task only learnable with action masks. Each step a random 2 to 4 of 8 actions are valid
    (``info["action_mask"]``); choosing the lowest valid one pays 1, another valid one 0, an invalid
    one ends the episode (``strict=True``: raises, so a test sees any masked action taken). The
    observation says nothing about which actions are valid, so only the mask can."""

    N = 8

    def __init__(self, length: int = 16, strict: bool = False, multi: bool = False, in_obs: bool = False):
        self.length, self.strict, self.multi, self.in_obs = length, strict, multi, in_obs
        inner = spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        if in_obs:
            self.observation_space = spaces.Dict({"observation": inner, "action_mask": spaces.MultiBinary(self.N)})
        else:
            self.observation_space = inner
        # multi: the same choice as MultiDiscrete([8, 2]); the second part is free (never masked).
        self.action_space = spaces.MultiDiscrete([self.N, 2]) if multi else spaces.Discrete(self.N)
        self.t = 0
        self.mask = np.ones(self.N, dtype=bool)

    def _draw(self):
        k = int(self.np_random.integers(2, 5))
        self.mask = np.zeros(self.N, dtype=bool)
        self.mask[self.np_random.choice(self.N, size=k, replace=False)] = True

    def _out(self):
        obs = np.array([self.t / self.length], dtype=np.float32)
        full = np.concatenate([self.mask, np.ones(2, dtype=bool)]) if self.multi else self.mask
        if self.in_obs:
            return {"observation": obs, "action_mask": self.mask.astype(np.int8)}, {}
        return obs, {"action_mask": full}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self._draw()
        return self._out()

    def step(self, action):
        choice = int(np.asarray(action).reshape(-1)[0])
        valid = bool(self.mask[choice])
        if not valid and self.strict:
            raise RuntimeError(f"masked action {choice} taken (valid: {np.flatnonzero(self.mask).tolist()})")
        reward = 1.0 if valid and choice == int(np.flatnonzero(self.mask)[0]) else 0.0
        self.t += 1
        self._draw()
        obs, info = self._out()
        return obs, reward, not valid, self.t >= self.length, info


class ModeEnv(gym.Env):
    """Copy the mode: each step a random mode in {0, 1, 2} is observed (as part of a Dict, a Tuple, or
    as a plain Discrete observation) and the action equal to it pays 1. Learnable only if the
    discrete part reaches the policy. ``with_mask``: a Dict observation also carries an
    ``action_mask`` that rules out one wrong action."""

    def __init__(self, kind: str = "dict", length: int = 20, with_mask: bool = False):
        self.kind, self.length, self.with_mask = kind, length, with_mask
        noise = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        if kind == "dict":
            parts = {"noise": noise, "mode": spaces.Discrete(3)}
            if with_mask:
                parts["action_mask"] = spaces.MultiBinary(3)
            self.observation_space = spaces.Dict(parts)
        elif kind == "tuple":
            self.observation_space = spaces.Tuple((spaces.Discrete(3), noise))
        else:
            self.observation_space = spaces.Discrete(3)
        self.action_space = spaces.Discrete(3)
        self.t, self.mode = 0, 0

    def _obs(self):
        noise = self.np_random.uniform(-1, 1, size=2).astype(np.float32)
        if self.kind == "dict":
            obs = {"noise": noise, "mode": self.mode}
            if self.with_mask:
                mask = np.ones(3, dtype=np.int8)
                mask[(self.mode + 1) % 3] = 0
                obs["action_mask"] = mask
            return obs
        if self.kind == "tuple":
            return (self.mode, noise)
        return self.mode

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.mode = 0, int(self.np_random.integers(3))
        return self._obs(), {}

    def step(self, action):
        reward = float(int(action) == self.mode)
        if self.with_mask and int(action) == (self.mode + 1) % 3:
            raise RuntimeError("masked action taken")
        self.t += 1
        self.mode = int(self.np_random.integers(3))
        return self._obs(), reward, False, self.t >= self.length, {}


class MixedActionEnv(gym.Env):
    """Choose a mode and a level at once: the action is (Discrete(3), Box(-1, 1, (1,))), a Tuple or
    (``as_dict``) a Dict. Each step pays 1 for the observed mode and 1 - |level - target| for the
    level, so both parts must be learned. Observation: [mode / 2, target]."""

    def __init__(self, length: int = 10, as_dict: bool = False):
        self.length, self.as_dict = length, as_dict
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        parts = {"mode": spaces.Discrete(3), "level": spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)}
        self.action_space = spaces.Dict(parts) if as_dict else spaces.Tuple((parts["mode"], parts["level"]))
        self.t, self.mode, self.target = 0, 0, 0.0

    def _obs(self):
        return np.array([self.mode / 2.0, self.target], dtype=np.float32)

    def _draw(self):
        self.mode = int(self.np_random.integers(3))
        self.target = float(self.np_random.uniform(-0.8, 0.8))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self._draw()
        return self._obs(), {}

    def step(self, action):
        mode, level = (action["mode"], action["level"]) if self.as_dict else action
        assert self.action_space.contains(action), action
        reward = float(int(mode) == self.mode) + 1.0 - abs(float(np.asarray(level).reshape(-1)[0]) - self.target)
        self.t += 1
        self._draw()
        return self._obs(), reward, False, self.t >= self.length, {}


class PrivilegedCriticEnv(gym.Env):
    """The critic may see what the actor may not: a Dict observation {"observation": [t / length],
    "critic_obs": [hidden bonus]}. The reward is the hidden bonus (random per episode), whatever the
    action, so only a critic that sees it can predict the return."""

    def __init__(self, length: int = 8):
        self.length = length
        self.observation_space = spaces.Dict({
            "observation": spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32),
            "critic_obs": spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32),
        })
        self.action_space = spaces.Discrete(2)
        self.t, self.bonus = 0, 0.0

    def _obs(self):
        return {"observation": np.array([self.t / self.length], np.float32),
                "critic_obs": np.array([self.bonus], np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.bonus = 0, float(self.np_random.choice([-1.0, 1.0]))
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), self.bonus, False, self.t >= self.length, {}


class PositionOnlyCartPole(gym.ObservationWrapper):
    """CartPole with the velocities hidden: only the cart position and the pole angle are observed,
    so a memoryless policy cannot tell which way the pole is moving."""

    def __init__(self, **kwargs):
        super().__init__(gym.make("CartPole-v1", **kwargs))
        low, high = self.env.observation_space.low[[0, 2]], self.env.observation_space.high[[0, 2]]
        self.observation_space = spaces.Box(low, high, dtype=np.float32)

    def observation(self, observation):
        return np.asarray(observation, dtype=np.float32)[[0, 2]]


class RankFaultEnv(gym.Env):
    """In a data-parallel run, the env of process ``fail_rank`` (its RANK) goes wrong after ``fail_at``
    steps: it raises (``mode='raise'``), kills its process (``'kill'``, as a segfault or the OOM
    killer would) or returns NaN rewards (``'nan'``); every other process's env is well."""

    def __init__(self, fail_rank: int = 1, fail_at: int = 50, mode: str = "raise"):
        import os

        self.failing = int(os.environ.get("RANK", "0")) == fail_rank
        self.fail_at, self.mode = fail_at, mode
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self.steps = 0
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.uniform(-1, 1, size=2).astype(np.float32), {}

    def step(self, action):
        import os
        import signal

        self.steps += 1
        self.t += 1
        reward = 1.0
        if self.failing and self.steps >= self.fail_at:
            if self.mode == "raise":
                raise RuntimeError(f"simulator diverged at step {self.steps}")
            if self.mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            reward = float("nan")
        return self.np_random.uniform(-1, 1, size=2).astype(np.float32), reward, False, self.t >= 20, {}


class _LifeLossEnds(gym.Wrapper):
    """Ends a training episode at each lost life (every ``every`` steps) while the game goes on,
    as Atari's episodic-life preprocessing does; halves rewards, as a reward transform would."""

    def __init__(self, env: gym.Env, every: int = 2):
        super().__init__(env)
        self.every, self.steps, self.game_over = every, 0, True

    def reset(self, **kwargs):
        if self.game_over:
            self.game_over = False
            return self.env.reset(**kwargs)
        return self.env.unwrapped.step_obs(), {}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        self.game_over = terminated or truncated
        return obs, 0.5 * reward, terminated or self.steps % self.every == 0, truncated, info


class _Game(CountingEnv):
    def step_obs(self):
        return np.array([self.episode, self.t], dtype=np.float32)


def game_with_lives(length: int = 6, every: int = 2) -> gym.Env:
    """A game of ``length`` steps (reward 1 each) that ends a training episode every ``every`` steps,
    with its own episode statistics recorded below those wrappers (the real game score)."""
    return _LifeLossEnds(gym.wrappers.RecordEpisodeStatistics(_Game(length=length, terminate=True)), every)


class UnevenEpisodesEnv(gym.Env):
    """Episodes of random length (1 to 6 steps) and random float rewards, ending by termination
    or truncation at random; each env keeps its own log of ``(vector step, env index, return,
    length)``, the return summed in Python as the rewards came, for tests of the collector's books.
    ``made`` numbers the envs in the order they are built (reset it before building a vector env)."""

    made = 0

    def __init__(self):
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self.index = UnevenEpisodesEnv.made
        UnevenEpisodesEnv.made += 1
        self.log: list[tuple[int, int, float, int]] = []
        self.vector_steps = -1  # the first reset is not a vector step

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.vector_steps += 1
        self.length, self.total, self.t = int(self.np_random.integers(1, 7)), 0.0, 0
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action):
        self.vector_steps += 1
        self.t += 1
        reward = float(self.np_random.uniform(-1.0, 1.0))
        self.total += reward
        end = self.t >= self.length
        if end:
            self.log.append((self.vector_steps, self.index, self.total, self.t))
        terminate = end and bool(self.np_random.integers(2))
        return np.zeros(1, dtype=np.float32), reward, terminate, end and not terminate, {}


class ScaledReward(gym.RewardWrapper, RecordConstructorArgs):
    """A wrapper outside Gymnasium that records its arguments: its spec rebuilds it, but naming it is code."""

    def __init__(self, env: gym.Env, scale: float = 1.0) -> None:
        RecordConstructorArgs.__init__(self, scale=scale)
        gym.RewardWrapper.__init__(self, env)
        self.scale = scale

    def reward(self, reward):
        return self.scale * reward


class CameraEnv(gym.Env):
    """A camera and proprioception, as robotics envs give them: a Dict of an 8×8 RGB uint8 image (HWC)
    that shows the target as a bright column, a Box of joint readings (noise) and a Discrete step
    count, and (``text=True``) a Text ``mission``. The action equal to the target column // 3 pays 1:
    only the image tells it. ``dim``: the image's values are codes of at most this (MiniGrid-like)."""

    def __init__(self, length: int = 10, text: bool = False, dim: int = 255, extra: str | None = None):
        self.length, self.text, self.dim = length, text, dim
        parts: dict[str, spaces.Space] = {
            "camera": spaces.Box(0, 255, (8, 8, 3), np.uint8),
            "joints": spaces.Box(-1.0, 1.0, (3,), np.float32),
            "step": spaces.Discrete(length + 1),
        }
        if text:
            parts["mission"] = spaces.Text(32)
        if extra == "sequence":
            parts["history"] = spaces.Sequence(spaces.Discrete(3))
        elif extra == "graph":
            parts["graph"] = spaces.Graph(spaces.Box(0, 1, (2,)), None)
        self.observation_space = spaces.Dict(parts)
        self.action_space = spaces.Discrete(3)
        self.t, self.target = 0, 0

    def _obs(self):
        image = np.zeros((8, 8, 3), dtype=np.uint8)
        image[:, 3 * self.target] = self.dim
        obs = {"camera": image, "joints": self.np_random.uniform(-1, 1, 3).astype(np.float32), "step": self.t}
        if self.text:
            obs["mission"] = "look at the bright column"
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.target = 0, int(self.np_random.integers(3))
        return self._obs(), {}

    def step(self, action):
        reward = float(int(action) == self.target)
        self.t += 1
        self.target = int(self.np_random.integers(3))
        return self._obs(), reward, False, self.t >= self.length, {}


class ComboEnv(gym.Env):
    """One env for every kind of observation, action and mask the combination matrix crosses
    (tests/control/test_combinations.py): ``obs`` 'box', 'image', 'dict', 'discrete', 'dict_image' (a camera
    and joint readings); ``action``
    'discrete', 'multidiscrete', 'box', 'mixed'; ``mask`` 'none', 'info' (``info["action_mask"]``),
    'obs' (a Dict observation's ``"action_mask"`` key), 'method' (sb3-contrib's ``action_masks()``),
    'both' (info and method). Raises if a masked action is taken. Episodes of 6 steps; reward 1
    for action part 0 = the step's parity, so there is something to learn."""

    def __init__(self, obs: str = "box", action: str = "discrete", mask: str = "none", critic_obs: bool = False):
        self.kind, self.mask_kind = (obs, action), mask
        inner: spaces.Space = {
            "box": spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32),
            "image": spaces.Box(0, 255, shape=(12, 12, 1), dtype=np.uint8),
            "dict": spaces.Dict({"pos": spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32),
                                 "flag": spaces.Discrete(3)}),
            "discrete": spaces.Discrete(5),
            "dict_image": spaces.Dict({"camera": spaces.Box(0, 255, shape=(8, 8, 3), dtype=np.uint8),
                                       "joints": spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)}),
        }[obs]
        self.action_space = {
            "discrete": spaces.Discrete(3),
            "multidiscrete": spaces.MultiDiscrete([3, 2]),
            "box": spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32),
            "mixed": spaces.Tuple((spaces.Discrete(3), spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32))),
        }[action]
        self.inner = inner
        self.mask_size = {"discrete": 3, "multidiscrete": 5}.get(action, 3)
        parts: dict[str, spaces.Space] = {}
        if mask == "obs":
            parts = {"observation": inner, "action_mask": spaces.MultiBinary(self.mask_size)}
        if critic_obs:
            parts = parts or {"observation": inner}
            parts["critic_obs"] = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.observation_space = spaces.Dict(parts) if parts else inner
        self.t = 0
        self._mask = np.ones(self.mask_size, dtype=bool)
        if mask in ("method", "both"):  # sb3-contrib's convention, on these kinds only
            self.action_masks = self._action_masks

    def _draw_mask(self) -> None:
        mask = self.np_random.random(self.mask_size) < 0.6
        splits = [3, 2] if self.kind[1] == "multidiscrete" else [self.mask_size]
        start = 0
        for size in splits:  # every part allows at least one action
            if not mask[start:start + size].any():
                mask[start + int(self.np_random.integers(size))] = True
            start += size
        self._mask = mask

    def _action_masks(self) -> np.ndarray:
        return self._mask.copy()

    def _answer(self):
        obs = self.inner.sample() if self.kind[0] != "box" else np.full(4, (self.t % 2) * 2 - 1, dtype=np.float32)
        info = {"action_mask": self._mask.copy()} if self.mask_kind in ("info", "both") else {}
        if isinstance(self.observation_space, spaces.Dict) and "observation" in self.observation_space.spaces:
            obs = {"observation": obs}
            if self.mask_kind == "obs":
                obs["action_mask"] = self._mask.astype(np.int8)
            if "critic_obs" in self.observation_space.spaces:
                obs["critic_obs"] = np.array([self.t / 6, 0.5], dtype=np.float32)
        return obs, info

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.inner.seed(int(self.np_random.integers(2**31)))
        self.t = 0
        self._draw_mask()
        return self._answer()

    def step(self, action):
        assert self.action_space.contains(action), action
        first = int(np.asarray(action[0] if isinstance(action, tuple) else action).reshape(-1)[0])
        if self.mask_kind != "none" and self.kind[1] in ("discrete", "multidiscrete"):
            chosen = [first] if self.kind[1] == "discrete" else [first, 3 + int(np.asarray(action)[1])]
            if not all(self._mask[i] for i in chosen):
                raise AssertionError(f"masked action {action} taken (mask {self._mask})")
        reward = float(first == self.t % 2) if self.kind[1] != "box" else -abs(float(action[0]))
        self.t += 1
        self._draw_mask()
        obs, info = self._answer()
        return obs, reward, False, self.t >= 6, info
