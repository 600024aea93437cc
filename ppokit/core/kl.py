r"""KL-divergence estimators and the controllers that react to KL.

The estimators follow one convention: samples :math:`x \sim q` and
``log_ratio`` :math:`= \log p(x) - \log q(x)`; each estimates :math:`\mathrm{KL}(q \,\|\, p)`
(Schulman, "Approximating KL divergence", 2020).

* PPO diagnostics: actions were sampled from the old policy, so ``q`` = old, ``p`` = new and
  ``log_ratio = logp_new - logp_old`` gives :math:`\mathrm{KL}(\pi_{old} \| \pi_{new})`.
* RLHF penalty: tokens were sampled from the policy, so ``q`` = policy, ``p`` = reference and
  ``log_ratio = logp_ref - logp_policy`` gives :math:`\mathrm{KL}(\pi \| \pi_{ref})`.
* RLHF loss term (GRPO's way, :func:`ppokit.core.losses.reference_kl_loss`): the same
  :math:`\mathrm{KL}(\pi \| \pi_{ref})` with :math:`k_3`, differentiated through ``logp_policy``
  instead of subtracted from the reward. :math:`k_3`'s gradient
  :math:`\partial k_3 / \partial \log\pi = 1 - \pi_{ref}/\pi` vanishes exactly at :math:`\pi = \pi_{ref}`;
  :math:`k_1`'s is a constant 1, which would push every sampled token's probability down.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def kl_k1(log_ratio: Tensor) -> Tensor:
    r"""Naive estimator :math:`k_1 = -\log r`: unbiased, high variance, can be negative."""
    return -log_ratio


def kl_k2(log_ratio: Tensor) -> Tensor:
    r""":math:`k_2 = \tfrac12 (\log r)^2`: low variance, biased, non-negative."""
    return 0.5 * log_ratio.square()


def kl_k3(log_ratio: Tensor) -> Tensor:
    r""":math:`k_3 = (r - 1) - \log r`: unbiased, low variance and non-negative per sample."""
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


class AdaptiveKLController:
    r"""The PPO paper's adaptive penalty coefficient (Schulman et al., 2017, section 4).

    After each policy update, with :math:`d` the measured KL and :math:`d_{targ}` the target:

    .. math::
        d < d_{targ}/1.5 \Rightarrow \beta \leftarrow \beta/2, \qquad
        d > 1.5\,d_{targ} \Rightarrow \beta \leftarrow 2\beta

    The paper reports the result is insensitive to the 1.5 and 2 constants; they are parameters here.
    """

    def __init__(
        self,
        init_beta: float,
        target: float,
        tolerance: float = 1.5,
        factor: float = 2.0,
        min_beta: float = 1e-8,
        max_beta: float = 1e8,
    ) -> None:
        self.beta = float(init_beta)
        self.target = float(target)
        self.tolerance = float(tolerance)
        self.factor = float(factor)
        self.min_beta = float(min_beta)
        self.max_beta = float(max_beta)

    def update(self, kl: float) -> float:
        """Adjust β from the KL measured after an update; returns the new β."""
        if not math.isfinite(kl):
            return self.beta
        if kl < self.target / self.tolerance:
            self.beta /= self.factor
        elif kl > self.target * self.tolerance:
            self.beta *= self.factor
        self.beta = min(max(self.beta, self.min_beta), self.max_beta)
        return self.beta

    def state_dict(self) -> dict[str, float]:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.beta = float(state["beta"])


class AdaptiveClipController:
    r"""Adapts the clip range ε to keep the per-update KL near a target.

    .. math::
        d > d_{targ}\cdot\text{tol} \Rightarrow \epsilon \leftarrow \epsilon/\alpha, \qquad
        d < d_{targ}/\text{tol} \Rightarrow \epsilon \leftarrow \alpha\,\epsilon

    clamped to ``[min_clip, max_clip]``: a policy that moves too far gets a tighter trust region, one
    that barely moves gets a looser one.
    """

    def __init__(
        self,
        init_clip: float,
        target: float,
        tolerance: float = 1.5,
        factor: float = 1.5,
        min_clip: float = 0.02,
        max_clip: float = 0.5,
    ) -> None:
        self.clip_range = float(init_clip)
        self.target = float(target)
        self.tolerance = float(tolerance)
        self.factor = float(factor)
        self.min_clip = float(min_clip)
        self.max_clip = float(max_clip)

    def update(self, kl: float) -> float:
        """Adjust ε from the KL measured after an update; returns the new ε."""
        if not math.isfinite(kl):
            return self.clip_range
        if kl > self.target * self.tolerance:
            self.clip_range /= self.factor
        elif kl < self.target / self.tolerance:
            self.clip_range *= self.factor
        self.clip_range = min(max(self.clip_range, self.min_clip), self.max_clip)
        return self.clip_range

    def state_dict(self) -> dict[str, float]:
        return {"clip_range": self.clip_range}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.clip_range = float(state["clip_range"])


class ProportionalKLController:
    r"""The RLHF penalty controller of Ziegler et al. (2019), "Fine-Tuning Language Models from
    Human Preferences", section 2.2: a proportional controller that steers the measured KL
    :math:`d` of the policy to the reference towards a target :math:`d_{targ}`.

    .. math::
        e = \mathrm{clip}\Big(\frac{d}{d_{targ}} - 1,\ -0.2,\ 0.2\Big), \qquad
        \beta \leftarrow \beta\,\Big(1 + K_\beta\, e\, \frac{n}{H}\Big)

    where :math:`n` is the number of samples (sequences) in the step and :math:`H` the horizon:
    the number of samples over which the controller may move β by about :math:`\pm 20\,\%`.
    Unlike :class:`AdaptiveKLController` it moves β gently, because every RLHF step resamples text
    and the measured KL is noisy.
    """

    def __init__(
        self,
        init_beta: float,
        target: float,
        horizon: float = 10_000,
        gain: float = 1.0,
        clip_error: float = 0.2,
    ) -> None:
        self.beta = float(init_beta)
        self.target = float(target)
        self.horizon = float(horizon)
        self.gain = float(gain)
        self.clip_error = float(clip_error)

    def update(self, kl: float, num_samples: int) -> float:
        """Adjust β from the mean per-sequence KL of the last step; returns the new β."""
        if not math.isfinite(kl):
            return self.beta
        error = min(max(kl / self.target - 1.0, -self.clip_error), self.clip_error)
        self.beta *= 1.0 + self.gain * error * num_samples / self.horizon
        return self.beta

    def state_dict(self) -> dict[str, float]:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.beta = float(state["beta"])


class ConstantKL:
    """β that stays as it was set: the KL weight of a run without an adaptive controller, kept where an
    adaptive one would keep it, so a trainer reads and saves β in one place either way."""

    def __init__(self, beta: float) -> None:
        self.beta = float(beta)

    def update(self, kl: float, num_samples: int) -> float:
        """β, unchanged."""
        return self.beta

    def state_dict(self) -> dict[str, float]:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.beta = float(state["beta"])
