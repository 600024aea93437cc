"""Adam over one flat buffer: the fast path's optimiser for small networks on a CPU.

It implements :class:`ppokit.core.optim.Optimizer`, the same interface as a wrapped ``torch.optim``
optimiser, and follows ``torch.optim.Adam``'s update rule exactly (``tests/control/test_flat_adam.py``
checks it step for step against torch's).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor


class FlatAdam:
    r"""Adam (Kingma & Ba, 2015) over parameters moved into one contiguous buffer.

    .. math::
        m \leftarrow \beta_1 m + (1-\beta_1) g, \quad v \leftarrow \beta_2 v + (1-\beta_2) g^2, \quad
        \theta \leftarrow \theta - \frac{\alpha}{1-\beta_1^t}\,
        \frac{m}{\sqrt{v / (1-\beta_2^t)} + \epsilon}

    exactly as ``torch.optim.Adam`` computes it (no weight decay). A control policy is ~10k numbers in
    a dozen tensors; on a CPU the per-tensor dispatch of torch's optimiser, ``clip_grad_norm_`` and
    ``zero_grad`` costs more than their arithmetic (BENCHMARKS.md has the measurement). Here every parameter and every gradient is a
    view into one flat tensor (autograd accumulates into an existing ``.grad`` in place), so the
    step, the gradient norm, the clipping and the zeroing are each a few whole-buffer ops.

    The parameters must share one device and dtype. ``layout``: the same parameters in the order
    to store them (default: as given), e.g. :func:`ppokit.control.fast.layout.fused_order`; the
    state dict keeps the moments in the order given, whatever the layout.
    """

    def __init__(self, params: Iterable[Tensor], *, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, layout: Sequence[Tensor] | None = None) -> None:
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("FlatAdam: no trainable parameters")
        stored = self.params if layout is None else [p for p in layout if p.requires_grad]
        if len(stored) != len(self.params) or {id(p) for p in stored} != {id(p) for p in self.params}:
            raise ValueError("FlatAdam: layout must hold the same parameters")
        first = self.params[0]
        if any(p.device != first.device or p.dtype != first.dtype for p in self.params):
            raise ValueError("FlatAdam: all parameters must share one device and dtype")
        total = sum(p.numel() for p in self.params)
        self.flat = torch.empty(total, device=first.device, dtype=first.dtype)
        self.flat_grad = torch.zeros_like(self.flat)
        self._slices: dict[int, slice] = {}
        offset = 0
        with torch.no_grad():
            for p in stored:
                n = p.numel()
                self.flat[offset:offset + n].copy_(p.reshape(-1))
                p.data = self.flat[offset:offset + n].view_as(p)
                p.grad = self.flat_grad[offset:offset + n].view_as(p)
                self._slices[id(p)] = slice(offset, offset + n)
                offset += n
        self.canonical = layout is None
        self.exp_avg = torch.zeros_like(self.flat)
        self.exp_avg_sq = torch.zeros_like(self.flat)
        self.steps = 0
        #: On a CPU: the clipping in NumPy, and torch's fused Adam kernel where it has one.
        self._host = first.device.type == "cpu" and first.dtype == torch.float32
        self._np_grad: np.ndarray = self.flat_grad.numpy() if self._host else np.empty(0, dtype=np.float32)
        self._fused = self._host and hasattr(torch, "_fused_adam_")
        self._step_count = torch.zeros((), dtype=torch.float32)
        self.param_groups: list[dict[str, Any]] = [{"params": self.params, "lr": float(lr), "betas": tuple(betas), "eps": float(eps)}]

    @property
    def learning_rate(self) -> float:
        return float(self.param_groups[0]["lr"])

    def set_learning_rate(self, lr: float) -> None:
        self.param_groups[0]["lr"] = float(lr)

    def zero_grad(self) -> None:
        """Zero the gradient buffer (never ``None``: the views must stay)."""
        self.flat_grad.zero_()

    def clip_grad_norm(self, max_norm: float) -> float:
        """Scale the gradients to an L2 norm of at most ``max_norm``; returns the norm before.

        The scale is ``clip_grad_norm_``'s, ``min(1, max_norm / (norm + 1e-6))`` in float32, applied
        only where it is below one (multiplying by one changes nothing).
        """
        norm_t = torch.linalg.vector_norm(self.flat_grad)
        norm = float(norm_t)
        if max_norm == float("inf"):
            return norm
        if self._host:
            # torch's max_norm / t is t.reciprocal() * max_norm: the same float32 operations here
            scale = np.float32(1.0) / (np.float32(norm) + np.float32(1e-6)) * np.float32(max_norm)
            if scale < 1.0:
                np.multiply(self._np_grad, scale, out=self._np_grad)
        else:
            self.flat_grad.mul_(torch.clamp(max_norm / (norm_t + 1e-6), max=1.0))
        return norm

    def params_finite(self) -> bool:
        return bool(torch.isfinite(self.flat).all())

    def gradients(self) -> list[Tensor]:
        return [self.flat_grad]

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        self.steps += 1
        if self._fused:
            # One kernel for the whole buffer (torch.optim.Adam(fused=True)'s): the same rule.
            self._step_count.fill_(self.steps)
            torch._fused_adam_([self.flat], [self.flat_grad], [self.exp_avg], [self.exp_avg_sq], [],
                               [self._step_count], amsgrad=False, lr=float(group["lr"]), beta1=beta1,
                               beta2=beta2, weight_decay=0.0, eps=float(group["eps"]), maximize=False)
            return
        self.exp_avg.lerp_(self.flat_grad, 1.0 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(self.flat_grad, self.flat_grad, value=1.0 - beta2)
        bias1 = 1.0 - beta1 ** self.steps
        bias2 = 1.0 - beta2 ** self.steps
        denom = (self.exp_avg_sq.sqrt() / math.sqrt(bias2)).add_(group["eps"])
        self.flat.addcdiv_(self.exp_avg, denom, value=-group["lr"] / bias1)

    def _canonical(self, flat: Tensor) -> Tensor:
        """A flat buffer in the order the parameters were given (the state dict's order)."""
        if self.canonical:
            return flat.clone()
        return torch.cat([flat[self._slices[id(p)]] for p in self.params])

    def _stored(self, flat: Tensor) -> Tensor:
        """The inverse of :meth:`_canonical`."""
        if self.canonical:
            return flat
        out = torch.empty_like(flat)
        offset = 0
        for p in self.params:
            n = p.numel()
            out[self._slices[id(p)]] = flat[offset:offset + n]
            offset += n
        return out

    def state_dict(self) -> dict[str, Any]:
        group = self.param_groups[0]
        return {
            "format": "flat_adam",
            "steps": self.steps,
            "exp_avg": self._canonical(self.exp_avg),
            "exp_avg_sq": self._canonical(self.exp_avg_sq),
            "lr": group["lr"], "betas": list(group["betas"]), "eps": group["eps"],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Our own format, or a ``torch.optim.Adam`` state dict over the same parameters in the same
        order (what checkpoints written before this optimiser hold)."""
        if state.get("format") == "flat_adam":
            exp_avg, exp_avg_sq, steps = state["exp_avg"], state["exp_avg_sq"], int(state["steps"])
            group = {"lr": state["lr"], "betas": tuple(state["betas"]), "eps": state["eps"]}
        else:
            per_param = state["state"]
            saved = state["param_groups"][0]
            if len(saved["params"]) != len(self.params):
                raise ValueError(f"optimizer state has {len(saved['params'])} parameters, this model "
                                 f"{len(self.params)}")
            entries = [per_param.get(i) for i in saved["params"]]
            if any(e is None for e in entries):  # saved before the first step
                exp_avg, exp_avg_sq, steps = torch.zeros_like(self.flat), torch.zeros_like(self.flat), 0
            else:
                exp_avg = torch.cat([e["exp_avg"].reshape(-1) for e in entries])
                exp_avg_sq = torch.cat([e["exp_avg_sq"].reshape(-1) for e in entries])
                steps = int(float(entries[0]["step"]))
            group = {"lr": saved["lr"], "betas": tuple(saved["betas"]), "eps": saved["eps"]}
        if exp_avg.shape != self.flat.shape or exp_avg_sq.shape != self.flat.shape:
            raise ValueError(f"optimizer state holds {exp_avg.numel()} numbers per moment, this model has "
                             f"{self.flat.numel()} parameters")
        self.exp_avg.copy_(self._stored(exp_avg))
        self.exp_avg_sq.copy_(self._stored(exp_avg_sq))
        self.steps = steps
        self.param_groups[0].update(lr=float(group["lr"]), betas=tuple(group["betas"]), eps=float(group["eps"]))

