"""What the epoch loop needs of an optimiser, and torch's optimisers behind that interface.

:func:`ppokit.core.update.run_epochs` zeroes, clips, checks and steps through :class:`Optimizer`
alone, so it has no special case for any implementation: :class:`TorchOptimizer` wraps any
``torch.optim`` optimiser, and a front end may bring its own (the control front end's flat-buffer
Adam for small networks on a CPU implements the same protocol).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from ppokit.core.collective import BUCKET_BYTES, Collective


class Optimizer(Protocol):
    """One optimiser over a fixed set of parameters, as :func:`~ppokit.core.update.run_epochs` drives it."""

    @property
    def learning_rate(self) -> float:
        """The current learning rate."""
        ...

    def set_learning_rate(self, lr: float) -> None:
        """Set the learning rate for the following steps (schedules call this between updates)."""

    def zero_grad(self) -> None:
        """Clear the gradients before a backward pass."""

    def clip_grad_norm(self, max_norm: float) -> Tensor | float:
        """Scale the gradients to a global L2 norm of at most ``max_norm``; return the norm before."""
        ...

    def step(self) -> None:
        """Apply one update from the current gradients."""

    def params_finite(self) -> bool:
        """Whether every parameter is finite (checked once after an update's last step)."""
        ...

    def gradients(self) -> list[Tensor]:
        """The gradient tensors, written in place by whoever averages them across processes (one
        flat buffer where the optimiser keeps one)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def all_finite(tensors: list[Tensor]) -> bool:
    """Whether every entry of every tensor is finite, in one fused reduction per device."""
    if not tensors:
        return True
    # A non-finite entry makes its tensor's norm non-finite.
    norms = torch._foreach_norm(tensors)
    return bool(torch.isfinite(torch.stack([n.float() for n in norms])).all())


class TorchOptimizer:
    """A ``torch.optim`` optimiser behind the :class:`Optimizer` protocol."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]

    @property
    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def set_learning_rate(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def clip_grad_norm(self, max_norm: float) -> Tensor | float:
        return torch.nn.utils.clip_grad_norm_(self.params, max_norm)

    def step(self) -> None:
        self.optimizer.step()

    def params_finite(self) -> bool:
        return all_finite(self.params)

    def gradients(self) -> list[Tensor]:
        # A parameter that took no part in this loss has no gradient; across processes it still
        # needs a buffer to add the others' into.
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        return [p.grad for p in self.params if p.grad is not None]

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)


def make_adamw(params: Iterable[Tensor], *, lr: float, weight_decay: float = 0.0, eps: float = 1e-8) -> TorchOptimizer:
    """AdamW with the fused kernel where this torch build has one (one kernel for every tensor
    instead of a Python loop over them), else the multi-tensor version. The update rule is the same;
    with ``weight_decay=0`` it is Adam."""
    params = list(params)
    try:
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, eps=eps, fused=True)
    except (RuntimeError, TypeError, ValueError):  # dtype or device without a fused kernel
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, eps=eps, foreach=True)
    return TorchOptimizer(optimizer)


class OptimizerWrapper:
    """An :class:`Optimizer` that hands every call to ``inner``; wrappers override what they change."""

    def __init__(self, inner: Optimizer) -> None:
        self.inner = inner

    @property
    def learning_rate(self) -> float:
        return self.inner.learning_rate

    def set_learning_rate(self, lr: float) -> None:
        self.inner.set_learning_rate(lr)

    def zero_grad(self) -> None:
        self.inner.zero_grad()

    def clip_grad_norm(self, max_norm: float) -> Tensor | float:
        return self.inner.clip_grad_norm(max_norm)

    def step(self) -> None:
        self.inner.step()

    def params_finite(self) -> bool:
        return self.inner.params_finite()

    def gradients(self) -> list[Tensor]:
        return self.inner.gradients()

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


class AveragedGradients(OptimizerWrapper):
    """An :class:`Optimizer` whose gradients are averaged over the processes before they are
    clipped or applied: data-parallel training, in one exchange of the whole gradient per step
    (buckets of :data:`~ppokit.core.collective.BUCKET_BYTES` for a large model).

    Every process then clips the same gradient and takes the same step, so the parameters (and the
    optimiser's moments) stay identical across processes without ever being sent.
    """

    def __init__(self, inner: Optimizer, collective: Collective, bucket_bytes: int = BUCKET_BYTES) -> None:
        super().__init__(inner)
        self.collective = collective
        self.bucket_bytes = bucket_bytes
        self._averaged = False

    def zero_grad(self) -> None:
        self.inner.zero_grad()
        self._averaged = False

    def average(self, extra: Sequence[float] = ()) -> list[float]:
        """Average the gradients over the processes (once per backward pass), and with them the
        numbers ``extra``, returned averaged: the epoch loop's loss and KL ride in the gradient's
        exchange instead of taking one of their own."""
        if self._averaged:
            if extra:
                raise RuntimeError("the gradients were averaged already; the numbers must ride in that exchange")
            return []
        averaged = self.collective.mean_flat_(self.inner.gradients(), extra, self.bucket_bytes)
        self._averaged = True
        return averaged

    def clip_grad_norm(self, max_norm: float) -> Tensor | float:
        self.average()
        return self.inner.clip_grad_norm(max_norm)

    def step(self) -> None:
        self.average()
        self.inner.step()


def gradient_averaging(optimizer: Optimizer) -> AveragedGradients | None:
    """The :class:`AveragedGradients` that ``optimizer`` is or wraps (loss scaling wraps it), if any."""
    while True:
        if isinstance(optimizer, AveragedGradients):
            return optimizer
        if not isinstance(optimizer, OptimizerWrapper):
            return None
        optimizer = optimizer.inner


class LossScaledOptimizer(OptimizerWrapper):
    r"""Dynamic loss scaling for float16 training (Micikevicius et al., 2018).

    The step multiplies the loss by :math:`S` before the backward pass (:attr:`loss_scale`), so small
    gradients do not flush to zero in float16; :meth:`clip_grad_norm` divides the gradients by
    :math:`S` before measuring and clipping them. A non-finite gradient is an overflow of the scale,
    not of training: :meth:`overflowed` halves :math:`S` and the epoch loop skips that step. After
    ``growth_interval`` good steps in a row :math:`S` doubles again.
    """

    def __init__(self, inner: Optimizer, init_scale: float = 2.0**16, growth_interval: int = 2000) -> None:
        super().__init__(inner)
        self.loss_scale = float(init_scale)
        self.growth_interval = growth_interval
        self.good_steps = 0

    def clip_grad_norm(self, max_norm: float) -> Tensor | float:
        grads = [g for g in self.inner.gradients() if g is not None]
        if grads:
            torch._foreach_mul_(grads, 1.0 / self.loss_scale)
        return self.inner.clip_grad_norm(max_norm)

    def overflowed(self) -> None:
        """The last gradient was not finite: halve the scale and drop the gradient."""
        self.loss_scale = max(self.loss_scale / 2.0, 1.0)
        self.good_steps = 0
        self.inner.zero_grad()

    def step(self) -> None:
        self.inner.step()
        self.good_steps += 1
        if self.good_steps % self.growth_interval == 0:
            self.loss_scale *= 2.0

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "loss_scale": self.loss_scale, "good_steps": self.good_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        self.loss_scale, self.good_steps = float(state["loss_scale"]), int(state["good_steps"])
