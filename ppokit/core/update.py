"""The PPO optimisation phase: K epochs of shuffled minibatch updates over one batch of experience.

This is the part of the algorithm box that both front ends share verbatim. The front end supplies the
batch (old log-probs, values, advantages, returns, optional mask) and an ``evaluate`` callback that
re-runs its model on a minibatch; everything else, the losses, the clipping, the early stop at a
target KL, gradient clipping and the diagnostics, lives here once. The epoch loop
(:func:`run_epochs`) drives a :class:`MinibatchStep`: :class:`AutogradStep` here, or the control
trainer's NumPy step with a hand-derived gradient of the same loss for small MLPs on a CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from ppokit.core.advantages import masked_mean, masked_whiten
from ppokit.core.kl import kl_k1, kl_k3
from ppokit.core.losses import (
    clipped_surrogate_loss,
    entropy_bonus,
    kl_penalty_surrogate_loss,
    value_loss,
)
from ppokit.core.optim import FlatAdam
from ppokit.errors import TrainingError

#: ``evaluate(indices) -> (logp_new, entropy, values_new)`` for the rows ``indices`` of the batch.
Evaluate = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]


@dataclass
class PPOUpdateSettings:
    """What one call of :func:`ppo_update` needs to know (the front end fills it from its config)."""

    num_epochs: int
    num_minibatches: int
    clip_range: float
    vf_coef: float
    ent_coef: float
    max_grad_norm: float | None = 0.5
    clip_range_vf: float | None = None
    normalize_advantages: bool = True
    target_kl: float | None = None
    loss: str = "clip"
    kl_coef: float = 1.0
    #: On a non-finite loss or gradient, skip that minibatch (and count it) instead of raising.
    skip_nonfinite: bool = False


class NonFiniteError(TrainingError):
    """A loss, gradient or parameter became NaN or infinite."""

    def __init__(self, quantity: str, epoch: int, minibatch: int) -> None:
        self.quantity = quantity
        if quantity == "parameter":
            detail = (f"non-finite parameter after epoch {epoch + 1}, minibatch {minibatch + 1} "
                      "(the step itself overflowed); these weights must not be saved")
        else:
            detail = (f"non-finite {quantity} in epoch {epoch + 1}, minibatch {minibatch + 1}; "
                      "the weights were left as they were before this step")
        super().__init__(detail)


def _all_finite(tensors: list[Tensor]) -> bool:
    if not tensors:
        return True
    # One fused reduction per device instead of a check per tensor: a non-finite entry makes its
    # tensor's norm non-finite.
    norms = torch._foreach_norm(tensors)
    return bool(torch.isfinite(torch.stack([n.float() for n in norms])).all())


class MinibatchStep(Protocol):
    """One minibatch's forward and backward pass, as :func:`run_epochs` drives it.

    :func:`ppo_update` builds the autograd version from an ``evaluate`` callback; the control
    trainer has a NumPy version with a hand-derived backward pass for small MLPs on a CPU
    (:mod:`ppokit.control.numpy_update`). Both compute the same loss.
    """

    def forward(self, idx: Tensor) -> float:
        """Compute the losses on rows ``idx``; return the total loss."""

    def approx_kl(self) -> float:
        """The last forward's :math:`k_3` estimate of KL(old || new) (read only for ``target_kl``)."""

    def backward(self) -> None:
        """Write the gradient of the last forward's total loss into the parameters' ``.grad``."""

    def stats(self, grad_norm: Tensor) -> Sequence[Any]:
        """The last forward's diagnostics, in the order of :data:`STAT_NAMES`."""


#: The per-minibatch diagnostics that :func:`run_epochs` averages.
STAT_NAMES = ("policy_loss", "value_loss", "entropy", "approx_kl_k1", "approx_kl_k3",
              "clip_fraction", "grad_norm", "loss")


class AutogradStep:
    """The minibatch loss of :func:`ppo_update`, differentiated by autograd."""

    def __init__(self, batch: Mapping[str, Tensor], evaluate: Evaluate, settings: PPOUpdateSettings) -> None:
        self.batch, self.evaluate, self.settings = batch, evaluate, settings
        self.mask_all = batch.get("mask")

    def forward(self, idx: Tensor) -> float:
        settings, batch = self.settings, self.batch
        logp, entropy, values = self.evaluate(idx)
        mask = self.mask_all[idx] if self.mask_all is not None else None
        logp_old = batch["logp"][idx]
        advantages = batch["advantages"][idx]
        if settings.normalize_advantages:
            advantages = masked_whiten(advantages, mask)

        with torch.no_grad():
            log_ratio = logp - logp_old  # samples came from the old policy: KL(old || new)
            self.approx_kl_k1 = masked_mean(kl_k1(log_ratio), mask)
            self.approx_kl_k3 = masked_mean(kl_k3(log_ratio), mask)

        if settings.loss == "penalty":
            self.policy_loss, _ = kl_penalty_surrogate_loss(logp, logp_old, advantages, settings.kl_coef, mask)
            with torch.no_grad():
                self.clip_fraction = masked_mean(
                    ((log_ratio.exp() - 1.0).abs() > settings.clip_range).to(logp.dtype), mask
                )
        else:
            self.policy_loss, self.clip_fraction = clipped_surrogate_loss(
                logp, logp_old, advantages, settings.clip_range, mask
            )
        self.v_loss = value_loss(values, batch["values"][idx], batch["returns"][idx], settings.clip_range_vf, mask)
        self.mean_entropy = entropy_bonus(entropy, mask)
        self.loss = self.policy_loss + settings.vf_coef * self.v_loss - settings.ent_coef * self.mean_entropy
        # float() rather than torch.isfinite: one host read instead of three small kernels.
        return float(self.loss.detach())

    def approx_kl(self) -> float:
        return float(self.approx_kl_k3)

    def backward(self) -> None:
        self.loss.backward()

    def stats(self, grad_norm: Tensor) -> Tensor:
        return torch.stack([
            self.policy_loss.detach(), self.v_loss.detach(), self.mean_entropy.detach(),
            self.approx_kl_k1, self.approx_kl_k3, self.clip_fraction, grad_norm.detach(), self.loss.detach(),
        ])


def ppo_update(
    batch: Mapping[str, Tensor],
    evaluate: Evaluate,
    optimizer: torch.optim.Optimizer | FlatAdam,
    parameters: Iterable[Tensor],
    settings: PPOUpdateSettings,
) -> dict[str, float]:
    r"""Run K epochs of minibatch PPO updates and return the mean diagnostics.

    ``batch`` holds, with the sample (row) as the leading dimension: ``logp`` (log-probs under the
    policy that collected the data), ``values`` (its value estimates), ``advantages``, ``returns``
    and optionally ``mask`` (true where an entry counts).

    For each minibatch the total loss is

    .. math:: L = L^{CLIP\,\text{or}\,KLPEN} + c_1 L^{VF} - c_2 H

    with advantages whitened within the minibatch when ``normalize_advantages`` is set. The epochs,
    the early stop and the checks are :func:`run_epochs`'s.
    """
    return run_epochs(AutogradStep(batch, evaluate, settings), batch["logp"].shape[0], optimizer,
                      parameters, settings, device=batch["logp"].device)


def run_epochs(
    step: MinibatchStep,
    n: int,
    optimizer: torch.optim.Optimizer | FlatAdam,
    parameters: Iterable[Tensor],
    settings: PPOUpdateSettings,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """K epochs over ``n`` rows in shuffled minibatches (``torch.randperm``), one optimiser step each.

    When ``target_kl`` is set, the epoch loop stops as soon as a minibatch's approximate KL
    (:math:`k_3`) exceeds ``1.5 × target_kl``, *before* that minibatch's step is taken.

    A non-finite loss or gradient raises :class:`NonFiniteError` before the optimiser step, so the
    weights and optimiser state are those of the last good step (with ``skip_nonfinite`` the
    minibatch is skipped and counted in ``skipped_minibatches`` instead). The parameters are checked
    once after the last step; non-finite ones raise too.
    """
    params = [p for p in parameters if p.requires_grad]
    flat = isinstance(optimizer, FlatAdam)
    max_norm = settings.max_grad_norm if settings.max_grad_norm is not None else float("inf")
    rows: list[Any] = []
    epochs_done = 0
    early_stopped = False
    skipped = 0
    for epoch in range(settings.num_epochs):
        for mb, idx in enumerate(torch.randperm(n, device=device).tensor_split(settings.num_minibatches)):
            if idx.numel() == 0:
                continue
            loss = step.forward(idx)
            if settings.target_kl is not None and step.approx_kl() > 1.5 * settings.target_kl:
                early_stopped = True
                break
            if not math.isfinite(loss):
                if settings.skip_nonfinite:
                    skipped += 1
                    continue
                raise NonFiniteError("loss", epoch, mb)
            optimizer.zero_grad(set_to_none=True)
            step.backward()
            # The total norm is non-finite exactly when some gradient entry is; checked before the
            # step, so a bad gradient never reaches the weights or Adam's moments.
            if flat:
                grad_norm = optimizer.clip_grad_norm_(max_norm)
            else:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            if not math.isfinite(float(grad_norm)):
                optimizer.zero_grad(set_to_none=True)
                if settings.skip_nonfinite:
                    skipped += 1
                    continue
                raise NonFiniteError("gradient", epoch, mb)
            optimizer.step()
            last_step = (epoch, mb)
            rows.append(step.stats(grad_norm))
        if early_stopped:
            break
        epochs_done += 1

    if rows and not (optimizer.params_finite() if flat else _all_finite(params)):
        raise NonFiniteError("parameter", *last_step)
    if not rows:
        means = [float("nan")] * len(STAT_NAMES)
    elif isinstance(rows[0], Tensor):
        means = torch.stack(rows).float().mean(dim=0).tolist()
    else:
        means = np.mean(np.asarray(rows, dtype=np.float64), axis=0).tolist()
    stats = dict(zip(STAT_NAMES, means))
    stats["epochs"] = float(epochs_done)
    stats["early_stopped"] = float(early_stopped)
    stats["minibatch_steps"] = float(len(rows))
    stats["skipped_minibatches"] = float(skipped)
    return stats
