"""What the policy sees of an env's observation, and the invalid-action mask beside it.

**Observations.** A Box goes to the policy as it is. Dict, Tuple, Discrete, MultiDiscrete and
MultiBinary observations are flattened by Gymnasium's own ``spaces.flatten`` (one-hot for the
discrete parts, vector parts as they are, concatenated in the space's key order), so the MLP, the
normalisation (element by element) and the fast path see one vector.

Images inside a Dict or Tuple (uint8 boxes of rank 3: MiniGrid's ``image``, a robot's camera beside its
joint angles) are flattened the same way, raw; :func:`observation_layout` tells the network where each
part lies in the vector (offset, size, the image's shape), so it runs a CNN per image and concatenates
the features with the other parts, as SB3's ``MultiInputPolicy`` does. The normalisation leaves the
image entries alone (the network scales them by ``image_scale``).

Text parts (Gymnasium's ``Text``, MiniGrid's ``mission``: any part whose values are strings) have no
vector a policy can learn from: a Dict key holding one is dropped with a notice, or refused, as
``ControlConfig.text_observations`` says. Parts that are not Box, Discrete, MultiDiscrete or
MultiBinary (or Dicts and Tuples of them), such as Sequence, Graph or OneOf, are refused in one line
naming the key.

**Masks.** An env gives a mask (a boolean per action; for MultiDiscrete, each dimension's booleans concatenated)
in one of three places, the conventions of Gymnasium, PettingZoo and sb3-contrib:

- ``info["action_mask"]``, returned with each observation by ``reset`` and ``step``;
- the ``"action_mask"`` key of a Dict observation whose only other key holds the observation itself
  (``{"observation": Box, "action_mask": MultiBinary}``);
- an ``action_masks()`` method of the env or of any wrapper around it (sb3-contrib's ``MaskablePPO``
  convention), found through the wrappers with ``has_wrapper_attr`` and called on every sub-env of a
  ``SyncVectorEnv`` or ``AsyncVectorEnv`` (``call``) after each ``reset`` and ``step``. A step answers
  with the observation of the state the env is in when it returns (with next-step autoreset, an
  ended episode's last observation, then the new episode's first), so the mask the method gives
  right after is that observation's.

The key is ``ControlConfig.action_mask_key``. Masked actions get probability 0 in sampling,
log-probabilities, entropy and the PPO ratio (:mod:`ppokit.control.policy.heads`). An env that gives no
mask for some step (or some env of the vector) allows every action there. **One rule when an env gives
a mask in two places** (the key and the method): both are read, and they must be the same mask; a
step where they differ is refused in one line naming both (ppokit never picks one silently).

Every mask, from an env or given to ``predict``, goes through :func:`mask_values`: booleans, or 0/1
integers or floats (cast); anything else (a string, other numbers, ``None``, the wrong number of
entries) is refused in one line, as is a mask that allows no action at all, except on the step
that ends an episode (its action is never taken).

A mask the run does not use is said once, as a warning naming where it was found and the setting
to use (:func:`unused_masks`, :meth:`ObservationReader.note_info`): an info key or a Dict
observation key that looks like a mask (:data:`MASK_LIKE_KEYS`) other than ``action_mask_key``, or an
``action_masks()`` method (or mask) beside actions that take none (Box, mixed Tuple/Dict actions).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ppokit.errors import EnvError, ObservationError, PPOKitError

log = logging.getLogger("ppokit")

#: sb3-contrib's convention: a method of the env (or a wrapper) giving the current state's mask.
MASK_METHOD = "action_masks"
#: Names under which envs commonly give masks (in ``info`` or a Dict observation); one that is not
#: ``action_mask_key`` is warned about once (module docstring).
MASK_LIKE_KEYS = ("action_mask", "action_masks", "mask", "legal_actions", "valid_actions", "invalid_action_mask")


def maskable(action_space: spaces.Space) -> bool:
    """Whether masks apply to ``action_space`` (Discrete and MultiDiscrete actions)."""
    return isinstance(action_space, (spaces.Discrete, spaces.MultiDiscrete))


def has_mask_method(env: Any) -> bool:
    """Whether ``env`` (one env, or a Gymnasium vector env's sub-envs) offers ``action_masks()`` on
    itself or on any wrapper. Sub-envs that disagree (some with the method, some without) are
    refused: their masks would mean different things env by env."""
    if isinstance(env, gym.Env):
        return bool(env.has_wrapper_attr(MASK_METHOD))
    vector = getattr(env, "unwrapped", env)
    if not isinstance(vector, (gym.vector.SyncVectorEnv, gym.vector.AsyncVectorEnv)):
        return False  # EnvPool, a torch env, another VectorEnv: no sub-envs to ask
    found = [bool(x) for x in vector.call("has_wrapper_attr", MASK_METHOD)]
    if any(found) and not all(found):
        raise EnvError(f"sub-envs {[i for i, f in enumerate(found) if f]} of the vector env have an "
                       f"{MASK_METHOD}() method and {[i for i, f in enumerate(found) if not f]} do not; "
                       "give every sub-env the same masks")
    return all(found) and bool(found)


def mask_method(env: Any) -> Callable[[], Sequence[Any]]:
    """A function returning the masks ``action_masks()`` gives now: one per sub-env of a vector env
    (``call``), or a one-element list for one env (``get_wrapper_attr``, through every wrapper)."""
    if isinstance(env, gym.Env):
        return lambda: [env.get_wrapper_attr(MASK_METHOD)()]
    vector = getattr(env, "unwrapped", env)
    return lambda: vector.call(MASK_METHOD)


def unused_masks(env: Any, observation_space: spaces.Space, action_space: spaces.Space, key: str,
                 method: bool, torch_env: bool = False) -> str | None:
    """Why masks ``env`` offers would go unused by this run (None when they would not): said once per
    run by the training collector. ``method``: whether the env has ``action_masks()``."""
    if torch_env:
        if hasattr(env, MASK_METHOD):
            return (f"the torch env has an {MASK_METHOD}() method, but torch envs train unmasked (their device "
                    "collector takes no masks); use a Gymnasium env to train masked")
        return None
    if method and not maskable(action_space):
        return (f"the env has an {MASK_METHOD}() method, but its action space {action_space} takes no mask "
                "(only Discrete and MultiDiscrete actions); it is not called")
    if isinstance(observation_space, spaces.Dict) and key not in observation_space.spaces:
        found = [k for k in observation_space.spaces if str(k).lower() in MASK_LIKE_KEYS]
        if found:
            where = f"the Dict observation's key {found[0]!r}"
            if not maskable(action_space):
                return f"{where} looks like an action mask, but {action_space} actions take none; it is read as observation"
            return (f"{where} looks like an action mask, but action_mask_key is {key!r}: it is read as observation; "
                    f"set action_mask_key={found[0]} (--set action_mask_key={found[0]}) to mask with it")
    return None


def expected_mask(action_space: spaces.Space) -> str:
    """How many booleans a mask of ``action_space`` holds, said as the docs say it."""
    if isinstance(action_space, spaces.MultiDiscrete):
        nvec = [int(n) for n in np.asarray(action_space.nvec).reshape(-1)]
        return f"{sum(nvec)} booleans, the sum of nvec {nvec}"
    if isinstance(action_space, spaces.Discrete):
        return f"{int(action_space.n)} booleans, one per action"
    return "no mask (only Discrete and MultiDiscrete actions can be masked)"


def mask_values(value: Any, what: str, error: type[PPOKitError] = EnvError) -> np.ndarray:
    """``value`` as a boolean array: booleans as they are, integers or floats when every value is
    0 or 1. Anything else is refused in one line beginning with ``what`` (an ``error``): a mask
    that is silently cast or broadcast would train or act with actions the env rules out."""
    if value is None:
        raise error(f"{what} is None; expected booleans")
    if isinstance(value, (str, bytes)):
        raise error(f"{what} is a string ({value[:20]!r}); expected booleans")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        raise error(f"{what} is not an array of booleans ({type(value).__name__})") from None
    if array.dtype.kind == "b":
        return array
    if array.dtype.kind not in "iuf":
        raise error(f"{what} holds {array.dtype} values; expected booleans")
    ok = (array == 0) | (array == 1)
    if not ok.all():
        bad = np.unique(array[~ok])[:3].tolist()
        raise error(f"{what} holds {', '.join(map(str, bad))}; a mask holds booleans (or 0 and 1)")
    return array.astype(bool)


def predict_mask(value: Any, action_space: spaces.Space, rows: int, single: bool) -> np.ndarray:
    """``predict``'s ``action_mask`` as ``[rows, size]`` booleans: one mask for one observation, one
    per observation for a batch; never broadcast (a one-element mask is not "allow everything")."""
    what = "predict: action_mask"
    if isinstance(action_space, spaces.Discrete):
        parts = [int(action_space.n)]
    elif isinstance(action_space, spaces.MultiDiscrete):
        parts = [int(n) for n in np.asarray(action_space.nvec).reshape(-1)]
    else:
        raise ObservationError(f"{what} was given, but {action_space} actions take no mask")
    size = sum(parts)
    array = mask_values(value, what, ObservationError)
    fits = array.shape in ((size,), (1, size)) if single else array.shape == (rows, size)
    if not fits:
        shape = f"({size},)" if single else f"({rows}, {size})"
        of = "for one observation" if single else f"for a batch of {rows} observations"
        raise ObservationError(f"{what} has shape {array.shape}; expected {shape} {of} "
                               f"({expected_mask(action_space)})")
    array = array.reshape(rows, size)
    for i, row in enumerate(array):
        empty = [k for k, part in enumerate(np.split(row, np.cumsum(parts)[:-1])) if not part.any()]
        if empty:
            where = "" if single else f" row {i}"
            dimension = f" for dimension {empty[0]}" if len(parts) > 1 else ""
            raise ObservationError(f"{what}{where} allows no action{dimension}")
    return array


def split_dict_observation(obs: Any, action_mask: Any, env_space: spaces.Space, mask_key: str,
                           critic_key: str = "critic_obs") -> tuple[Any, Any]:
    """``(observation, action_mask)`` for ``predict`` given a Dict observation as the env returns it:
    the mask comes out of its ``mask_key`` (unless ``action_mask`` is given too), the critic's own
    observation is dropped (acting needs only the actor's), and so are parts holding text (MiniGrid's
    ``mission``: the policy was built without them), and the rest is the observation."""
    if isinstance(obs, dict) and not (isinstance(env_space, spaces.Dict) and set(obs) == set(env_space.spaces)):
        obs = {k: v for k, v in obs.items() if k in (mask_key, critic_key) or not _is_text_value(v)}
    if not isinstance(obs, dict) or (isinstance(env_space, spaces.Dict) and set(obs) == set(env_space.spaces)):
        return obs, action_mask
    if mask_key in obs and action_mask is None:
        action_mask = obs[mask_key]
    rest = {k: v for k, v in obs.items() if k not in (mask_key, critic_key)}
    if isinstance(env_space, spaces.Dict):
        if set(rest) != set(env_space.spaces):
            raise ObservationError(f"predict: a dict observation with keys {sorted(map(str, obs))}; the policy reads "
                                   f"{sorted(map(str, env_space.spaces))} (and {mask_key!r}, {critic_key!r})")
        return rest, action_mask
    if len(rest) != 1:
        raise ObservationError(f"predict: a dict observation with keys {sorted(map(str, obs))}; the policy reads one "
                               f"observation key beside {mask_key!r} and {critic_key!r}")
    return next(iter(rest.values())), action_mask


#: One part of a flattened observation, in flatten order: ``(name, size, image shape)``; the image
#: shape (HWC or CHW, as the env gives it) is ``()`` for a part that is not an image.
ObservationPart = tuple[str, int, tuple[int, ...]]

#: The spaces a policy reads as a vector, and the containers of them.
_VECTOR_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


def _is_text_value(value: Any) -> bool:
    """A string, or a batch of them (what a Text part of an observation holds)."""
    if isinstance(value, str):
        return True
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "US" or (value.dtype == object and value.size > 0
                                            and all(isinstance(v, str) for v in value.ravel()))
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(v, str) for v in value)


def _is_image(space: spaces.Space) -> bool:
    return isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3


def _has_image(space: spaces.Space) -> bool:
    if isinstance(space, spaces.Dict):
        return any(_has_image(s) for s in space.spaces.values())
    if isinstance(space, spaces.Tuple):
        return any(_has_image(s) for s in space.spaces)
    return _is_image(space)


def is_text_space(space: spaces.Space) -> bool:
    """Whether the space's values are strings: Gymnasium's ``Text``, or a space of its own such as
    MiniGrid's ``MissionSpace`` (which subclasses ``Space[str]`` only)."""
    if isinstance(space, spaces.Text):
        return True
    if isinstance(space, (*_VECTOR_SPACES, spaces.Dict, spaces.Tuple)):
        return False
    try:
        return isinstance(space.sample(), str)
    except Exception:  # a space of the env's own that cannot sample: not text, refused by the caller
        return False


def check_flattenable(space: spaces.Space, where: str = "the observation") -> None:
    """Refuse, in one line naming the part, a space the policy cannot read as a vector."""
    if isinstance(space, spaces.Dict):
        for key, part in space.spaces.items():
            check_flattenable(part, f"observation key {key!r}" if where == "the observation" else f"{where}[{key!r}]")
        return
    if isinstance(space, spaces.Tuple):
        for i, part in enumerate(space.spaces):
            check_flattenable(part, f"observation part {i}" if where == "the observation" else f"{where}[{i}]")
        return
    if isinstance(space, _VECTOR_SPACES):
        return
    kind = "a Text space (strings)" if is_text_space(space) else f"a {type(space).__name__} space"
    hint = (" (a Dict key holding text is dropped unless text_observations is 'refuse')"
            if is_text_space(space) else "")
    raise EnvError(f"{where} is {kind}, which the policy cannot read as a vector: Box, Discrete, MultiDiscrete and "
                   f"MultiBinary parts (in Dicts and Tuples) can be read{hint}")


def observation_layout(space: spaces.Space) -> tuple[ObservationPart, ...]:
    """Where each part of ``space`` lies in its flattened vector, in ``spaces.flatten``'s order, when
    some part is an image (a uint8 box of rank 3) inside a Dict or Tuple; ``()`` otherwise (the
    policy reads the vector whole)."""
    if not isinstance(space, (spaces.Dict, spaces.Tuple)) or not _has_image(space):
        return ()
    parts: list[ObservationPart] = []

    def walk(part: spaces.Space, name: str) -> None:
        if isinstance(part, spaces.Dict):
            for key, sub in part.spaces.items():
                walk(sub, f"{name}.{key}" if name else str(key))
        elif isinstance(part, spaces.Tuple):
            for i, sub in enumerate(part.spaces):
                walk(sub, f"{name}.{i}" if name else str(i))
        else:
            shape = tuple(int(d) for d in part.shape or ()) if _is_image(part) else ()
            parts.append((name, int(spaces.flatdim(part)), shape))

    walk(space, "")
    return tuple(parts)


def flatten_one(space: spaces.Space, obs: Any) -> np.ndarray:
    """One observation of ``space`` as the flat float32 vector the policy sees (Gymnasium's layout)."""
    return np.asarray(spaces.flatten(space, obs), dtype=np.float32)


def as_policy_input(env_space: spaces.Space, policy_space: spaces.Space, obs: Any) -> Any:
    """What ``predict`` was given, flattened when it is one raw observation of a non-Box env space."""
    if env_space is not policy_space and env_space.contains(obs):
        return flatten_one(env_space, obs)
    if isinstance(env_space, spaces.Dict) and isinstance(obs, dict) and set(obs) == set(env_space.spaces):
        # One whose values are not exactly of the space's dtypes, or a batch of them (each key's
        # values stacked), told apart by the first key's shape; a batch is flattened one by one.
        try:
            key = next(iter(env_space.spaces))
            first = np.asarray(obs[key])
            if first.shape == tuple(env_space.spaces[key].shape or ()):
                return flatten_one(env_space, obs)
            rows = len(first) if first.ndim else 0
            batched = gym.vector.utils.batch_space(env_space, rows)
            return np.stack([flatten_one(env_space, item) for item in gym.vector.utils.iterate(batched, obs)])
        except (ValueError, TypeError, IndexError, KeyError, AssertionError) as err:
            raise ObservationError(f"predict: a dict observation that is neither one of {env_space} nor a batch of "
                                   f"them ({type(err).__name__})") from None
    return obs


class ObservationReader:
    """Reads the policy's observation and the action mask out of what a (vector) env returns."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, key: str,
                 critic_key: str = "critic_obs", text: str = "drop") -> None:
        """``text``: what becomes of a Dict key holding text (``ControlConfig.text_observations``):
        'drop' (listed in :attr:`dropped`, for the caller's notice) or 'refuse'."""
        self.key, self.critic_key = key, critic_key
        #: The Dict keys holding text, left out of what the policy sees.
        self.dropped: list[str] = []
        #: The env's ``action_masks()`` results now, one per env (set by :meth:`use_method`); None
        #: when the env has no such method.
        self.method: Callable[[], Sequence[Any]] | None = None
        #: Whether an unused mask has been warned about (once per reader: the training collector's).
        self.warned = False
        self.warn = False
        self.action_space = action_space
        #: Steps read so far (the reset is step 0): where a bad mask is named.
        self.steps = -1
        self.expected = expected_mask(action_space)
        #: The mask's parts: each must allow an action (one per MultiDiscrete dimension).
        self.parts: list[int] = []
        if isinstance(action_space, spaces.Discrete):
            self.size: int | None = int(action_space.n)
            self.parts = [self.size]
        elif isinstance(action_space, spaces.MultiDiscrete):
            self.parts = [int(n) for n in np.asarray(action_space.nvec).reshape(-1)]
            self.size = sum(self.parts)
        else:
            self.size = None  # Box actions have nothing to mask
        #: With a mask or a critic observation inside a Dict observation: the key of the observation
        #: proper (one other key), or ``""`` when several keys remain (a Dict of them is the observation).
        self.obs_key: str | None = None
        #: The observation space the env gives, less the mask and the critic's observation.
        self.env_space = observation_space
        #: The critic's own (privileged) observation as the env gives it; None when the critic shares the actor's.
        self.critic_env_space: spaces.Space | None = None
        self.mask_in_obs = False
        if isinstance(observation_space, spaces.Dict):
            parts = dict(observation_space.spaces)
            if key in parts:
                if self.size is None:
                    raise EnvError(f"a Dict observation with an {key!r} key needs Discrete or MultiDiscrete actions; "
                                   f"got {action_space}")
                self.mask_in_obs = True
                del parts[key]
            if critic_key in parts:
                self.critic_env_space = parts.pop(critic_key)
            for name, part in list(parts.items()):
                if is_text_space(part):
                    if text == "refuse":
                        raise EnvError(f"observation key {name!r} holds text ({type(part).__name__}), which the policy "
                                       "cannot read; set text_observations: drop to leave it out")
                    self.dropped.append(str(name))
                    del parts[name]
            if len(parts) < len(observation_space.spaces):
                if not parts:
                    raise EnvError(f"observation space {observation_space} holds no observation for the actor")
                self.obs_key = next(iter(parts)) if len(parts) == 1 else ""
                self.env_space = parts[self.obs_key] if self.obs_key else spaces.Dict(parts)
        #: Whether observations are flattened for the policy (anything but a Box).
        self.flatten = not isinstance(self.env_space, spaces.Box)
        check_flattenable(self.env_space)
        if self.critic_env_space is not None:
            check_flattenable(self.critic_env_space, f"the critic's observation {critic_key!r}")
            if _has_image(self.critic_env_space):
                raise EnvError(f"the critic's own observation {critic_key!r} holds an image; a critic observation of "
                               "its own is read by an MLP (give it vectors)")
        #: Where the parts of a Dict or Tuple holding images lie in the flattened vector; () otherwise.
        self.layout = observation_layout(self.env_space)
        #: What the policy sees.
        self.observation_space: spaces.Space = self.env_space
        if self.flatten:
            flat = spaces.flatten_space(self.env_space)
            assert isinstance(flat, spaces.Box)
            self.observation_space = spaces.Box(flat.low.astype(np.float32), flat.high.astype(np.float32),
                                                dtype=np.float32)

    @classmethod
    def for_env(cls, env: Any, key: str, critic_key: str = "critic_obs", warn: bool = False,
                text: str = "drop") -> ObservationReader:
        """The reader of ``env`` (a vector env, or one env), reading its ``action_masks()`` method too
        when it has one. ``warn``: say once (the training collector's reader) what masks the run leaves
        unused; ``text``: as for the constructor."""
        single = isinstance(env, gym.Env)
        observation_space = env.observation_space if single else env.single_observation_space
        action_space = env.action_space if single else env.single_action_space
        reader = cls(observation_space, action_space, key, critic_key, text)
        method = has_mask_method(env)
        if method and reader.size is not None:
            reader.method = mask_method(env)
        reader.warn = warn
        if warn:
            reader.say(unused_masks(env, observation_space, action_space, key, method))
        return reader

    def say(self, problem: str | None) -> None:
        """Warn about an unused mask, once."""
        if problem and self.warn and not self.warned:
            self.warned = True
            log.warning("%s", problem)

    def note_info(self, info: dict[str, Any]) -> None:
        """Warn once when ``info`` holds a mask-like key the run does not read (module docstring)."""
        if self.warned or not self.warn or not info:
            return
        found = [k for k in info if isinstance(k, str) and k.lower() in MASK_LIKE_KEYS
                 and (k != self.key or self.size is None)]
        if not found:
            return
        if self.size is None:
            self.say(f"the env's info[{found[0]!r}] looks like an action mask, but {self.action_space} actions take "
                     "none (only Discrete and MultiDiscrete actions); it is ignored")
        elif self.mask_in_obs:
            self.say(f"the env's info[{found[0]!r}] looks like an action mask; the run reads its masks from the Dict "
                     f"observation's key {self.key!r} and ignores it")
        elif self.method is not None:
            self.say(f"the env's info[{found[0]!r}] looks like an action mask; the run reads its masks from "
                     f"{MASK_METHOD}() and ignores it (set action_mask_key={found[0]} to read both, checked to agree)")
        else:
            self.say(f"the env's info[{found[0]!r}] looks like an action mask, but action_mask_key is {self.key!r}: "
                     f"the run trains unmasked; set action_mask_key={found[0]} (--set action_mask_key={found[0]})")

    @property
    def passes_through(self) -> bool:
        """Whether the observation goes to the policy as the env gives it, with no critic part, so
        only a mask in ``info`` can make :meth:`read` return anything else."""
        return (self.obs_key is None and not self.flatten and not self.mask_in_obs and self.critic_env_space is None
                and self.method is None)

    @property
    def where(self) -> str:
        """Where a keyed mask comes from, as errors name it."""
        return "the observation's" if self.mask_in_obs else "info"

    @property
    def in_observation(self) -> bool:
        """Whether the policy is masked from the start: the mask is a key of the observation, or the
        env has an ``action_masks()`` method."""
        return self.mask_in_obs or self.method is not None

    @property
    def critic_observation_space(self) -> spaces.Box | None:
        """What the critic sees when the env gives it an observation of its own (flattened), else None."""
        if self.critic_env_space is None:
            return None
        flat = spaces.flatten_space(self.critic_env_space)
        assert isinstance(flat, spaces.Box)
        return spaces.Box(flat.low.astype(np.float32), flat.high.astype(np.float32), dtype=np.float32)

    def read_critic(self, obs: Any, num_envs: int) -> np.ndarray | None:
        """The critic's observation out of a vector env's batch, flattened; None when it has none."""
        if self.critic_env_space is None:
            return None
        batched = gym.vector.utils.batch_space(self.critic_env_space, num_envs)
        return np.stack([flatten_one(self.critic_env_space, item)
                         for item in gym.vector.utils.iterate(batched, obs[self.critic_key])])

    def read(self, obs: Any, info: dict[str, Any], num_envs: int,
             ended: np.ndarray | None = None) -> tuple[Any, np.ndarray | None]:
        """``(observation, mask or None)`` for a vector env's batch; the mask is ``[num_envs, size]``.
        ``ended``: the envs whose episode ended at this step (their mask may allow nothing)."""
        self.steps += 1
        self.note_info(info)
        mask = None
        if self.mask_in_obs:
            mask = self._rows(obs[self.key], num_envs, ended=ended)
        elif self.size is not None and self.key in info:
            mask = self._rows(info[self.key], num_envs, present=info.get(f"_{self.key}"), ended=ended)
        if self.method is not None:
            present = None if self.mask_in_obs or self.key not in info else info.get(f"_{self.key}")
            mask = self._agree(mask, self._rows(self.method(), num_envs, ended=ended, where=f"{MASK_METHOD}()"),
                               present, self.where)
        return self.policy_observation(self._actor_part(obs), num_envs), mask

    def _agree(self, keyed: np.ndarray | None, called: np.ndarray, present: Any, where: str) -> np.ndarray:
        """The one rule for a mask given in two places: both are read and must be the same."""
        if keyed is None:
            return called
        for i in range(len(called)):
            if (present is None or bool(present[i])) and not np.array_equal(keyed[i], called[i]):
                raise EnvError(f"env {i}'s {where}[{self.key!r}] and its {MASK_METHOD}() give different masks at "
                               f"step {self.steps} ({np.flatnonzero(keyed[i]).tolist()} vs "
                               f"{np.flatnonzero(called[i]).tolist()} allowed); an env gives one mask, in one place "
                               "or the same in both")
        return called

    def _actor_part(self, obs: Any) -> Any:
        if self.obs_key is None:
            return obs
        if self.obs_key:
            return obs[self.obs_key]
        return {k: v for k, v in obs.items() if k not in (self.key, self.critic_key) and k not in self.dropped}

    def read_single(self, obs: Any, info: dict[str, Any]) -> tuple[Any, np.ndarray | None]:
        """The same for one (unbatched) env: ``(observation [1, ...], mask [size] or None)``."""
        self.steps += 1
        mask = None
        if self.mask_in_obs:
            mask = self._rows([obs[self.key]], 1)
        elif self.size is not None and self.key in info:
            mask = self._rows([info[self.key]], 1)
        if self.method is not None:
            mask = self._agree(mask, self._rows(self.method(), 1, where=f"{MASK_METHOD}()"), None,
                               self.where)
        return self.policy_observation(self._actor_part(obs), None), None if mask is None else mask[0]

    def policy_observation(self, obs: Any, num_envs: int | None) -> Any:
        """The env's observation (a batch of ``num_envs``, or one when None) as the policy sees it."""
        if not self.flatten:
            return obs if num_envs is not None else np.asarray(obs)[None]
        if num_envs is None:
            return flatten_one(self.env_space, obs)[None]
        batched = gym.vector.utils.batch_space(self.env_space, num_envs)
        return np.stack([flatten_one(self.env_space, item) for item in gym.vector.utils.iterate(batched, obs)])

    def _rows(self, masks: Any, num_envs: int, present: Any = None, ended: np.ndarray | None = None,
              where: str | None = None) -> np.ndarray:
        assert self.size is not None
        out = np.ones((num_envs, self.size), dtype=bool)
        if where is None:
            where = f"{self.where}[{self.key!r}]"
        for i in range(num_envs):
            if present is not None and not bool(present[i]):
                continue  # this env gave no mask this step: every action is allowed
            what = f"env {i}'s {where} at step {self.steps}"
            row = mask_values(masks[i], what).reshape(-1)
            if row.size != self.size:
                raise EnvError(f"{what} has {row.size} entries; the action space needs {self.expected}")
            empty = [k for k, part in enumerate(np.split(row, np.cumsum(self.parts)[:-1])) if not part.any()]
            if empty and not (ended is not None and bool(ended[i])):
                dimension = f" for dimension {empty[0]}" if len(self.parts) > 1 else ""
                raise EnvError(f"{what} allows no action{dimension}; a mask must allow at least one (an episode "
                               "whose last observation allows none must end at that step)")
            if not empty:  # an ended episode's empty row stays all-true: its action is never taken
                out[i] = row
        return out
