"""Adam over one flat buffer: the fast path's optimiser for small networks on a CPU.

It implements :class:`ppokit.core.optim.Optimizer`, the same interface as a wrapped ``torch.optim``
optimiser, and follows ``torch.optim.Adam``'s update rule exactly (``tests/control/test_flat_adam.py``
checks it step for step against torch's).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

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

    The parameters must share one device and dtype.
    """

    def __init__(self, params: Iterable[Tensor], *, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("FlatAdam: no trainable parameters")
        first = self.params[0]
        if any(p.device != first.device or p.dtype != first.dtype for p in self.params):
            raise ValueError("FlatAdam: all parameters must share one device and dtype")
        total = sum(p.numel() for p in self.params)
        self.flat = torch.empty(total, device=first.device, dtype=first.dtype)
        self.flat_grad = torch.zeros_like(self.flat)
        offset = 0
        with torch.no_grad():
            for p in self.params:
                n = p.numel()
                self.flat[offset:offset + n].copy_(p.reshape(-1))
                p.data = self.flat[offset:offset + n].view_as(p)
                p.grad = self.flat_grad[offset:offset + n].view_as(p)
                offset += n
        self.exp_avg = torch.zeros_like(self.flat)
        self.exp_avg_sq = torch.zeros_like(self.flat)
        self.steps = 0
        self.param_groups: list[dict[str, Any]] = [{"params": self.params, "lr": float(lr), "betas": tuple(betas), "eps": float(eps)}]

    @property
    def learning_rate(self) -> float:
        return float(self.param_groups[0]["lr"])

    def set_learning_rate(self, lr: float) -> None:
        self.param_groups[0]["lr"] = float(lr)

    def zero_grad(self) -> None:
        """Zero the gradient buffer (never ``None``: the views must stay)."""
        self.flat_grad.zero_()

    def clip_grad_norm(self, max_norm: float) -> Tensor:
        """Scale the gradients to an L2 norm of at most ``max_norm``; returns the norm before."""
        norm = torch.linalg.vector_norm(self.flat_grad)
        if max_norm != float("inf"):
            self.flat_grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))
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
        self.exp_avg.lerp_(self.flat_grad, 1.0 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(self.flat_grad, self.flat_grad, value=1.0 - beta2)
        bias1 = 1.0 - beta1 ** self.steps
        bias2 = 1.0 - beta2 ** self.steps
        denom = (self.exp_avg_sq.sqrt() / math.sqrt(bias2)).add_(group["eps"])
        self.flat.addcdiv_(self.exp_avg, denom, value=-group["lr"] / bias1)

    def state_dict(self) -> dict[str, Any]:
        group = self.param_groups[0]
        return {
            "format": "flat_adam",
            "steps": self.steps,
            "exp_avg": self.exp_avg.clone(),
            "exp_avg_sq": self.exp_avg_sq.clone(),
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
        self.exp_avg.copy_(exp_avg)
        self.exp_avg_sq.copy_(exp_avg_sq)
        self.steps = steps
        self.param_groups[0].update(lr=float(group["lr"]), betas=tuple(group["betas"]), eps=float(group["eps"]))

