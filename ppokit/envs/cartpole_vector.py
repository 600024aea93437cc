"""Gymnasium's batched CartPole, with a step that costs less for a few envs.

Gymnasium's ``CartPoleVectorEnv.step`` runs about forty NumPy calls whatever the number of envs.
For the handful of envs a CPU run steps (CleanRL's CartPole settings use 4), each call's fixed cost
is the whole cost: ~20 µs a step, more than the policy's forward pass. :class:`CartPoleVectorEnv`
here computes the same formulas one env at a time in Python floats, which for a few envs is a
fraction of that (BENCHMARKS.md has the measurement), and leaves more envs to Gymnasium's step.

It is a subclass: construction, spaces, ``reset``, rendering and the random number stream are
Gymnasium's own. The step is Gymnasium's, bit for bit: the same IEEE operations in the same
order (``x * x`` is ``np.square``), the angle's cosine and sine still taken by NumPy (so by the
same implementation as Gymnasium's), the same draws for the envs that reset, the same dtypes.
``tests/control/test_cartpole_vector.py`` steps both side by side, with every constructor option.
ppokit uses it only under the Gymnasium releases whose step it was read against
(:data:`CHECKED_RELEASES`), so a release that changes CartPole keeps its own.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium.envs.classic_control import cartpole

#: Up to this many envs the per-env Python step is the quicker (measured: BENCHMARKS.md).
MOST_ENVS = 16

#: The registered vector entry point this class stands in for.
GYMNASIUM_ENTRY_POINT = "gymnasium.envs.classic_control.cartpole:CartPoleVectorEnv"
ENTRY_POINT = "ppokit.envs.cartpole_vector:CartPoleVectorEnv"

#: The Gymnasium releases whose step this one reproduces (read side by side: the step is the same
#: from 1.1 to 1.4). Under any other, ppokit leaves CartPole to Gymnasium's own class.
CHECKED_RELEASES = ("1.1.", "1.2.", "1.3.", "1.4.")


def stands_in() -> bool:
    """Whether the installed Gymnasium's CartPole step is the one this class reproduces."""
    return gymnasium.__version__.startswith(CHECKED_RELEASES)


class CartPoleVectorEnv(cartpole.CartPoleVectorEnv):
    """``gymnasium.envs.classic_control.cartpole.CartPoleVectorEnv`` with a quicker ``step`` for at
    most :data:`MOST_ENVS` envs; same arguments, same results."""

    #: Checkpoints name the env by this class (``ppokit.control.envs.state``): the state is Gymnasium's,
    #: so a checkpoint of either class resumes in either.
    saved_as = cartpole.CartPoleVectorEnv

    def step(self, action: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self.num_envs > MOST_ENVS:
            return super().step(action)
        assert self.action_space.contains(action), f"{action!r} ({type(action)}) invalid"
        assert self.state is not None, "Call reset before using step method."
        state = self.state
        cos = np.cos(state[2]).tolist()
        sin = np.sin(state[2]).tolist()
        force_mag, pml, total_mass = self.force_mag, self.polemass_length, self.total_mass
        gravity, length, masspole, tau = self.gravity, self.length, self.masspole, self.tau
        x_limit, theta_limit = self.x_threshold, self.theta_threshold_radians
        euler = self.kinematics_integrator == "euler"
        rows: list[tuple[float, float, float, float]] = []
        terminated: list[bool] = []
        for a, x, x_dot, theta, theta_dot, c, s in zip(action.tolist(), *state.tolist(), cos, sin):
            force = force_mag if a > 0.5 else -force_mag  # np.sign(a - 0.5) * force_mag
            temp = (force + pml * (theta_dot * theta_dot) * s) / total_mass
            thetaacc = (gravity * s - c * temp) / (length * (4.0 / 3.0 - masspole * (c * c) / total_mass))
            xacc = temp - pml * thetaacc * c / total_mass
            if euler:
                x = x + tau * x_dot
                x_dot = x_dot + tau * xacc
                theta = theta + tau * theta_dot
                theta_dot = theta_dot + tau * thetaacc
            else:  # semi-implicit Euler
                x_dot = x_dot + tau * xacc
                x = x + tau * x_dot
                theta_dot = theta_dot + tau * thetaacc
                theta = theta + tau * theta_dot
            rows.append((x, x_dot, theta, theta_dot))
            terminated.append(x < -x_limit or x > x_limit or theta < -theta_limit or theta > theta_limit)
        obs_rows = np.array(rows)
        state = obs_rows.T  # Gymnasium keeps the state as [4, num_envs]
        term = np.array(terminated)
        self.steps += 1
        trunc = self.steps >= self.max_episode_steps
        reward = -term.astype(np.float32) if self._sutton_barto_reward else np.ones(self.num_envs, np.float32)
        done = self.prev_done
        if done.any():  # the envs that ended last step start again (next-step autoreset)
            state[:, done] = self.np_random.uniform(low=self.low, high=self.high, size=(4, int(done.sum())))
            self.steps[done] = 0
            reward[done] = 0.0
            term[done] = False
            trunc[done] = False
        self.state = state
        self.prev_done = term | trunc
        return obs_rows.astype(np.float32), reward, term, trunc, {}
