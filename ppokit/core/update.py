"""The PPO optimisation phase: K epochs of shuffled minibatch updates over one batch of experience.

This is the part of the algorithm box that both front ends share verbatim. The front end supplies the
batch (old log-probs, values, advantages, returns, optional mask) and an ``evaluate`` callback that
re-runs its model on a minibatch; everything else, the losses, the clipping, the early stop at a
target KL, gradient clipping and the diagnostics, lives here once. The epoch loop
(:func:`run_epochs`) drives any :class:`MinibatchStep` through any
:class:`~ppokit.core.optim.Optimizer`; :class:`AutogradStep` is the reference step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from ppokit.core.advantages import masked_mean, masked_whiten
from ppokit.core.choices import Loss
from ppokit.core.collective import Collective
from ppokit.core.kl import kl_k1, kl_k3
from ppokit.core.losses import (
    clipped_surrogate_loss,
    entropy_bonus,
    kl_penalty_surrogate_loss,
    value_loss,
)
from ppokit.core.optim import Optimizer
from ppokit.errors import TrainingError

#: ``evaluate(indices) -> (logp_new, entropy, values_new)`` for the rows ``indices`` of the batch.
Evaluate = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]


@dataclass
class PPOUpdateSettings:
    """What one call of :func:`ppo_update` needs to know (the front end fills it from its config)."""

    #: K: passes over the batch.
    num_epochs: int
    #: Minibatches per epoch.
    num_minibatches: int
    #: ε of the clipped surrogate (also the threshold of the clip-fraction statistic).
    clip_range: float
    #: c1: weight of the value loss.
    vf_coef: float
    #: c2: weight of the entropy bonus.
    ent_coef: float
    #: Global gradient-norm clip; None disables it.
    max_grad_norm: float | None = 0.5
    #: Clip the value update to ±this around the old values; None disables it.
    clip_range_vf: float | None = None
    #: Whiten the advantages within each minibatch.
    whiten_advantages: bool = True
    #: Stop the epochs when a minibatch's approximate KL exceeds 1.5× this; None disables it.
    target_kl: float | None = None
    #: 'clip' or 'penalty'.
    loss: Loss = "clip"
    #: β of the penalty loss.
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


class MinibatchStep(Protocol):
    """One minibatch's forward and backward pass, as :func:`run_epochs` drives it.

    :class:`AutogradStep` is the reference; a front end may bring an accelerated step that computes
    the same loss (held to the reference by parity tests).
    """

    def forward(self, idx: Tensor) -> float:
        """Compute the losses on rows ``idx``; return the total loss."""
        ...

    def approx_kl(self) -> float:
        """The last forward's :math:`k_3` estimate of KL(old || new) (read only for ``target_kl``)."""
        ...

    def backward(self) -> None:
        """Write the gradient of the last forward's total loss into the parameters' ``.grad``."""

    def stats(self) -> Tensor:
        """The last forward's diagnostics: a 1-D tensor in the order of :data:`STEP_STAT_NAMES`."""
        ...


#: The per-minibatch diagnostics a :class:`MinibatchStep` reports.
STEP_STAT_NAMES = ("policy_loss", "value_loss", "entropy", "approx_kl_k1", "approx_kl_k3", "clip_fraction", "loss")
#: What :func:`run_epochs` averages over the minibatches: the step's statistics and the gradient norm.
STAT_NAMES = (*STEP_STAT_NAMES, "grad_norm")


class AutogradStep:
    """The minibatch loss of :func:`ppo_update`, differentiated by autograd: the reference step."""

    def __init__(self, batch: Mapping[str, Tensor], evaluate: Evaluate, settings: PPOUpdateSettings,
                 collective: Collective | None = None) -> None:
        """``collective``: the processes whose minibatches together make the minibatch (data parallel)."""
        self.batch, self.evaluate, self.settings = batch, evaluate, settings
        self.mask_all = batch.get("mask")
        self.collective = collective if collective is not None and collective.active else None
        #: This process's share of the minibatch mean (1 with one process), see Collective.share.
        self.scale = 1.0

    def forward(self, idx: Tensor) -> float:
        settings, batch = self.settings, self.batch
        logp, entropy, values = self.evaluate(idx)
        mask = self.mask_all[idx] if self.mask_all is not None else None
        logp_old = batch["logp"][idx]
        advantages = batch["advantages"][idx]
        if self.collective is not None:
            # The minibatch is the union of every process's rows: whiten with its statistics, and
            # weight this process's means by its share of the entries.
            local, total, mean, var = self.collective.moments(advantages, mask)
            self.scale = self.collective.share(local, total)
            if settings.whiten_advantages:
                advantages = masked_whiten(advantages, mask, moments=(mean, var))
        elif settings.whiten_advantages:
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
        self.total = self.policy_loss + settings.vf_coef * self.v_loss - settings.ent_coef * self.mean_entropy
        self.loss = self.total * self.scale if self.collective is not None else self.total
        # float() rather than torch.isfinite: one host read instead of three small kernels.
        return float(self.loss.detach())

    def approx_kl(self) -> float:
        return float(self.approx_kl_k3) * self.scale

    def backward(self) -> None:
        self.loss.backward()

    def stats(self) -> Tensor:
        row = torch.stack([
            self.policy_loss.detach(), self.v_loss.detach(), self.mean_entropy.detach(),
            self.approx_kl_k1, self.approx_kl_k3, self.clip_fraction, self.total.detach(),
        ])
        return row * self.scale if self.collective is not None else row


def ppo_update(
    batch: Mapping[str, Tensor],
    evaluate: Evaluate,
    optimizer: Optimizer,
    settings: PPOUpdateSettings,
    collective: Collective | None = None,
) -> dict[str, float]:
    r"""Run K epochs of minibatch PPO updates and return the mean diagnostics.

    ``batch`` holds, with the sample (row) as the leading dimension: ``logp`` (log-probs under the
    policy that collected the data), ``values`` (its value estimates), ``advantages``, ``returns``
    and optionally ``mask`` (true where an entry counts).

    For each minibatch the total loss is

    .. math:: L = L^{CLIP\,\text{or}\,KLPEN} + c_1 L^{VF} - c_2 H

    with advantages whitened within the minibatch when ``whiten_advantages`` is set. The epochs,
    the early stop and the checks are :func:`run_epochs`'s. With ``collective``, each process's
    ``batch`` is its share of the batch, and the update is the update on the union of the shares.
    """
    return run_epochs(AutogradStep(batch, evaluate, settings, collective), batch["logp"].shape[0], optimizer,
                      settings, device=batch["logp"].device, collective=collective)


def run_epochs(
    step: MinibatchStep,
    n: int,
    optimizer: Optimizer,
    settings: PPOUpdateSettings,
    device: torch.device | str = "cpu",
    collective: Collective | None = None,
    minibatches: Callable[[int], Sequence[Tensor]] | None = None,
) -> dict[str, float]:
    """K epochs over ``n`` rows in shuffled minibatches (``torch.randperm``), one optimiser step each.

    Data parallel (``collective`` with more than one process): each process passes its own rows,
    a step built with the same ``collective`` and an optimiser that averages gradients
    (:class:`~ppokit.core.optim.AveragedGradients`). Minibatch ``j`` is then the union of every
    process's minibatch ``j``; the loss and KL that decide the early stop and the finiteness checks
    are the union's, so every process takes the same branch, and the diagnostics are averaged.
    ``minibatches(epoch)``: an epoch's minibatches (row indices) instead of a random split.

    When ``target_kl`` is set, the epoch loop stops as soon as a minibatch's approximate KL
    (:math:`k_3`) exceeds ``1.5 × target_kl``, *before* that minibatch's step is taken.

    A non-finite loss or gradient raises :class:`NonFiniteError` before the optimiser step, so the
    weights and optimiser state are those of the last good step (with ``skip_nonfinite`` the
    minibatch is skipped and counted in ``skipped_minibatches`` instead). The parameters are checked
    once after the last step; non-finite ones raise too.
    """
    max_norm = settings.max_grad_norm if settings.max_grad_norm is not None else float("inf")
    rows: list[Tensor] = []
    grad_norms: list[float] = []
    epochs_done = 0
    early_stopped = False
    skipped = 0
    last_step = (0, 0)
    shared = collective is not None and collective.active
    for epoch in range(settings.num_epochs):
        split = (minibatches(epoch) if minibatches is not None
                 else torch.randperm(n, device=device).tensor_split(settings.num_minibatches))
        for mb, idx in enumerate(split):
            if idx.numel() == 0 and not shared:
                continue
            loss = step.forward(idx)
            kl = step.approx_kl() if settings.target_kl is not None else 0.0
            if shared:
                assert collective is not None
                loss, kl = collective.mean_floats(loss, kl)  # the union's, from each process's share
            if settings.target_kl is not None and kl > 1.5 * settings.target_kl:
                early_stopped = True
                break
            if not math.isfinite(loss):
                if settings.skip_nonfinite:
                    skipped += 1
                    continue
                raise NonFiniteError("loss", epoch, mb)
            optimizer.zero_grad()
            step.backward()
            # The total norm is non-finite exactly when some gradient entry is; checked before the
            # step, so a bad gradient never reaches the weights or the optimiser's moments.
            grad_norm = float(optimizer.clip_grad_norm(max_norm))
            if not math.isfinite(grad_norm):
                optimizer.zero_grad()
                if settings.skip_nonfinite:
                    skipped += 1
                    continue
                raise NonFiniteError("gradient", epoch, mb)
            optimizer.step()
            last_step = (epoch, mb)
            rows.append(step.stats())
            grad_norms.append(grad_norm)
        if early_stopped:
            break
        epochs_done += 1

    if rows and not optimizer.params_finite():
        raise NonFiniteError("parameter", *last_step)
    if rows:
        mean_row = torch.stack(rows).to(torch.float64).mean(dim=0)
        if shared:
            assert collective is not None
            mean_row = collective.mean_(mean_row.to(collective.device)).cpu()
        means = mean_row.tolist()
        stats = dict(zip(STEP_STAT_NAMES, means))
        stats["grad_norm"] = math.fsum(grad_norms) / len(grad_norms)
    else:
        stats = {name: float("nan") for name in STAT_NAMES}
    stats["epochs"] = float(epochs_done)
    stats["early_stopped"] = float(early_stopped)
    stats["minibatch_steps"] = float(len(rows))
    stats["skipped_minibatches"] = float(skipped)
    return stats
