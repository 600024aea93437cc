"""The PPO optimisation phase: K epochs of shuffled minibatch updates over one batch of experience.

This is the part of the algorithm box that both front ends share verbatim. The front end supplies the
batch (old log-probs, values, advantages, returns, optional mask) and an ``evaluate`` callback that
re-runs its model on a minibatch; everything else, the losses, the clipping, the early stop at a
target KL, gradient clipping and the diagnostics, lives here once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

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

    with advantages whitened within the minibatch when ``normalize_advantages`` is set. When
    ``target_kl`` is set, the epoch loop stops as soon as a minibatch's approximate KL
    (:math:`k_3`) exceeds ``1.5 × target_kl``, *before* that minibatch's step is taken.

    A non-finite loss or gradient raises :class:`NonFiniteError` before the optimiser step, so the
    weights and optimiser state are those of the last good step (with ``skip_nonfinite`` the
    minibatch is skipped and counted in ``skipped_minibatches`` instead). The parameters are checked
    once after the last step; non-finite ones raise too.
    """
    params = [p for p in parameters if p.requires_grad]
    flat = isinstance(optimizer, FlatAdam)
    mask_all = batch.get("mask")
    n = batch["logp"].shape[0]
    device = batch["logp"].device
    rows: list[Tensor] = []
    epochs_done = 0
    early_stopped = False
    skipped = 0
    for epoch in range(settings.num_epochs):
        for mb, idx in enumerate(torch.randperm(n, device=device).tensor_split(settings.num_minibatches)):
            if idx.numel() == 0:
                continue
            logp, entropy, values = evaluate(idx)
            mask = mask_all[idx] if mask_all is not None else None
            logp_old = batch["logp"][idx]
            advantages = batch["advantages"][idx]
            if settings.normalize_advantages:
                advantages = masked_whiten(advantages, mask)

            with torch.no_grad():
                log_ratio = logp - logp_old  # samples came from the old policy: KL(old || new)
                approx_kl_k1 = masked_mean(kl_k1(log_ratio), mask)
                approx_kl_k3 = masked_mean(kl_k3(log_ratio), mask)
            if settings.target_kl is not None and float(approx_kl_k3) > 1.5 * settings.target_kl:
                early_stopped = True
                break

            if settings.loss == "penalty":
                policy_loss, _ = kl_penalty_surrogate_loss(logp, logp_old, advantages, settings.kl_coef, mask)
                with torch.no_grad():
                    clip_fraction = masked_mean(
                        ((log_ratio.exp() - 1.0).abs() > settings.clip_range).to(logp.dtype), mask
                    )
            else:
                policy_loss, clip_fraction = clipped_surrogate_loss(
                    logp, logp_old, advantages, settings.clip_range, mask
                )
            v_loss = value_loss(values, batch["values"][idx], batch["returns"][idx], settings.clip_range_vf, mask)
            mean_entropy = entropy_bonus(entropy, mask)
            loss = policy_loss + settings.vf_coef * v_loss - settings.ent_coef * mean_entropy

            # float() rather than torch.isfinite: one host read instead of three small kernels.
            if not math.isfinite(float(loss.detach())):
                if settings.skip_nonfinite:
                    skipped += 1
                    continue
                raise NonFiniteError("loss", epoch, mb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            max_norm = settings.max_grad_norm if settings.max_grad_norm is not None else float("inf")
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
            rows.append(torch.stack([
                policy_loss.detach(), v_loss.detach(), mean_entropy.detach(),
                approx_kl_k1, approx_kl_k3, clip_fraction, grad_norm.detach(), loss.detach(),
            ]))
        if early_stopped:
            break
        epochs_done += 1

    if rows and not (optimizer.params_finite() if flat else _all_finite(params)):
        raise NonFiniteError("parameter", *last_step)
    names = ("policy_loss", "value_loss", "entropy", "approx_kl_k1", "approx_kl_k3",
             "clip_fraction", "grad_norm", "loss")
    if rows:
        means = torch.stack(rows).float().mean(dim=0).tolist()
    else:
        means = [float("nan")] * len(names)
    stats = dict(zip(names, means))
    stats["epochs"] = float(epochs_done)
    stats["early_stopped"] = float(early_stopped)
    stats["minibatch_steps"] = float(len(rows))
    stats["skipped_minibatches"] = float(skipped)
    return stats
