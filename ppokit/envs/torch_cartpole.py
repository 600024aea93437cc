"""CartPole-v1 as one batched torch env: ``num_envs`` carts stepped in a handful of tensor ops."""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor


class TorchCartPole:
    r"""Gymnasium's CartPole-v1 for ``num_envs`` envs at once, as torch tensors on ``device``.

    The physics are Gymnasium's (Barto, Sutton & Anderson's cart-pole, Euler integration,
    :math:`\tau = 0.02` s): for a force :math:`F = \pm 10` N,

    .. math::
        \ddot\theta = \frac{g\sin\theta - \cos\theta\,\frac{F + m_p l\dot\theta^2\sin\theta}{m_c + m_p}}
                           {l\,\big(\tfrac43 - \frac{m_p\cos^2\theta}{m_c + m_p}\big)},\qquad
        \ddot x = \frac{F + m_p l\dot\theta^2\sin\theta}{m_c + m_p} - \frac{m_p l\,\ddot\theta\cos\theta}{m_c + m_p}

    with the same constants, a reward of 1 per step, termination when :math:`|x| > 2.4` or
    :math:`|\theta| > 12°`, truncation after ``max_episode_steps`` (500, as registered), and start
    states uniform in :math:`[-0.05, 0.05]^4`.

    An episode that ends is reset **in the same step** (as GPU simulators do): the observation
    returned for it is the next episode's first, and its last one is in ``info['final_obs']``
    (``final_obs=False`` leaves it out, as Isaac Lab does). Random starts come from a
    ``torch.Generator`` on ``device``, seeded by :meth:`reset`; ``dtype`` is the physics' precision.
    Nothing in :meth:`step` reads a tensor back to the host.
    """

    gravity = 9.8
    masscart = 1.0
    masspole = 0.1
    total_mass = masspole + masscart
    length = 0.5  # half the pole's length
    polemass_length = masspole * length
    force_mag = 10.0
    tau = 0.02
    theta_threshold_radians = 12 * 2 * math.pi / 360
    x_threshold = 2.4
    metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}

    def __init__(self, num_envs: int = 4096, device: str | torch.device = "cpu", *, max_episode_steps: int = 500,
                 final_obs: bool = True, dtype: torch.dtype = torch.float32) -> None:
        self.num_envs = int(num_envs)
        self.device = torch.device(device)
        self.max_episode_steps = int(max_episode_steps)
        self.final_obs = final_obs
        self.dtype = dtype
        high = np.array([self.x_threshold * 2, np.inf, self.theta_threshold_radians * 2, np.inf], dtype=np.float32)
        self.single_observation_space = spaces.Box(-high, high, dtype=np.float32)
        self.single_action_space = spaces.Discrete(2)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(0)
        self.state = torch.zeros(self.num_envs, 4, dtype=dtype, device=self.device)
        self.elapsed = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)

    def _starts(self) -> Tensor:
        u = torch.rand(self.num_envs, 4, generator=self.generator, dtype=self.dtype, device=self.device)
        return u * 0.1 - 0.05

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Tensor, dict[str, Any]]:
        """Start every env afresh (``seed`` reseeds the start states' generator)."""
        if seed is not None:
            self.generator.manual_seed(int(seed))
        self.state = self._starts()
        self.elapsed.zero_()
        return self.state.to(torch.float32), {}

    def physics(self, state: Tensor, actions: Tensor) -> Tensor:
        """One Euler step of every cart from ``state`` ``[n, 4]`` under ``actions`` ``[n]`` (0 pushes left)."""
        x, x_dot, theta, theta_dot = state.unbind(1)
        force = torch.where(actions.reshape(-1) == 1, self.force_mag, -self.force_mag).to(state.dtype)
        costheta, sintheta = torch.cos(theta), torch.sin(theta)
        temp = (force + self.polemass_length * theta_dot.square() * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * costheta.square() / self.total_mass))
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        return torch.stack([x + self.tau * x_dot, x_dot + self.tau * xacc,
                            theta + self.tau * theta_dot, theta_dot + self.tau * thetaacc], dim=1)

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Any]]:
        """Push every cart left (0) or right (1); ended episodes restart in the same step."""
        self.state = state = self.physics(self.state, actions)
        x, theta = state[:, 0], state[:, 2]
        terminated = (x.abs() > self.x_threshold) | (theta.abs() > self.theta_threshold_radians)
        self.elapsed += 1
        truncated = self.elapsed >= self.max_episode_steps
        done = terminated | truncated
        info: dict[str, Any] = {"final_obs": state.to(torch.float32)} if self.final_obs else {}
        self.state = torch.where(done.unsqueeze(1), self._starts(), state)
        self.elapsed.masked_fill_(done, 0)
        reward = torch.ones(self.num_envs, dtype=torch.float32, device=self.device)
        return self.state.to(torch.float32), reward, terminated, truncated, info

    def state_dict(self) -> dict[str, Tensor]:
        """Everything the envs' future depends on, for an exact resume."""
        return {"state": self.state.clone(), "elapsed": self.elapsed.clone(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = torch.as_tensor(state["state"])
        if tuple(saved.shape) != tuple(self.state.shape):
            raise ValueError(f"saved cart-pole state has shape {tuple(saved.shape)}, expected {tuple(self.state.shape)}")
        self.state = saved.to(self.device, self.dtype).clone()
        self.elapsed = torch.as_tensor(state["elapsed"]).to(self.device, torch.int64).clone()
        self.generator.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8).cpu())

    def close(self) -> None:
        """Nothing to release."""
