r"""The K epochs of several seeds at once, each seed's Adam, clipping and early stop its own.

:func:`run_stacked_epochs` is :func:`ppokit.core.update.run_epochs` for ``S`` seeds driven in
lockstep through a :class:`~ppokit.control.fast.stacked_update.StackedMinibatchStep`: minibatch ``j``
of epoch ``e`` is every seed's own minibatch ``j`` of its own shuffle, one batched forward and
backward pass for all of them, then per seed (as vectors over the seed axis) what ``run_epochs``
does for one: the early stop at ``1.5 × target_kl`` before the step, the finiteness checks, the
clipping to ``max_grad_norm`` by the seed's own gradient norm, and Adam with the seed's own moments,
step count and learning rate (:class:`StackedAdam`). A seed that stops early sits out the remaining
minibatches; the others go on. The statistics returned are ``run_epochs``'s, one dict per seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ppokit.control.fast.flat_adam import FlatAdam
from ppokit.control.fast.stacked_update import StackedMinibatchStep, common_settings
from ppokit.core.update import NonFiniteError, PPOUpdateSettings, epochs_summary


class StackedAdam:
    r"""``S`` seeds' :class:`FlatAdam` state stacked ``[S, P]`` for one update, then handed back.

    :meth:`step` is ``torch.optim.Adam``'s rule (FlatAdam's, by the same fused kernel where torch
    has it) with each seed's own step count ``t_s`` and learning rate ``lr_s``, for the seeds named:

    .. math:: m \leftarrow m + (1-\beta_1)(g - m),\quad v \leftarrow \beta_2 v + (1-\beta_2) g^2,\quad
        \theta \leftarrow \theta - \frac{lr_s}{1-\beta_1^{t_s}}\,\frac{m}{\sqrt{v}/\sqrt{1-\beta_2^{t_s}} + \epsilon}

    The FlatAdams keep the state between updates (their checkpoints are a solo run's, so a stacked
    group resumes from them); :meth:`store` writes the stacks back into them.
    """

    def __init__(self, optimizers: Sequence[FlatAdam]) -> None:
        if any(not o._host for o in optimizers):
            raise ValueError("StackedAdam: float32 parameters on the CPU only")
        self.optimizers = list(optimizers)
        self.weights = np.stack([o.flat.numpy() for o in optimizers])
        self.grads = np.zeros_like(self.weights)
        self.exp_avg = np.stack([o.exp_avg.numpy() for o in optimizers])
        self.exp_avg_sq = np.stack([o.exp_avg_sq.numpy() for o in optimizers])
        self.steps = np.array([o.steps for o in optimizers], dtype=np.int64)
        groups = [o.param_groups[0] for o in optimizers]
        self.lr = np.array([g["lr"] for g in groups], dtype=np.float64)
        self.beta1 = np.array([g["betas"][0] for g in groups], dtype=np.float64)
        self.beta2 = np.array([g["betas"][1] for g in groups], dtype=np.float64)
        # The elementwise factors, as columns in the buffers' float32.
        self.keep1 = (1.0 - self.beta1).astype(np.float32)[:, None]
        self.keep2 = self.beta2.astype(np.float32)[:, None]
        self.new2 = (1.0 - self.beta2).astype(np.float32)[:, None]
        self.eps = np.array([g["eps"] for g in groups], dtype=np.float32)[:, None]
        #: torch's fused Adam kernel (FlatAdam's) where torch has it: one call for every seed at the
        #: same step count with the same hyperparameters; else the same rule in NumPy.
        self.fused = hasattr(torch, "_fused_adam_")
        stacks = [torch.from_numpy(a) for a in (self.weights, self.grads, self.exp_avg, self.exp_avg_sq)]
        self._whole = [[t.view(-1)] for t in stacks]
        self._rows = [[t[k] for k in range(len(optimizers))] for t in stacks]
        self._count = torch.zeros((), dtype=torch.float32)
        self._hyper = [(float(g["lr"]), float(g["betas"][0]), float(g["betas"][1]), float(g["eps"])) for g in groups]

    def clip_grad_norm(self, max_norm: float) -> np.ndarray:
        """Scale each seed's gradient to an L2 norm of at most ``max_norm`` (the factor of
        ``clip_grad_norm_``, ``min(1, max_norm / (norm + 1e-6))``); each seed's norm before, ``[S]``."""
        norms = np.sqrt(np.einsum("sp,sp->s", self.grads, self.grads).astype(np.float64))
        if max_norm != float("inf"):
            with np.errstate(all="ignore"):
                scale = np.minimum(max_norm / (norms + 1e-6), 1.0).astype(np.float32)
            self.grads *= scale[:, None]
        return norms

    def step(self, seeds: np.ndarray) -> None:
        """One Adam step of the seeds where ``seeds`` (``[S]`` bool) is set; the others are left as they are."""
        if not self.fused:
            if seeds.all():
                self._step(slice(None))
            elif seeds.any():
                self._step(np.flatnonzero(seeds))
            return
        at = np.flatnonzero(seeds)
        self.steps[at] += 1
        together: dict[tuple[Any, ...], list[int]] = {}
        for k in at.tolist():
            together.setdefault((int(self.steps[k]), *self._hyper[k]), []).append(k)
        for (count, lr, beta1, beta2, eps), members in together.items():
            self._count.fill_(count)  # read, never written, by the kernel: one tensor serves every row
            if len(members) == len(self.optimizers):
                params, grads, exp_avg, exp_avg_sq = self._whole
                counts = [self._count]
            else:
                params, grads, exp_avg, exp_avg_sq = ([rows[k] for k in members] for rows in self._rows)
                counts = [self._count] * len(members)
            torch._fused_adam_(params, grads, exp_avg, exp_avg_sq, [], counts, amsgrad=False, lr=lr, beta1=beta1,
                               beta2=beta2, weight_decay=0.0, eps=eps, maximize=False)

    def _step(self, at: slice | np.ndarray) -> None:
        self.steps[at] += 1
        t = self.steps[at]
        step_size = (self.lr[at] / (1.0 - self.beta1[at] ** t)).astype(np.float32)[:, None]
        inv_sqrt_bias2 = (1.0 / np.sqrt(1.0 - self.beta2[at] ** t)).astype(np.float32)[:, None]
        g = self.grads[at]
        m = self.exp_avg[at]
        m += self.keep1[at] * (g - m)  # torch's lerp towards the gradient
        v = self.exp_avg_sq[at]
        v *= self.keep2[at]
        v += self.new2[at] * (g * g)
        denom = np.sqrt(v)
        denom *= inv_sqrt_bias2
        denom += self.eps[at]
        update = m / denom
        update *= step_size
        if isinstance(at, slice):  # the rows themselves (views): already in place
            self.weights -= update
        else:  # fancy indexing gave copies: write them back
            self.exp_avg[at], self.exp_avg_sq[at] = m, v
            self.weights[at] -= update

    def finite(self) -> np.ndarray:
        """``[S]``: whether each seed's parameters are all finite."""
        return np.isfinite(self.weights).all(axis=1)

    def store(self) -> None:
        """Hand every seed's parameters, moments and step count back to its FlatAdam."""
        for s, o in enumerate(self.optimizers):
            o.flat.numpy()[:] = self.weights[s]
            o.exp_avg.numpy()[:] = self.exp_avg[s]
            o.exp_avg_sq.numpy()[:] = self.exp_avg_sq[s]
            o.steps = int(self.steps[s])


def _nonfinite(quantity: str, epoch: int, minibatch: int, label: str) -> NonFiniteError:
    err = NonFiniteError(quantity, epoch, minibatch)
    err.args = (f"{label}: {err.args[0]}",)
    return err


def run_stacked_epochs(step: StackedMinibatchStep, adam: StackedAdam, settings: Sequence[PPOUpdateSettings],
                       splits: Sequence[Sequence[Sequence[np.ndarray]]],
                       labels: Sequence[str] | None = None) -> list[dict[str, float]]:
    """The K epochs of every seed; ``splits[s][e]``: seed ``s``'s minibatches (row indices) in epoch
    ``e``, as its own ``torch.randperm`` gives them. ``labels[s]`` names seed ``s`` in errors.
    Returns :func:`~ppokit.core.update.run_epochs`'s statistics for each seed. ``adam``'s stacks are
    changed in place (:meth:`StackedAdam.store` hands them back; done here, also when this raises,
    so each seed keeps its last good step)."""
    common = common_settings(settings)
    size = len(settings)
    names = list(labels) if labels is not None else [f"seed {s}" for s in range(size)]
    max_norm = common.max_grad_norm if common.max_grad_norm is not None else float("inf")
    running = np.ones(size, dtype=bool)  # not stopped early
    early = np.zeros(size, dtype=bool)
    epochs_done = np.zeros(size, dtype=np.int64)
    skipped = np.zeros(size, dtype=np.int64)
    rows: list[list[np.ndarray]] = [[] for _ in range(size)]
    norms_of: list[list[float]] = [[] for _ in range(size)]
    last_step = [(0, 0)] * size
    empty = np.zeros(0, dtype=np.intp)
    try:
        for epoch in range(common.num_epochs):
            count = max(len(splits[s][epoch]) for s in range(size))
            for mb in range(count):
                parts = [splits[s][epoch][mb] if running[s] and mb < len(splits[s][epoch]) else empty
                         for s in range(size)]
                takes = running & np.array([len(p) > 0 for p in parts])
                if not takes.any():
                    continue
                losses = step.forward(parts)
                if common.target_kl is not None:
                    stop = takes & (step.approx_kl() > 1.5 * common.target_kl)
                    early |= stop
                    running &= ~stop
                    takes &= ~stop
                bad = takes & ~np.isfinite(losses)
                if bad.any():
                    if not common.skip_nonfinite:
                        raise _nonfinite("loss", epoch, mb, names[int(np.argmax(bad))])
                    skipped += bad
                    takes &= ~bad
                if not takes.any():
                    continue
                step.backward()
                norms = adam.clip_grad_norm(max_norm)
                bad = takes & ~np.isfinite(norms)
                if bad.any():
                    if not common.skip_nonfinite:
                        raise _nonfinite("gradient", epoch, mb, names[int(np.argmax(bad))])
                    skipped += bad
                    takes &= ~bad
                adam.step(takes)
                stats = step.stats()
                for s in np.flatnonzero(takes).tolist():
                    rows[s].append(stats[s].copy())
                    norms_of[s].append(float(norms[s]))
                    last_step[s] = (epoch, mb)
            epochs_done += running
            if not running.any():
                break
        finite = adam.finite()
        for s in range(size):
            if rows[s] and not finite[s]:
                raise _nonfinite("parameter", *last_step[s], names[s])
    finally:
        adam.store()
    return [_summary(rows[s], norms_of[s], int(epochs_done[s]), bool(early[s]), int(skipped[s])) for s in range(size)]


def _summary(rows: list[np.ndarray], norms: list[float], epochs: int, early: bool, skipped: int) -> dict[str, Any]:
    """One seed's statistics, as :func:`~ppokit.core.update.run_epochs` gives them."""
    means = np.mean(np.stack(rows), axis=0).tolist() if rows else None
    return epochs_summary(means, norms, epochs, early, len(rows), skipped)


def stacked_update(policy: Any, optimizers: Sequence[FlatAdam], data: Sequence[Any],
                   settings: Sequence[PPOUpdateSettings], splits: Sequence[Sequence[Sequence[np.ndarray]]],
                   labels: Sequence[str] | None = None) -> list[dict[str, float]]:
    """The K epochs of ``S`` seeds in one stacked computation: their FlatAdams' state stacked, the
    epochs run, the state handed back. ``policy``: any one seed's (the shape); ``data[s]``:
    ``(obs, actions, batch)`` of seed ``s``; ``splits``, ``labels`` and the result as
    :func:`run_stacked_epochs`."""
    adam = StackedAdam(optimizers)
    step = StackedMinibatchStep(policy, adam.weights, adam.grads, data, settings)
    return run_stacked_epochs(step, adam, settings, splits, labels)
