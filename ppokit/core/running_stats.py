"""Running mean and variance, for observation and return normalisation."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class RunningMeanStd:
    r"""Streaming mean and variance over the leading (batch) dimension.

    Batches are merged with Chan et al.'s parallel update: for counts :math:`n_a, n_b`, means
    :math:`\mu_a, \mu_b` and variances :math:`\sigma^2_a, \sigma^2_b`,

    .. math::
        \delta = \mu_b - \mu_a,\quad n = n_a + n_b,\quad \mu = \mu_a + \delta\,n_b/n,\quad
        \sigma^2 = \big(n_a\sigma^2_a + n_b\sigma^2_b + \delta^2 n_a n_b / n\big)/n

    Statistics are kept in float64 so that millions of updates do not drift.
    """

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4) -> None:
        self.mean = torch.zeros(shape, dtype=torch.float64)
        self.var = torch.ones(shape, dtype=torch.float64)
        # A tiny prior count keeps the first normalisation finite, as in baselines' RunningMeanStd.
        self.count = torch.tensor(float(epsilon), dtype=torch.float64)

    def update(self, batch: Tensor) -> None:
        batch = batch.detach().to(torch.float64)
        batch_count = batch.shape[0]
        if batch_count == 0:
            return
        batch_mean = batch.mean(dim=0)
        batch_var = batch.var(dim=0, unbiased=False)
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * (batch_count / total)
        m2 = self.var * self.count + batch_var * batch_count + delta.square() * self.count * batch_count / total
        self.var = m2 / total
        self.count = total

    def update_array(self, batch: np.ndarray) -> None:
        """:meth:`update` for a NumPy batch, computed in NumPy: the rollout calls it every env step,
        where a dozen small torch ops would cost more than the statistics."""
        batch = np.asarray(batch, dtype=np.float64)
        batch_count = batch.shape[0]
        if batch_count == 0:
            return
        mean, var, count = self.mean.numpy(), self.var.numpy(), float(self.count)
        delta = batch.mean(axis=0) - mean
        total = count + batch_count
        m2 = var * count + batch.var(axis=0) * batch_count + np.square(delta) * count * batch_count / total
        self.mean = torch.from_numpy(np.asarray(mean + delta * (batch_count / total)))
        self.var = torch.from_numpy(np.asarray(m2 / total))
        self.count = torch.tensor(total, dtype=torch.float64)

    def normalize_array(self, x: np.ndarray, clip: float | None = None, eps: float = 1e-8) -> np.ndarray:
        """:meth:`normalize` for a NumPy array, returned as float32."""
        out = ((x - self.mean.numpy()) / np.sqrt(self.var.numpy() + eps)).astype(np.float32)
        return np.clip(out, -clip, clip, out=out) if clip is not None else out

    def normalize(self, x: Tensor, clip: float | None = None, eps: float = 1e-8) -> Tensor:
        """``(x - mean) / sqrt(var + eps)``, clipped to ``±clip``, in ``x``'s dtype."""
        out = (x - self.mean.to(x.device, x.dtype)) * torch.rsqrt(self.var.to(x.device, x.dtype) + eps)
        return out.clamp(-clip, clip) if clip is not None else out

    def scale(self, x: Tensor, clip: float | None = None, eps: float = 1e-8) -> Tensor:
        """``x / sqrt(var + eps)`` without shifting the mean (used for rewards)."""
        out = x * torch.rsqrt(self.var.to(x.device, x.dtype) + eps)
        return out.clamp(-clip, clip) if clip is not None else out

    def state_dict(self) -> dict[str, Tensor]:
        return {"mean": self.mean.clone(), "var": self.var.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if tuple(state["mean"].shape) != tuple(self.mean.shape):
            raise ValueError(
                f"running statistics have shape {tuple(state['mean'].shape)}, "
                f"expected {tuple(self.mean.shape)}"
            )
        self.mean = state["mean"].to(torch.float64).clone()
        self.var = state["var"].to(torch.float64).clone()
        self.count = state["count"].to(torch.float64).reshape(()).clone()
