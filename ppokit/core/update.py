"""The PPO optimisation phase: K epochs of shuffled minibatch updates over one batch of experience.

This is the part of the algorithm box that both front ends share verbatim. The front end supplies the
batch (a :class:`PPOBatch`: old log-probs, values, advantages, returns, optional mask) and an ``evaluate`` callback that
re-runs its model on a minibatch; everything else, the losses, the clipping, the early stop at a
target KL, gradient clipping and the diagnostics, lives here once. The epoch loop
(:func:`run_epochs`) drives any :class:`MinibatchStep` through any
:class:`~ppokit.core.optim.Optimizer`; :class:`AutogradStep` is the reference step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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
    reference_kl_loss,
    value_loss,
)
from ppokit.core.optim import LossScaledOptimizer, Optimizer, gradient_averaging
from ppokit.errors import TrainingError

#: ``evaluate(indices) -> (logp_new, entropy, values_new)`` for the rows ``indices`` of the batch.
Evaluate = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]


@dataclass(kw_only=True)
class PPOBatch:
    """One batch of experience for the K epochs, every tensor with the row first: a row is a sample
    (control), a completion (RLHF, ``[B, T]`` per token) or an env's whole sequence (a recurrent
    policy, ``[N, T]``). A front end's batch adds what its ``evaluate`` re-runs the model on."""

    #: :math:`\log\pi_{old}(a)`: the log-probs of the actions under the policy that collected them.
    logp: Tensor
    #: :math:`\hat{A}`: the advantage estimates.
    advantages: Tensor
    #: :math:`V_{old}`: the critic's estimates when the data was collected; None with no critic.
    values: Tensor | None = None
    #: :math:`\hat{R}`: the value targets; None with no critic (then :math:`L^{VF} = 0`).
    returns: Tensor | None = None
    #: True where an entry counts in the loss (padding and reset steps are False); None: all count.
    mask: Tensor | None = None
    #: A frozen reference's log-probs, for the ``ref_kl_coef`` loss term (RLHF with the KL in the loss).
    ref_logp: Tensor | None = None

    def __post_init__(self) -> None:
        if (self.values is None) != (self.returns is None):
            raise ValueError("a PPO batch has both values and returns (a critic) or neither")

    @property
    def rows(self) -> int:
        return int(self.logp.shape[0])


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
    #: Micro-batches each minibatch is evaluated in, each differentiated as soon as it is computed,
    #: so only one micro-batch's activations are held at a time; the gradient is the minibatch's.
    gradient_accumulation_steps: int = 1
    #: β of a KL-to-reference loss term (:func:`~ppokit.core.losses.reference_kl_loss`, RLHF with the KL
    #: in the loss); it reads ``batch.ref_logp``. 0 leaves the term out.
    ref_kl_coef: float = 0.0


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

    Data parallel, a step may also have ``begin_epoch(split)``, which :func:`run_epochs` calls with
    each epoch's minibatches before the first: there it exchanges what every minibatch of the epoch
    needs of the other processes at once (:class:`UnionMoments`), instead of once per minibatch.
    """

    def forward(self, idx: Tensor) -> float:
        """Compute the losses on rows ``idx``; return the total loss. A step may also write the
        gradient here (then :meth:`backward` does nothing): :func:`run_epochs` zeroes the gradients
        before it calls ``forward``."""
        ...

    def approx_kl(self) -> float:
        """The last forward's :math:`k_3` estimate of KL(old || new) (read only for ``target_kl``)."""
        ...

    def backward(self) -> None:
        """Write the gradient of the last forward's total loss into the parameters' ``.grad``."""

    def stats(self) -> Tensor | tuple[float, ...]:
        """The last forward's diagnostics in the order of :data:`STEP_STAT_NAMES`: a 1-D tensor, or
        floats (a step that computes them on the host)."""
        ...


#: The per-minibatch diagnostics a :class:`MinibatchStep` reports.
STEP_STAT_NAMES = ("policy_loss", "value_loss", "entropy", "approx_kl_k1", "approx_kl_k3", "clip_fraction", "loss")
#: What :func:`run_epochs` averages over the minibatches: the step's statistics and the gradient norm.
STAT_NAMES = (*STEP_STAT_NAMES, "grad_norm")


class UnionMoments:
    """Each minibatch's advantage moments over the union of every process's minibatch at the same
    place (what the minibatch is whitened with, data parallel), a whole epoch's in one exchange.

    :meth:`begin_epoch` takes the epoch's minibatches and exchanges their moments together;
    :meth:`of` then hands out each minibatch's in turn. A minibatch that is not the epoch's next
    (a step driven by something other than :func:`run_epochs`) gets its own exchange.
    """

    def __init__(self, collective: Collective, advantages: Tensor, mask: Tensor | None = None) -> None:
        self.collective, self.advantages, self.mask = collective, advantages, mask
        self._split: Sequence[Tensor] = ()
        self._moments: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        self._next = 0

    def begin_epoch(self, split: Sequence[Tensor]) -> None:
        self._moments = self.collective.moments_of_parts([self._part(idx) for idx in split])
        self._split, self._next = split, 0

    def of(self, idx: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(local_count, count, mean, var)`` of minibatch ``idx`` (see :meth:`Collective.moments`)."""
        if self._next < len(self._split) and self._split[self._next] is idx:
            self._next += 1
            return self._moments[self._next - 1]
        return self.collective.moments(*self._part(idx))

    def _part(self, idx: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.advantages[idx], None if self.mask is None else self.mask[idx]


class AutogradStep:
    """The minibatch loss of :func:`ppo_update`, differentiated by autograd: the reference step.

    With ``gradient_accumulation_steps`` = k > 1 the minibatch is evaluated in k micro-batches, each
    differentiated at once (the gradient is written in :meth:`forward`). Every term of the loss is a
    mean over the minibatch's valid entries, so micro-batch :math:`j` with :math:`n_j` of the
    :math:`n` entries enters with weight :math:`n_j / n`: the summed gradient is the minibatch's,
    equal up to rounding.
    """

    def __init__(self, batch: PPOBatch, evaluate: Evaluate, settings: PPOUpdateSettings,
                 collective: Collective | None = None) -> None:
        """``collective``: the processes whose minibatches together make the minibatch (data parallel)."""
        self.batch, self.evaluate, self.settings = batch, evaluate, settings
        self.mask_all = batch.mask
        self.collective = collective if collective is not None and collective.active else None
        self.moments = (UnionMoments(self.collective, batch.advantages, batch.mask)
                        if self.collective is not None else None)
        #: This process's share of the minibatch mean (1 with one process), see Collective.share.
        self.scale = 1.0
        self.accumulate = settings.gradient_accumulation_steps > 1
        #: What the loss is multiplied by before the backward pass (float16 loss scaling; run_epochs sets it).
        self.loss_scale = 1.0

    def begin_epoch(self, split: Sequence[Tensor]) -> None:
        if self.moments is not None:
            self.moments.begin_epoch(split)

    def forward(self, idx: Tensor) -> float:
        settings, batch = self.settings, self.batch
        mask = self.mask_all[idx] if self.mask_all is not None else None
        advantages = batch.advantages[idx]
        if self.collective is not None and self.moments is not None:
            # The minibatch is the union of every process's rows: whiten with its statistics, and
            # weight this process's means by its share of the entries.
            local, total, mean, var = self.moments.of(idx)
            self.scale = self.collective.share(local, total)
            if settings.whiten_advantages:
                advantages = masked_whiten(advantages, mask, moments=(mean, var))
        elif settings.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        if not self.accumulate:
            terms = self._terms(idx, advantages, mask)
            self.loss = terms[-1] * self.scale if self.collective is not None else terms[-1]
            self._keep(terms)
            # float() rather than torch.isfinite: one host read instead of three small kernels.
            return float(self.loss.detach())

        count = float(mask.sum()) if mask is not None else float(advantages.numel())
        parts = torch.arange(idx.numel(), device=idx.device).tensor_split(settings.gradient_accumulation_steps)
        summed: list[Tensor] | None = None
        for part in parts:
            if part.numel() == 0:
                continue
            sub_mask = mask[part] if mask is not None else None
            n = float(sub_mask.sum()) if sub_mask is not None else float(part.numel())
            if n == 0:
                continue
            terms = self._terms(idx[part], advantages[part], sub_mask)
            weight = n / max(count, 1.0)
            if terms[-1].requires_grad:
                (terms[-1] * (weight * self.scale * self.loss_scale)).backward()
            weighted = [t.detach() * weight for t in terms]
            summed = weighted if summed is None else [a + b for a, b in zip(summed, weighted)]
        if summed is None:  # no valid entry in this process's minibatch: it contributes nothing
            summed = [advantages.new_zeros(())] * 7
        self._keep(summed)
        self.loss = summed[-1] * self.scale if self.collective is not None else summed[-1]
        return float(self.loss)

    def _terms(self, idx: Tensor, advantages: Tensor, mask: Tensor | None) -> list[Tensor]:
        """The minibatch loss and its parts on rows ``idx`` (advantages already whitened): policy
        loss, value loss, entropy, approximate KLs, clip fraction, total."""
        settings, batch = self.settings, self.batch
        logp, entropy, values = self.evaluate(idx)
        logp_old = batch.logp[idx]
        with torch.no_grad():
            log_ratio = logp - logp_old  # samples came from the old policy: KL(old || new)
            approx_kl_k1 = masked_mean(kl_k1(log_ratio), mask)
            approx_kl_k3 = masked_mean(kl_k3(log_ratio), mask)

        if settings.loss == "penalty":
            policy_loss, _ = kl_penalty_surrogate_loss(logp, logp_old, advantages, settings.kl_coef, mask)
            with torch.no_grad():
                clip_fraction = masked_mean(((log_ratio.exp() - 1.0).abs() > settings.clip_range).to(logp.dtype), mask)
        else:
            policy_loss, clip_fraction = clipped_surrogate_loss(logp, logp_old, advantages, settings.clip_range, mask)
        if batch.values is not None and batch.returns is not None:
            v_loss = value_loss(values, batch.values[idx], batch.returns[idx], settings.clip_range_vf, mask)
        else:  # no critic (critic-free advantages): nothing to fit
            v_loss = policy_loss.new_zeros(())
        mean_entropy = entropy_bonus(entropy, mask)
        total = policy_loss + settings.vf_coef * v_loss - settings.ent_coef * mean_entropy
        if settings.ref_kl_coef:  # folded into the total; the trainer logs the rollout's KL to the reference
            if batch.ref_logp is None:
                raise ValueError("ref_kl_coef > 0 needs the reference's log-probs in the batch (ref_logp)")
            total = total + settings.ref_kl_coef * reference_kl_loss(logp, batch.ref_logp[idx], mask)
        return [policy_loss, v_loss, mean_entropy, approx_kl_k1, approx_kl_k3, clip_fraction, total]

    def _keep(self, terms: list[Tensor]) -> None:
        (self.policy_loss, self.v_loss, self.mean_entropy, self.approx_kl_k1, self.approx_kl_k3,
         self.clip_fraction, self.total) = terms

    def approx_kl(self) -> float:
        return float(self.approx_kl_k3) * self.scale

    def backward(self) -> None:
        if not self.accumulate:  # accumulated micro-batches were differentiated in forward
            (self.loss * self.loss_scale if self.loss_scale != 1.0 else self.loss).backward()

    def stats(self) -> Tensor:
        row = torch.stack([
            self.policy_loss.detach(), self.v_loss.detach(), self.mean_entropy.detach(),
            self.approx_kl_k1, self.approx_kl_k3, self.clip_fraction, self.total.detach(),
        ])
        return row * self.scale if self.collective is not None else row


def ppo_update(
    batch: PPOBatch,
    evaluate: Evaluate,
    optimizer: Optimizer,
    settings: PPOUpdateSettings,
    collective: Collective | None = None,
) -> dict[str, float]:
    r"""Run K epochs of minibatch PPO updates and return the mean diagnostics.

    ``batch`` (:class:`PPOBatch`) holds, with the sample (row) as the leading dimension: ``logp``
    (log-probs under the policy that collected the data), ``values`` (its value estimates),
    ``advantages``, ``returns`` and optionally ``mask`` (true where an entry counts) and ``ref_logp``
    (a frozen reference's log-probs, for the ``ref_kl_coef`` term). Without ``returns`` (and
    ``values``) there is no critic: :math:`L^{VF}` is 0 and the ``values`` that ``evaluate`` returns
    are ignored.

    For each minibatch the total loss is

    .. math:: L = L^{CLIP\,\text{or}\,KLPEN} + c_1 L^{VF} - c_2 H \;[+\ \beta_{ref}\,L^{KL}]

    with advantages whitened within the minibatch when ``whiten_advantages`` is set. The epochs,
    the early stop and the checks are :func:`run_epochs`'s. With ``collective``, each process's
    ``batch`` is its share of the batch, and the update is the update on the union of the shares.
    """
    return run_epochs(AutogradStep(batch, evaluate, settings, collective), batch.rows, optimizer,
                      settings, device=batch.logp.device, collective=collective)


def epochs_summary(means: Sequence[float] | None, grad_norms: Sequence[float], epochs: int, early_stopped: bool,
                   steps: int, skipped: int) -> dict[str, float]:
    """What an update reports of its K epochs (:func:`run_epochs`, and each seed of a stacked update):
    ``means`` of the minibatch steps' statistics (:data:`STEP_STAT_NAMES`; None when no step was
    taken, and every statistic is then NaN) and the mean gradient norm, then the epochs run, whether
    the KL stopped them, and the minibatch steps taken and skipped."""
    if means is not None:
        stats = dict(zip(STEP_STAT_NAMES, means))
        stats["grad_norm"] = math.fsum(grad_norms) / len(grad_norms)
    else:
        stats = {name: float("nan") for name in STAT_NAMES}
    stats["epochs"] = float(epochs)
    stats["early_stopped"] = float(early_stopped)
    stats["minibatch_steps"] = float(steps)
    stats["skipped_minibatches"] = float(skipped)
    return stats


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
    The processes exchange once per minibatch: the gradient is computed first and the loss and KL
    ride in its exchange (a minibatch the checks then drop was differentiated for nothing, and its
    gradient is discarded), plus once per epoch if the step has ``begin_epoch`` (the whitening
    moments) and once per update (the diagnostics).
    ``minibatches(epoch)``: an epoch's minibatches (row indices) instead of a random split.

    When ``target_kl`` is set, the epoch loop stops as soon as a minibatch's approximate KL
    (:math:`k_3`) exceeds ``1.5 × target_kl``, *before* that minibatch's step is taken.

    A non-finite loss or gradient raises :class:`NonFiniteError` before the optimiser step, so the
    weights and optimiser state are those of the last good step (with ``skip_nonfinite`` the
    minibatch is skipped and counted in ``skipped_minibatches`` instead). The parameters are checked
    once after the last step; non-finite ones raise too.
    """
    max_norm = settings.max_grad_norm if settings.max_grad_norm is not None else float("inf")
    rows: list[Tensor | tuple[float, ...]] = []
    grad_norms: list[float] = []
    epochs_done = 0
    early_stopped = False
    skipped = 0
    last_step = (0, 0)
    shared = collective is not None and collective.active
    # Where the gradient is averaged by an exchange of its own, the loss and KL ride in it.
    averaging = gradient_averaging(optimizer) if shared else None
    begin_epoch: Callable[[Sequence[Tensor]], None] | None = getattr(step, "begin_epoch", None) if shared else None
    scaler = optimizer if isinstance(optimizer, LossScaledOptimizer) else None
    if scaler is not None and not isinstance(step, AutogradStep):
        raise TypeError(f"loss scaling needs the autograd step, not {type(step).__name__}")
    overflows = 0
    for epoch in range(settings.num_epochs):
        split = (minibatches(epoch) if minibatches is not None
                 else torch.randperm(n, device=device).tensor_split(settings.num_minibatches))
        if begin_epoch is not None:
            begin_epoch(split)
        for mb, idx in enumerate(split):
            if idx.numel() == 0 and not shared:
                continue
            optimizer.zero_grad()  # before forward: a step may write its gradient there
            if scaler is not None:
                step.loss_scale = scaler.loss_scale  # type: ignore[attr-defined]
            loss = step.forward(idx)
            kl = step.approx_kl() if settings.target_kl is not None else 0.0
            if averaging is not None:
                step.backward()
                loss, kl = averaging.average((loss, kl))  # the union's, from each process's share
            elif shared:
                assert collective is not None
                loss, kl = collective.mean_floats(loss, kl)
            if settings.target_kl is not None and kl > 1.5 * settings.target_kl:
                early_stopped = True
                break
            if not math.isfinite(loss):
                if settings.skip_nonfinite:
                    skipped += 1
                    continue
                raise NonFiniteError("loss", epoch, mb)
            if averaging is None:
                step.backward()
            # The total norm is non-finite exactly when some gradient entry is; checked before the
            # step, so a bad gradient never reaches the weights or the optimiser's moments.
            grad_norm = float(optimizer.clip_grad_norm(max_norm))
            if not math.isfinite(grad_norm) and scaler is not None and math.isfinite(loss):
                scaler.overflowed()  # float16 gradients overflowed the loss scale: retry smaller next time
                overflows += 1
                continue
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
    means: list[float] | None = None
    if rows:
        table = (torch.tensor(rows, dtype=torch.float64) if isinstance(rows[0], tuple)
                 else torch.stack(rows).to(torch.float64))  # type: ignore[arg-type]
        mean_row = table.mean(dim=0)
        if shared:
            assert collective is not None
            mean_row = collective.mean_(mean_row.to(collective.device)).cpu()
        means = mean_row.tolist()
    stats = epochs_summary(means, grad_norms, epochs_done, early_stopped, len(rows), skipped)
    if scaler is not None:
        stats["loss_scale_overflows"] = float(overflows)
        stats["loss_scale"] = scaler.loss_scale
    return stats
