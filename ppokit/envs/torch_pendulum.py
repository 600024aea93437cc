"""Pendulum-v1 as one batched torch env: ``num_envs`` pendulums swung up at once."""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor


class TorchPendulum:
    r"""Gymnasium's Pendulum-v1 for ``num_envs`` envs at once, as torch tensors on ``device``.

    The physics are Gymnasium's: for a torque :math:`u` clipped to :math:`[-2, 2]`,

    .. math::
        \dot\theta' = \mathrm{clip}\big(\dot\theta + (\tfrac{3g}{2l}\sin\theta + \tfrac{3}{ml^2}u)\,dt,\ \pm 8\big),
        \qquad \theta' = \theta + \dot\theta'\,dt,\qquad
        r = -\big(\mathrm{norm}(\theta)^2 + 0.1\,\dot\theta^2 + 0.001\,u^2\big)

    with :math:`g = 10`, :math:`m = l = 1`, :math:`dt = 0.05`, observations
    :math:`(\cos\theta, \sin\theta, \dot\theta)`, start states uniform in :math:`[-\pi, \pi] \times [-1, 1]`,
    no termination and truncation after ``max_episode_steps`` (200, as registered).

    Episodes restart **in the same step** they end; the last observation is in
    ``info['final_obs']`` (``final_obs=False`` leaves it out). See
    :class:`~ppokit.envs.torch_cartpole.TorchCartPole` for the generator and ``dtype``.
    """

    max_speed = 8.0
    max_torque = 2.0
    dt = 0.05
    m = 1.0
    l = 1.0  # noqa: E741 - Gymnasium's name for the pendulum's length
    metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}

    def __init__(self, num_envs: int = 4096, device: str | torch.device = "cpu", *, g: float = 10.0,
                 max_episode_steps: int = 200, final_obs: bool = True, dtype: torch.dtype = torch.float32) -> None:
        self.num_envs = int(num_envs)
        self.device = torch.device(device)
        self.g = float(g)
        self.max_episode_steps = int(max_episode_steps)
        self.final_obs = final_obs
        self.dtype = dtype
        high = np.array([1.0, 1.0, self.max_speed], dtype=np.float32)
        self.single_observation_space = spaces.Box(-high, high, dtype=np.float32)
        self.single_action_space = spaces.Box(-self.max_torque, self.max_torque, shape=(1,), dtype=np.float32)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(0)
        self.state = torch.zeros(self.num_envs, 2, dtype=dtype, device=self.device)
        self.elapsed = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        self._high = torch.tensor([math.pi, 1.0], dtype=dtype, device=self.device)

    def _starts(self) -> Tensor:
        u = torch.rand(self.num_envs, 2, generator=self.generator, dtype=self.dtype, device=self.device)
        return (u * 2.0 - 1.0) * self._high

    @staticmethod
    def observe(state: Tensor) -> Tensor:
        theta, theta_dot = state.unbind(1)
        return torch.stack([torch.cos(theta), torch.sin(theta), theta_dot], dim=1).to(torch.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Tensor, dict[str, Any]]:
        """Start every env afresh (``seed`` reseeds the start states' generator)."""
        if seed is not None:
            self.generator.manual_seed(int(seed))
        self.state = self._starts()
        self.elapsed.zero_()
        return self.observe(self.state), {}

    def physics(self, state: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """``(next state, reward)`` of every pendulum from ``state`` ``[n, 2]`` under torques ``[n, 1]``."""
        theta, theta_dot = state.unbind(1)
        u = actions.reshape(-1).to(state.dtype).clamp(-self.max_torque, self.max_torque)
        normalized = torch.remainder(theta + math.pi, 2 * math.pi) - math.pi
        costs = normalized.square() + 0.1 * theta_dot.square() + 0.001 * u.square()
        new_theta_dot = theta_dot + (3 * self.g / (2 * self.l) * torch.sin(theta) + 3.0 / (self.m * self.l**2) * u) * self.dt
        new_theta_dot = new_theta_dot.clamp(-self.max_speed, self.max_speed)
        return torch.stack([theta + new_theta_dot * self.dt, new_theta_dot], dim=1), -costs

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Any]]:
        """Apply a torque ``[num_envs, 1]`` to every pendulum; ended episodes restart in the same step."""
        state, reward = self.physics(self.state, actions)
        self.elapsed += 1
        truncated = self.elapsed >= self.max_episode_steps
        terminated = torch.zeros_like(truncated)
        info: dict[str, Any] = {"final_obs": self.observe(state)} if self.final_obs else {}
        self.state = torch.where(truncated.unsqueeze(1), self._starts(), state)
        self.elapsed.masked_fill_(truncated, 0)
        return self.observe(self.state), reward.to(torch.float32), terminated, truncated, info

    def state_dict(self) -> dict[str, Tensor]:
        """Everything the envs' future depends on, for an exact resume."""
        return {"state": self.state.clone(), "elapsed": self.elapsed.clone(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = torch.as_tensor(state["state"])
        if tuple(saved.shape) != tuple(self.state.shape):
            raise ValueError(f"saved pendulum state has shape {tuple(saved.shape)}, expected {tuple(self.state.shape)}")
        self.state = saved.to(self.device, self.dtype).clone()
        self.elapsed = torch.as_tensor(state["elapsed"]).to(self.device, torch.int64).clone()
        self.generator.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8).cpu())

    def close(self) -> None:
        """Nothing to release."""
