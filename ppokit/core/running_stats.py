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
        # The statistics live in NumPy arrays (the rollout updates them every env step, where a
        # dozen small torch ops would cost more than the arithmetic); ``mean``, ``var`` and
        # ``count`` are torch views of them, and loading state copies into them in place.
        self._mean = np.zeros(shape, dtype=np.float64)
        self._var = np.ones(shape, dtype=np.float64)
        # A tiny prior count keeps the first normalisation finite, as in baselines' RunningMeanStd.
        self._count = np.array(float(epsilon), dtype=np.float64)
        self.mean = torch.from_numpy(self._mean)
        self.var = torch.from_numpy(self._var)
        self.count = torch.from_numpy(self._count)
        #: Data parallel: the updates since the last merge across processes (see share_updates).
        self._pending: RunningMeanStd | None = None
        self._merged: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        #: Entries that normalising leaves as they are (the image values of a flattened Dict
        #: observation, which the CNN scales itself); None: every entry is normalised. Their
        #: statistics are still kept, so the saved state has the same shape either way.
        self.keep: np.ndarray | None = None
        self._keep_tensor: Tensor | None = None

    def keep_entries(self, keep: np.ndarray | None) -> None:
        """Leave the entries where ``keep`` is true as they are when normalising (see :attr:`keep`)."""
        self.keep = None if keep is None or not np.any(keep) else np.asarray(keep, dtype=bool).reshape(self._mean.shape)
        self._keep_tensor = None if self.keep is None else torch.from_numpy(self.keep)

    def share_updates(self) -> None:
        """Also keep the updates since the last :meth:`merge_pending` apart, so that processes that
        each update their own copy can merge each other's into the same statistics."""
        self._pending = RunningMeanStd(self._mean.shape, epsilon=0.0)
        self._merged = (self._mean.copy(), self._var.copy(), self._count.copy())

    def pending_moments(self) -> tuple[float, np.ndarray, np.ndarray]:
        """``(count, mean, var)`` of the batches since the last merge."""
        assert self._pending is not None, "share_updates() first"
        return float(self._pending._count), self._pending._mean.copy(), self._pending._var.copy()

    def merge_pending(self, parts: list[tuple[float, np.ndarray, np.ndarray]]) -> None:
        """Set the statistics to those of the last merge plus each ``(count, mean, var)`` part, in order
        (every process's :meth:`pending_moments`, so all processes compute the same result)."""
        assert self._merged is not None, "share_updates() first"
        mean, var, count = (a.copy() for a in self._merged)
        for n, part_mean, part_var in parts:
            if n <= 0:
                continue
            total = count + n
            delta = part_mean - mean
            m2 = var * count + part_var * n + delta * delta * (count * n / total)
            mean = mean + delta * (n / total)
            var = m2 / total
            count = total
        self._mean[...], self._var[...], self._count[...] = mean, var, count
        self.share_updates()

    def update(self, batch: Tensor) -> None:
        self.update_array(batch.detach().cpu().numpy())

    def update_array(self, batch: np.ndarray) -> None:
        """:meth:`update` from a NumPy batch, in place."""
        batch = np.asarray(batch, dtype=np.float64)
        n = batch.shape[0]
        if n == 0:
            return
        if self._pending is not None:
            self._pending.update_array(batch)
        mean, var, count = self._mean, self._var, self._count
        total = count + n
        if n == 1:  # one env: the batch's own variance is 0
            delta = batch[0] - mean
            m2 = var * count + delta * delta * (count / total)
        else:
            # ufunc reductions directly: np.mean/np.var add Python overhead on every env step.
            batch_mean = np.add.reduce(batch, axis=0) / n
            diff = batch - batch_mean
            delta = batch_mean - mean
            m2 = var * count + np.add.reduce(diff * diff, axis=0) + delta * delta * (count * n / total)
        mean += delta * (n / total)
        var[...] = m2 / total
        count[...] = total

    def normalize_array(self, x: np.ndarray, clip: float | None = None, eps: float = 1e-8) -> np.ndarray:
        """:meth:`normalize` for a NumPy array, returned as float32."""
        out = ((x - self._mean) / np.sqrt(self._var + eps)).astype(np.float32)
        if clip is not None:
            np.minimum(np.maximum(out, -clip, out=out), clip, out=out)
        if self.keep is not None:
            out = np.where(self.keep, np.asarray(x, dtype=np.float32), out)
        return out

    def scale_array(self, x: np.ndarray, clip: float | None = None, eps: float = 1e-8) -> np.ndarray:
        """:meth:`scale` for a NumPy array."""
        out = x / np.sqrt(float(self._var) + eps) if self._var.ndim == 0 else x / np.sqrt(self._var + eps)
        if clip is not None:
            out = np.minimum(np.maximum(out, -clip), clip)
        return out

    def normalize(self, x: Tensor, clip: float | None = None, eps: float = 1e-8) -> Tensor:
        """``(x - mean) / sqrt(var + eps)``, clipped to ``±clip``, in ``x``'s dtype."""
        out = (x - self.mean.to(x.device, x.dtype)) * torch.rsqrt(self.var.to(x.device, x.dtype) + eps)
        out = out.clamp(-clip, clip) if clip is not None else out
        if self._keep_tensor is not None:
            out = torch.where(self._keep_tensor.to(x.device), x, out)
        return out

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
        self._mean[...] = state["mean"].to(torch.float64).numpy()
        self._var[...] = state["var"].to(torch.float64).numpy()
        self._count[...] = state["count"].to(torch.float64).reshape(()).numpy()
        if self._pending is not None:
            self.share_updates()


class DeviceMeanStd:
    """A :class:`RunningMeanStd`'s statistics as tensors on a device, updated there by the same merge,
    so that normalising every step of a device-resident rollout reads nothing back to the host.

    The host object stays the record (it is saved, restored, merged and used by ``predict``):
    :meth:`load` copies it to the device when it changed there, :meth:`store` writes the device's
    statistics back, exactly (float64), once per rollout; :meth:`packed` lets that read-back share
    one transfer with the rollout's other figures.
    """

    def __init__(self, host: RunningMeanStd, device: torch.device) -> None:
        self.host, self.device = host, device
        # MPS has no float64; everywhere else the statistics keep the host's precision.
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.shape = tuple(host._mean.shape)
        self.size = int(np.prod(self.shape))
        self.mean = torch.zeros(self.shape, dtype=self.dtype, device=device)
        self.var = torch.ones(self.shape, dtype=self.dtype, device=device)
        self.count = torch.zeros((), dtype=self.dtype, device=device)
        self._seen: np.ndarray | None = None  # the host's values as last loaded or stored
        self.load()

    def _host_values(self) -> np.ndarray:
        return np.concatenate([self.host._mean.ravel(), self.host._var.ravel(), self.host._count.reshape(1)])

    def load(self) -> None:
        """Copy the host's statistics to the device if they changed there (a checkpoint restored, a merge)."""
        values = self._host_values()
        if self._seen is not None and np.array_equal(values, self._seen):
            return
        t = torch.from_numpy(values).to(self.device, self.dtype)
        self.mean = t[:self.size].reshape(self.shape).clone()
        self.var = t[self.size:2 * self.size].reshape(self.shape).clone()
        self.count = t[-1].clone()
        self._seen = values

    def update(self, batch: Tensor) -> None:
        """:meth:`RunningMeanStd.update_array`'s merge of a batch ``[n, *shape]``, on the device."""
        n = batch.shape[0]
        x = batch.to(self.dtype)
        batch_mean = x.mean(dim=0)
        batch_var = x.var(dim=0, unbiased=False) if n > 1 else torch.zeros_like(batch_mean)
        total = self.count + n
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n + delta * delta * (self.count * n / total)
        self.mean = self.mean + delta * (n / total)
        self.var = m2 / total
        self.count = total

    def normalize(self, x: Tensor, clip: float | None = None, eps: float = 1e-8) -> Tensor:
        """``(x - mean) / sqrt(var + eps)``, clipped to ``±clip``, as float32."""
        out = ((x.to(self.dtype) - self.mean) * torch.rsqrt(self.var + eps)).to(torch.float32)
        out = out.clamp(-clip, clip) if clip is not None else out
        if self.host.keep is not None:  # image entries, left for the CNN to scale
            out = torch.where(torch.as_tensor(self.host.keep, device=out.device), x.to(torch.float32), out)
        return out

    def scale(self, x: Tensor, clip: float | None = None, eps: float = 1e-8) -> Tensor:
        """``x / sqrt(var + eps)``, clipped to ``±clip`` (rewards), as float32."""
        out = (x.to(self.dtype) * torch.rsqrt(self.var + eps)).to(torch.float32)
        return out.clamp(-clip, clip) if clip is not None else out

    def packed(self) -> Tensor:
        """``[mean, var, count]`` flat, in float64, for :meth:`store` after a read-back."""
        return torch.cat([self.mean.reshape(-1), self.var.reshape(-1), self.count.reshape(1)]).to(torch.float64)

    def store(self, values: np.ndarray) -> None:
        """Write statistics read back from :meth:`packed` into the host object, in place."""
        values = np.asarray(values, dtype=np.float64)
        self.host._mean[...] = values[:self.size].reshape(self.shape)
        self.host._var[...] = values[self.size:2 * self.size].reshape(self.shape)
        self.host._count[...] = values[-1]
        self._seen = self._host_values()
