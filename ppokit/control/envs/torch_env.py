r"""Batched envs that step on a device and speak torch tensors (GPU simulators), and ppokit's checks of them.

Isaac Lab, ManiSkill3, Genesis and MuJoCo Playground run thousands of envs on a GPU and return torch
tensors there. ppokit trains on such an env without a host round-trip per step
(:mod:`ppokit.control.rollout.device`) when it offers :class:`TorchVecEnv`: what those simulators
give already, or after an adapter of a few lines (docs/how-to/gpu-envs.md).

**Same-step autoreset.** A GPU simulator resets an env in the step its episode ends: the observation
it returns for that env is already the next episode's first. Every step is then a real transition
(none is wasted on a reset step, unlike Gymnasium's next-step autoreset), and the episode boundary
is the step's ``terminated | truncated``.

**Bootstrapping a truncated episode.** A time limit says nothing about the future, so a truncated
step's target is :math:`r_t + \gamma V(s_{\text{final}})`. Where the env puts the episode's last
observation into ``info['final_obs']`` (Gymnasium's same-step key; ManiSkill3's
``'final_observation'`` is read too), ppokit evaluates the critic on it. Where it does not (Isaac
Lab), ppokit takes :math:`V(s_t)`, the value of the observation the last action was chosen from, as
rsl_rl does: one step early, a close estimate when the state changes little in one step.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from ppokit.errors import CheckpointError, EnvError
from ppokit.io.state_codec import SKIP, decode, encode

#: The keys under which an env gives the last observation of the episodes that ended this step.
FINAL_OBS_KEYS = ("final_obs", "final_observation")


@runtime_checkable
class TorchVecEnv(Protocol):
    """``num_envs`` envs stepped together, taking and returning torch tensors on ``device``.

    - ``single_observation_space``: a float ``gymnasium.spaces.Box``, one env's observation;
    - ``single_action_space``: ``Discrete``, ``MultiDiscrete`` or ``Box``, one env's action;
    - ``reset(seed=None) -> (obs, info)``: every env afresh; ``obs`` is ``[num_envs, *obs_shape]``;
    - ``step(actions) -> (obs, reward, terminated, truncated, info)``: ``actions`` is ``[num_envs]``
      int64 (Discrete), ``[num_envs, k]`` int64 (MultiDiscrete) or ``[num_envs, *shape]`` float clipped
      to the bounds (Box); ``reward`` ``[num_envs]`` float; ``terminated`` and ``truncated``
      ``[num_envs]`` bool; an ended episode is reset in the same step; ``info`` may hold
      ``'final_obs'`` ``[num_envs, *obs_shape]``, whose rows of the ended envs are their last
      observations;
    - ``close()``.

    All tensors live on ``device``. ppokit copies what it keeps before the next ``step``, so an env
    may return its own buffers. Optional, for an exact resume: ``state_dict()`` (tensors, arrays and
    numbers) and ``load_state_dict(state)``.
    """

    num_envs: int
    single_observation_space: spaces.Space
    single_action_space: spaces.Space

    @property
    def device(self) -> torch.device | str: ...

    def reset(self, *, seed: int | None = None) -> tuple[Tensor, dict[str, Any]]: ...

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Any]]: ...

    def close(self) -> None: ...


def is_torch_env(obj: Any) -> bool:
    """Whether ``obj`` is an env object that declares a device: a torch env to ppokit (checked
    further by :func:`check_torch_env`)."""
    return (not isinstance(obj, (str, type)) and hasattr(obj, "device") and hasattr(obj, "num_envs")
            and callable(getattr(obj, "step", None)) and callable(getattr(obj, "reset", None)))


def is_torch_env_class(obj: Any) -> bool:
    """Whether ``obj`` is a class ppokit can make torch envs from: ``cls(num_envs=..., device=..., **env_kwargs)``."""
    if not isinstance(obj, type) or not callable(getattr(obj, "step", None)):
        return False
    try:
        parameters = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return False
    return "num_envs" in parameters and "device" in parameters


def env_device(env: Any) -> torch.device:
    try:
        return torch.device(env.device)
    except (TypeError, RuntimeError) as err:
        raise EnvError(f"torch env {type(env).__name__}: device {env.device!r} is not a torch device ({err})") from None


def same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` are the same device when either leaves the index open."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def check_torch_env(env: Any, device: torch.device | None = None) -> None:
    """Refuse an env object that does not offer :class:`TorchVecEnv`, naming what is wrong."""
    name = f"torch env {type(env).__name__}"
    missing = [a for a in ("num_envs", "device", "single_observation_space", "single_action_space", "reset", "step",
                           "close") if not hasattr(env, a)]
    if missing:
        raise EnvError(f"{name} lacks {', '.join(missing)} (see ppokit.control.envs.torch_env.TorchVecEnv)")
    mode = getattr(env, "metadata", {}).get("autoreset_mode") if isinstance(getattr(env, "metadata", None), dict) else None
    if mode is not None and mode != gym.vector.AutoresetMode.SAME_STEP:
        raise EnvError(f"{name} resets with {mode}; a torch env must reset an ended episode in the same step "
                       "(gymnasium: autoreset_mode=SAME_STEP), or pass the NumPy vector env itself")
    if not isinstance(env.num_envs, (int, np.integer)) or env.num_envs < 1:
        raise EnvError(f"{name}: num_envs = {env.num_envs!r}, expected a positive int")
    obs_space, action_space = env.single_observation_space, env.single_action_space
    if not isinstance(obs_space, spaces.Box) or not np.issubdtype(obs_space.dtype, np.floating):
        raise EnvError(f"{name}: single_observation_space is {obs_space}; ppokit trains torch envs on float Box "
                       "observations (an Isaac Lab env: pick the 'policy' group, see docs/how-to/gpu-envs.md)")
    if not isinstance(action_space, (spaces.Discrete, spaces.MultiDiscrete, spaces.Box)):
        raise EnvError(f"{name}: single_action_space is {action_space}; expected Discrete, MultiDiscrete or Box")
    own = env_device(env)
    if device is not None and not same_device(own, device):
        raise EnvError(f"{name} is on {own}, the policy on {device}; set the config's device to {own}")


def _check_tensor(value: Any, what: str, shape: tuple[int, ...], device: torch.device, kind: str) -> None:
    if not isinstance(value, Tensor):
        raise EnvError(f"torch env: {what} is a {type(value).__name__}, expected a torch tensor on {device}")
    if tuple(value.shape) != shape:
        raise EnvError(f"torch env: {what} has shape {tuple(value.shape)}, expected {shape}")
    if not same_device(value.device, device):
        raise EnvError(f"torch env: {what} is on {value.device}, the env on {device}")
    if kind == "float" and not value.dtype.is_floating_point:
        raise EnvError(f"torch env: {what} has dtype {value.dtype}, expected a float dtype")
    if kind == "flag" and (value.dtype.is_floating_point or value.dtype.is_complex):
        raise EnvError(f"torch env: {what} has dtype {value.dtype}, expected bool")


def check_reset(env: Any, result: Any) -> tuple[Tensor, dict[str, Any]]:
    """``(obs, info)`` from ``env.reset``, refused with the reason when it is not what :class:`TorchVecEnv` says."""
    if not (isinstance(result, tuple) and len(result) == 2):
        raise EnvError(f"torch env {type(env).__name__}: reset() returned {type(result).__name__}, expected (obs, info)")
    obs, info = result
    if isinstance(obs, Mapping):
        raise EnvError(f"torch env: reset() returned a dict of observations ({', '.join(map(str, obs))}); return the "
                       "policy's tensor (an Isaac Lab env: obs['policy'], see docs/how-to/gpu-envs.md)")
    device = env_device(env)
    _check_tensor(obs, "the observation", (env.num_envs, *env.single_observation_space.shape), device, "float")
    return obs, dict(info or {})


def check_step(env: Any, result: Any) -> None:
    """Refuse a ``step`` result that is not what :class:`TorchVecEnv` says (shapes, dtypes, device:
    metadata only, nothing read from the device)."""
    if not (isinstance(result, tuple) and len(result) == 5):
        raise EnvError(f"torch env {type(env).__name__}: step() returned {type(result).__name__}, expected "
                       "(obs, reward, terminated, truncated, info)")
    obs, reward, terminated, truncated, info = result
    device, n = env_device(env), int(env.num_envs)
    if isinstance(obs, Mapping):
        raise EnvError("torch env: step() returned a dict of observations; return the policy's tensor (see docs/how-to/gpu-envs.md)")
    _check_tensor(obs, "the observation", (n, *env.single_observation_space.shape), device, "float")
    _check_tensor(reward, "the reward", (n,), device, "float")
    _check_tensor(terminated, "terminated", (n,), device, "flag")
    _check_tensor(truncated, "truncated", (n,), device, "flag")
    if not isinstance(info, Mapping):
        raise EnvError(f"torch env: step() returned info of type {type(info).__name__}, expected a dict")


def final_observation(env: Any, info: Mapping[str, Any]) -> Tensor | None:
    """The last observations of the episodes that ended this step (``info['final_obs']``), or None."""
    for key in FINAL_OBS_KEYS:
        value = info.get(key)
        if value is not None:
            _check_tensor(value, f"info[{key!r}]", (int(env.num_envs), *env.single_observation_space.shape),
                          env_device(env), "float")
            return value
    return None


def capture_torch_env_state(env: Any) -> tuple[dict[str, Any] | None, str | None]:
    """``(state, None)`` from the env's ``state_dict()`` as plain data, else ``(None, reason)``."""
    if not (callable(getattr(env, "state_dict", None)) and callable(getattr(env, "load_state_dict", None))):
        return None, f"the torch env {type(env).__name__} has no state_dict() and load_state_dict()"
    plain = {k: v.detach().cpu().numpy() if isinstance(v, Tensor) else v for k, v in env.state_dict().items()}
    encoded = encode(plain)
    if encoded is SKIP:
        return None, f"the torch env {type(env).__name__}'s state_dict() holds more than tensors, arrays and numbers"
    return {"torch_env": type(env).__qualname__, "state": encoded}, None


def restore_torch_env_state(env: Any, saved: dict[str, Any]) -> None:
    """Put a state from :func:`capture_torch_env_state` back (data only: the env's own method reads it)."""
    if saved.get("torch_env") != type(env).__qualname__:
        raise CheckpointError(f"saved env state is for {saved.get('torch_env')!r}, the env is {type(env).__qualname__!r}")
    state = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in decode(saved["state"]).items()}
    try:
        env.load_state_dict(state)
    except (KeyError, ValueError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"saved env state does not fit the env ({type(err).__name__}: {err})") from None
