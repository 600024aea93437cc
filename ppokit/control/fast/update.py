r"""The minibatch update's forward and backward passes in NumPy, for MLP policies on a CPU.

With autograd, one minibatch of a 64-wide actor-critic is ~100 small torch ops forward and ~45
autograd nodes backward, each costing more dispatch than arithmetic. Here the same loss is computed
in NumPy and its gradient is written out by hand, about 60 NumPy calls in all. It is the loss of the
reference :class:`ppokit.core.update.AutogradStep`, term for term (the parity tests check the
gradients against autograd's), and it feeds the same epoch loop
(:func:`ppokit.core.update.run_epochs`). It needs :class:`~ppokit.control.fast.flat_adam.FlatAdam`,
whose gradients are preallocated views it can write into.

The gradients, for a minibatch of :math:`B` rows and the total loss
:math:`L = L^{\pi} + c_1 L^{VF} - c_2 H`, with :math:`\ell_i = \log\pi_\theta(a_i|s_i)` and
:math:`r_i = e^{\ell_i - \ell^{old}_i}`:

- clipped surrogate: :math:`\partial L^{CLIP}/\partial\ell_i = -\tfrac1B A_i r_i\,[\,\text{the
  unclipped term is the minimum, or } 1-\epsilon \le r_i \le 1+\epsilon\,]`;
- KL penalty (:math:`k_3 = (r-1) - \log r`): :math:`\partial L^{KLPEN}/\partial\ell_i =
  -\tfrac1B\big(A_i r_i - \beta (r_i - 1)\big)`;
- value loss :math:`\tfrac12\,\overline{\max(e_1, e_2)}` with :math:`e_1 = (V - R)^2` and
  :math:`e_2 = (V^{clip} - R)^2`: :math:`\partial/\partial V_i = \tfrac1B\big[(V_i - R_i)\,w_i +
  (V^{clip}_i - R_i)\,[|V_i - V^{old}_i| \le \epsilon_v]\,(1 - w_i)\big]`, :math:`w_i` being 1, ½
  or 0 as :math:`e_1` is above, equal to or below :math:`e_2` (torch's rule for ``maximum``);
- categorical head, logits :math:`z`, :math:`p = \mathrm{softmax}(z)`:
  :math:`\partial\ell/\partial z = \mathbf 1_a - p` and :math:`\partial\mathcal H/\partial z_j =
  -p_j(\log p_j + \mathcal H)`;
- Gaussian head, :math:`u = (a - \mu)\,e^{-s}`: :math:`\partial\ell/\partial\mu = u\,e^{-s}`,
  :math:`\partial\ell/\partial s = u^2 - 1`, :math:`\partial\mathcal H/\partial s = 1`;
- each layer :math:`h' = f(h W^\top + b)`: :math:`\delta = \partial L/\partial h' \odot f'`,
  :math:`\partial L/\partial W = \delta^\top h`, :math:`\partial L/\partial b = \sum_i \delta_i`,
  :math:`\partial L/\partial h = \delta W`, with :math:`f'` read off the output: :math:`1 - h'^2`
  (tanh), :math:`[h' > 0]` (ReLU), :math:`h' + 1` below zero (ELU).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from torch import Tensor

from ppokit.control.fast.layout import LiveViews, features, heads, split_twin, trunk_output
from ppokit.control.fast.policy import HALF_LOG_2PI, NUMPY_ACTIVATIONS
from ppokit.control.policy.networks import ActorCritic
from ppokit.core.collective import Collective
from ppokit.core.update import PPOBatch, PPOUpdateSettings, UnionMoments

# Each activation's derivative, written in terms of the activation's output.
_DERIVATIVES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "tanh": lambda h: 1.0 - h * h,
    "relu": lambda h: (h > 0).astype(h.dtype),
    "elu": lambda h: np.where(h > 0, 1.0, h + 1.0).astype(h.dtype),
}


class NumpyMinibatchStep:
    """A :class:`~ppokit.core.update.MinibatchStep` for an MLP :class:`ActorCritic` on a CPU.

    Only for the policies and settings :func:`ppokit.control.fast.support.refusal` accepts, with
    the parameters and gradients in the fused layout (:mod:`ppokit.control.fast.layout`: FlatAdam
    with ``layout=fused_order(policy)``). ``obs`` and ``actions`` are the whole batch (the rows
    are picked per minibatch), as is ``batch`` (its ``logp``, ``values``, ``advantages`` and
    ``returns``; a critic's, so never None here). Overwrites the parameters' gradient views.
    """

    def __init__(self, policy: ActorCritic, obs: Tensor, actions: Tensor, batch: PPOBatch,
                 settings: PPOUpdateSettings, collective: Collective | None = None,
                 views: LiveViews | None = None) -> None:
        """``views``: the policy's fused views kept between updates (taken here when None)."""
        self.settings = settings
        # Data parallel: whiten with the union minibatch's statistics and weight this process's
        # means by its share of it, as core.update.AutogradStep does.
        self.collective = collective if collective is not None and collective.active else None
        self.moments = UnionMoments(self.collective, batch.advantages) if self.collective is not None else None
        self.scale = 1.0
        name = policy.spec.activation
        self.activation, self.activation_grad = NUMPY_ACTIVATIONS[name], _DERIVATIVES[name]
        # Raises unless the gradients are laid out in fused_order.
        self.w, self.g = (views or LiveViews(policy)).get()
        if not self.w.views:
            raise ValueError("the NumPy update needs the parameters laid out in fused_order")
        self.gaussian = self.w.log_std is not None
        self.num_out = self.w.num_out
        # The gradient views in the shapes the backward pass writes.
        g = self.g
        self.g_weights = [w.reshape(2, -1, w.shape[1]) if g.twin and k == 0 else w for k, w in enumerate(g.weights)]
        self.g_biases = [b.reshape(2, -1) if g.twin else b for b in g.biases]
        self.g_out_b = g.out_b[:, 0]
        self.obs = obs.numpy().reshape(obs.shape[0], -1)
        self.actions = actions.numpy() if self.gaussian else actions.numpy().astype(np.intp)
        # Old log-prob, old value, advantage, return: one row each, so a minibatch is one gather.
        assert batch.values is not None and batch.returns is not None, "the fast path's critic needs values and returns"
        self.data = np.stack([t.numpy() for t in (batch.logp, batch.values, batch.advantages, batch.returns)],
                             dtype=np.float32)
        self.arange = np.arange(self.obs.shape[0])
        self.ones = np.ones(self.obs.shape[0], dtype=np.float32)

    def begin_epoch(self, split: Sequence[Tensor]) -> None:
        """Exchange the whitening moments of the epoch's minibatches at once (data parallel)."""
        if self.moments is not None:
            self.moments.begin_epoch(split)

    def forward(self, idx: Tensor) -> float:
        s = self.settings
        rows = idx.numpy()
        x = self.obs.take(rows, axis=0)
        logp_old, values_old, adv, ret = self.data.take(rows, axis=1)
        b = x.shape[0]
        with np.errstate(all="ignore"):  # overflow gives inf/NaN, as in torch; the caller checks
            self.outs = features(self.w, x, self.activation)
            self.f = trunk_output(self.w, self.outs)
            out, values = heads(self.w, self.f)  # out: [A, b]

            if self.gaussian:
                actions = self.actions.take(rows, axis=0).T
                assert self.w.log_std is not None
                log_std = self.w.log_std
                inv_std = np.exp(-log_std)[:, None]
                u = (actions - out) * inv_std
                logp = -0.5 * np.add.reduce(u * u, axis=0) - (float(log_std.sum()) + out.shape[0] * HALF_LOG_2PI)
                entropy = float((0.5 + HALF_LOG_2PI + log_std).sum())
                self.u, self.inv_std = u, inv_std
            else:
                shifted = out - np.maximum.reduce(out, axis=0)
                e = np.exp(shifted)
                total = np.add.reduce(e, axis=0)
                log_probs = shifted - np.log(total)
                probs = e / total
                self.flat_idx = self.actions.take(rows) * b + self.arange[:b]
                logp = log_probs.ravel().take(self.flat_idx)
                self.plogp = np.add.reduce(probs * log_probs, axis=0)  # minus each row's entropy
                entropy = -float(np.add.reduce(self.plogp)) / b
                self.probs, self.log_probs = probs, log_probs

            if self.collective is not None and self.moments is not None:
                local, total_n, mb_mean, mb_var = self.moments.of(idx)
                self.scale = self.collective.share(local, total_n)
                if s.whiten_advantages:
                    adv = ((adv - mb_mean.item()) / np.sqrt(mb_var.item() + 1e-8)).astype(np.float32)
            elif s.whiten_advantages:
                centred = adv - np.add.reduce(adv) / np.float32(b)
                var = float(np.dot(centred, centred)) / (b - 1) if b > 1 else 0.0
                centred *= 1.0 / math.sqrt(var + 1e-8)
                adv = centred
            log_ratio = logp - logp_old
            ratio = np.exp(log_ratio)
            kl_k1 = -float(np.add.reduce(log_ratio)) / b
            k3 = np.expm1(log_ratio)  # per sample (r - 1) - log r; also the penalty's KL term
            k3 -= log_ratio
            kl_k3 = float(np.add.reduce(k3)) / b
            clip_fraction = np.count_nonzero(np.abs(ratio - 1.0) > s.clip_range) / b
            unclipped = ratio * adv
            if s.loss == "penalty":
                policy_loss = -float(np.add.reduce(unclipped - s.kl_coef * k3)) / b
                g_logp = (unclipped - s.kl_coef * (ratio - 1.0)) * (-1.0 / b)
            else:
                lo, hi = 1.0 - s.clip_range, 1.0 + s.clip_range
                clipped = np.minimum(np.maximum(ratio, lo), hi)
                clipped *= adv
                policy_loss = -float(np.add.reduce(np.minimum(unclipped, clipped))) / b
                # The unclipped term is the minimum, or the clip passes the gradient (inside it).
                passes = unclipped < clipped
                passes |= (ratio >= lo) & (ratio <= hi)
                g_logp = unclipped * passes
                g_logp *= -1.0 / b

            err = values - ret
            if s.clip_range_vf is None:
                v_loss = 0.5 * float(np.dot(err, err)) / b
                g_values = err
            else:
                c = s.clip_range_vf
                delta_v = values - values_old
                err_c = np.minimum(np.maximum(delta_v, -c), c)
                err_c += values_old
                err_c -= ret
                e1, e2 = err * err, err_c * err_c
                v_loss = 0.5 * float(np.add.reduce(np.maximum(e1, e2))) / b
                g_clipped = err_c * (np.abs(delta_v) <= c)
                # torch's maximum splits the gradient evenly on ties (common: the clip inactive)
                g_values = np.where(e1 > e2, err, g_clipped)
                g_values = np.where(e1 == e2, 0.5 * (err + g_clipped), g_values)
            g_values = g_values * (s.vf_coef / b)

        self.g_logp, self.g_values = g_logp.astype(np.float32, copy=False), g_values.astype(np.float32, copy=False)
        loss = policy_loss + s.vf_coef * v_loss - s.ent_coef * entropy
        self.row: tuple[float, ...] = (policy_loss, v_loss, entropy, kl_k1, kl_k3, clip_fraction, loss)
        if self.collective is not None:
            # The loss (and so every gradient term below) times this process's share.
            self.g_logp *= np.float32(self.scale)
            self.g_values *= np.float32(self.scale)
            self.row = tuple(v * self.scale for v in self.row)
            return self.row[-1]
        return loss

    def approx_kl(self) -> float:
        return self.row[4]

    def backward(self) -> None:
        s = self.settings
        g_logp, g = self.g_logp, self.g
        b = g_logp.shape[0]
        with np.errstate(all="ignore"):
            if self.gaussian:
                g_out = g_logp * self.u * self.inv_std
                # d logp / d s = u² - 1 per row; the entropy's derivative is 1 for every row.
                assert g.log_std is not None
                np.add.reduce(g_logp * (self.u * self.u - 1.0), axis=1, out=g.log_std)
                g.log_std -= s.ent_coef * self.scale
            else:
                # dlogp/dz = onehot - p; -c2 dH/dz / B with dH/dz_j = -p_j (log p_j + H)
                g_out = self.log_probs - self.plogp
                g_out *= s.ent_coef * self.scale / b
                g_out -= g_logp
                g_out *= self.probs
                g_out.ravel()[self.flat_idx] += g_logp
            w, a = self.w, self.num_out
            f = self.f
            if w.twin:
                grad = np.zeros((2, a + 1, b), dtype=np.float32)
                grad[0, :a] = g_out
                grad[1, a] = self.g_values
                np.add.reduce(np.matmul(grad, f), axis=0, out=g.out_w)
                np.add.reduce(grad, axis=(0, 2), out=self.g_out_b)
            else:
                grad = np.empty((a + 1, b), dtype=np.float32)
                grad[:a] = g_out
                grad[a] = self.g_values
                np.matmul(grad, f, out=g.out_w)
                np.add.reduce(grad, axis=1, out=self.g_out_b)
            d_f = np.matmul(grad.swapaxes(-1, -2), w.out_w)  # dL/d(features): [2, b, H] or [b, H]
            self._trunk_backward(d_f)

    def _trunk_backward(self, d_f: np.ndarray) -> None:
        w, outs, twin = self.w, self.outs, self.w.twin
        for k in range(len(w.weights) - 1, -1, -1):
            h_out = outs[k + 1]
            h_in = outs[k]
            if twin and k == 0:
                h_out = split_twin(h_out)
            elif twin and k == 1:
                h_in = split_twin(h_in)
            delta = d_f * self.activation_grad(h_out)  # [..., b, H]: twins carry a leading axis of 2
            np.matmul(delta.swapaxes(-1, -2), h_in, out=self.g_weights[k])
            np.matmul(self.ones[:delta.shape[-2]], delta, out=self.g_biases[k])  # sum over rows, by BLAS
            if k > 0:
                d_f = np.matmul(delta, w.weights[k])

    def stats(self) -> tuple[float, ...]:
        return self.row
