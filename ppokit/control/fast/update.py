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

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ppokit.control.fast.policy import HALF_LOG_2PI, NUMPY_ACTIVATIONS
from ppokit.control.networks import ActorCritic
from ppokit.core.collective import Collective
from ppokit.core.update import PPOUpdateSettings

# Each activation's derivative, written in terms of the activation's output.
_DERIVATIVES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "tanh": lambda h: 1.0 - h * h,
    "relu": lambda h: (h > 0).astype(h.dtype),
    "elu": lambda h: np.where(h > 0, 1.0, h + 1.0).astype(h.dtype),
}


def _grad(param: Tensor) -> np.ndarray:
    if param.grad is None:
        raise ValueError("the NumPy update needs preallocated gradients (FlatAdam's views)")
    return param.grad.numpy()


class _Layer:
    """A linear layer's weight and bias, and their gradients, as NumPy views of the torch tensors."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        self.w = linear.weight.detach().numpy()  # [out, in], updated in place by the optimiser
        self.b = linear.bias.detach().numpy()
        self.gw = _grad(linear.weight)
        self.gb = _grad(linear.bias)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x @ self.w.T + self.b

    def param_grads(self, x: np.ndarray, delta: np.ndarray) -> None:
        """Write dL/dW and dL/db for ``delta`` = dL/d(output)."""
        np.matmul(delta.T, x, out=self.gw)
        np.sum(delta, axis=0, out=self.gb)

    def backward(self, x: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """:meth:`param_grads`, and return dL/d(input)."""
        self.param_grads(x, delta)
        return delta @ self.w


class NumpyMinibatchStep:
    """A :class:`~ppokit.core.update.MinibatchStep` for an MLP :class:`ActorCritic` on a CPU.

    Only for the policies and settings :func:`ppokit.control.fast.support.refusal` accepts.
    ``obs`` and ``actions`` are the whole batch (the rows are picked per minibatch), as are the
    arrays of ``batch`` (``logp``, ``values``, ``advantages``, ``returns``). Overwrites the
    parameters' preallocated gradient views.
    """

    def __init__(self, policy: ActorCritic, obs: Tensor, actions: Tensor, batch: dict[str, Tensor],
                 settings: PPOUpdateSettings, collective: Collective | None = None) -> None:
        self.settings = settings
        # Data parallel: whiten with the union minibatch's statistics and weight this process's
        # means by its share of it, as core.update.AutogradStep does.
        self.collective = collective if collective is not None and collective.active else None
        self.scale = 1.0
        name = policy.spec.activation
        self.activation, self.activation_grad = NUMPY_ACTIVATIONS[name], _DERIVATIVES[name]
        layers = policy.layers()
        self.actor = [_Layer(m) for m in layers.actor]
        self.critic = None if layers.critic is None else [_Layer(m) for m in layers.critic]
        self.head = _Layer(layers.head)
        self.value_head = _Layer(layers.value)
        self.gaussian = layers.log_std is not None
        if layers.log_std is not None:
            self.log_std = layers.log_std.detach().numpy()
            self.g_log_std = _grad(layers.log_std)
        self.obs = obs.numpy().reshape(obs.shape[0], -1)
        self.actions = actions.numpy()
        self.logp_old = batch["logp"].numpy()
        self.values_old = batch["values"].numpy()
        self.advantages = batch["advantages"].numpy()
        self.returns = batch["returns"].numpy()

    def _trunk(self, x: np.ndarray, layers: list[_Layer]) -> list[np.ndarray]:
        outs = [x]
        for layer in layers:
            outs.append(self.activation(layer.forward(outs[-1])))
        return outs

    def _trunk_backward(self, outs: list[np.ndarray], layers: list[_Layer], grad: np.ndarray) -> None:
        for i in range(len(layers) - 1, 0, -1):
            grad = layers[i].backward(outs[i], grad * self.activation_grad(outs[i + 1]))
        layers[0].param_grads(outs[0], grad * self.activation_grad(outs[1]))  # the input needs no gradient

    def forward(self, idx: Tensor) -> float:
        s = self.settings
        rows = idx.numpy()
        x = self.obs[rows]
        b = x.shape[0]
        with np.errstate(all="ignore"):  # overflow gives inf/NaN, as in torch; the caller checks
            self.actor_outs = self._trunk(x, self.actor)
            self.critic_outs = self.actor_outs if self.critic is None else self._trunk(x, self.critic)
            h_actor, h_critic = self.actor_outs[-1], self.critic_outs[-1]
            values = self.value_head.forward(h_critic)[:, 0]
            out = self.head.forward(h_actor)

            if self.gaussian:
                actions = self.actions[rows]
                inv_std = np.exp(-self.log_std)
                u = (actions - out) * inv_std
                logp = -0.5 * (u * u).sum(-1) - (self.log_std.sum() + out.shape[1] * HALF_LOG_2PI)
                entropy = float((0.5 + HALF_LOG_2PI + self.log_std).sum())
                self.u, self.inv_std = u, inv_std
            else:
                actions = self.actions[rows].astype(np.intp)
                shifted = out - out.max(-1, keepdims=True)
                log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
                probs = np.exp(log_probs)
                logp = log_probs[np.arange(b), actions]
                ent_rows = -(probs * log_probs).sum(-1)
                entropy = float(ent_rows.mean())
                self.probs, self.log_probs, self.ent_rows, self.action_idx = probs, log_probs, ent_rows, actions

            adv = self.advantages[rows]
            if self.collective is not None:
                local, total, mb_mean, mb_var = self.collective.moments(torch.from_numpy(adv))
                self.scale = self.collective.share(local, total)
                if s.whiten_advantages:
                    adv = ((adv - mb_mean.item()) / np.sqrt(mb_var.item() + 1e-8)).astype(np.float32)
            elif s.whiten_advantages:
                var = adv.var(ddof=1) if b > 1 else np.float32(0.0)
                adv = (adv - adv.mean()) / np.sqrt(var + np.float32(1e-8))
            log_ratio = logp - self.logp_old[rows]
            ratio = np.exp(log_ratio)
            kl_k1 = float(-log_ratio.mean())
            k3 = np.expm1(log_ratio) - log_ratio  # per sample; also the penalty's KL term
            kl_k3 = float(k3.mean())
            if s.loss == "penalty":
                policy_loss = -float((ratio * adv - s.kl_coef * k3).mean())
                clip_fraction = float((np.abs(ratio - 1.0) > s.clip_range).mean())
                g_logp = -(ratio * adv - s.kl_coef * (ratio - 1.0)) / b
            else:
                unclipped = ratio * adv
                clipped = np.clip(ratio, 1.0 - s.clip_range, 1.0 + s.clip_range) * adv
                policy_loss = -float(np.minimum(unclipped, clipped).mean())
                outside = np.abs(ratio - 1.0) > s.clip_range
                clip_fraction = float(outside.mean())
                inside = (ratio >= 1.0 - s.clip_range) & (ratio <= 1.0 + s.clip_range)
                g_logp = -(adv * ratio) * ((unclipped < clipped) | inside) / b

            ret = self.returns[rows]
            err = values - ret
            if s.clip_range_vf is None:
                v_loss = 0.5 * float((err * err).mean())
                g_values = err / b
            else:
                v_old = self.values_old[rows]
                delta_v = values - v_old
                err_c = v_old + np.clip(delta_v, -s.clip_range_vf, s.clip_range_vf) - ret
                e1, e2 = err * err, err_c * err_c
                v_loss = 0.5 * float(np.maximum(e1, e2).mean())
                w = np.where(e1 > e2, 1.0, np.where(e1 == e2, 0.5, 0.0)).astype(np.float32)
                passes = np.abs(delta_v) <= s.clip_range_vf
                g_values = (err * w + err_c * passes * (1.0 - w)) / b

        self.g_logp, self.g_values = g_logp.astype(np.float32), (s.vf_coef * g_values).astype(np.float32)
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
        g_logp = self.g_logp
        with np.errstate(all="ignore"):
            if self.gaussian:
                g_out = g_logp[:, None] * self.u * self.inv_std
                # d logp / d s = u² - 1 per row; the entropy's derivative is 1 for every row.
                np.sum(g_logp[:, None] * (self.u * self.u - 1.0), axis=0, out=self.g_log_std)
                self.g_log_std -= s.ent_coef * self.scale
            else:
                g_out = -g_logp[:, None] * self.probs
                g_out[np.arange(g_out.shape[0]), self.action_idx] += g_logp
                # -c2 * dH/dz / B, with dH/dz_j = -p_j (log p_j + H)
                g_out += (s.ent_coef * self.scale / g_out.shape[0]) * self.probs * (self.log_probs + self.ent_rows[:, None])
            h_actor, h_critic = self.actor_outs[-1], self.critic_outs[-1]
            g_actor = self.head.backward(h_actor, g_out)
            g_critic = self.value_head.backward(h_critic, self.g_values[:, None])
            if self.critic is None:
                self._trunk_backward(self.actor_outs, self.actor, g_actor + g_critic)
            else:
                self._trunk_backward(self.actor_outs, self.actor, g_actor)
                self._trunk_backward(self.critic_outs, self.critic, g_critic)

    def stats(self) -> Tensor:
        return torch.tensor(self.row, dtype=torch.float64)
