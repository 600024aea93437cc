r"""The minibatch loss and gradient of several seeds' policies at once (``ppokit train --seeds --stack-updates``).

Seeds of one config have policies of one shape. :class:`~ppokit.control.fast.update.NumpyMinibatchStep`
runs one seed's minibatch in ~60 NumPy calls, each costing more dispatch than arithmetic on a 64-wide
network; here the same calls run once for ``S`` seeds, on weights and gradients stacked
``[S, P]`` (one row per seed, each laid out as that seed's FlatAdam buffer): one batched product
``[S, ..., B, in] @ [S, ..., in, out]`` per layer forward and two backward.

The seeds' minibatches differ in size: each seed's batch holds its rollout's valid steps, and a
rollout's reset steps are dropped, so seed ``s`` has ``n_s`` rows and its minibatch ``j`` the
``m_sj`` rows the seed's own shuffle gives it. They are padded to the largest, ``B``, with a mask:
every mean of the loss is each seed's own sum over its real rows divided by its own ``m_sj``, and
the padded rows' gradient terms are zero. Seed ``s``'s loss and gradient are therefore those of
its minibatch alone, term for term the formulas of :mod:`ppokit.control.fast.update`, up to the
order in which sums are taken (``tests/control/fast/test_stacked_update.py`` holds them to the
reference, seed by seed). Not bit for bit: BLAS adds a stacked product's terms in another order
than a single one's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from torch import Tensor

from ppokit.control.fast.layout import FusedArrays, features, heads, split_twin, trunk_output
from ppokit.control.fast.policy import HALF_LOG_2PI, NUMPY_ACTIVATIONS
from ppokit.control.fast.update import _DERIVATIVES
from ppokit.control.policy.networks import ActorCritic
from ppokit.core.update import PPOBatch, PPOUpdateSettings

#: The settings that may differ between the seeds of one stacked update (their controllers and
#: schedules move them apart); every other field must be the same for all.
PER_SEED_SETTINGS = ("clip_range", "kl_coef")


def common_settings(settings: Sequence[PPOUpdateSettings]) -> PPOUpdateSettings:
    """The first seed's settings, once every field outside :data:`PER_SEED_SETTINGS` is checked to
    be the same for every seed (one config: anything else is a bug, not a user's choice)."""
    first = settings[0]
    for field in dataclasses.fields(first):
        if field.name in PER_SEED_SETTINGS:
            continue
        values = {repr(getattr(s, field.name)) for s in settings}
        if len(values) > 1:
            raise ValueError(f"stacked update: the seeds' update setting {field.name!r} differs ({sorted(values)})")
    return first


def _view(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``array`` reshaped without a copy (the backward pass writes into these: a copy would lose it)."""
    out = array.view()
    out.shape = shape  # raises where only a copy could have this shape
    return out


class StackedMinibatchStep:
    """One minibatch of ``S`` seeds: the losses ``[S]`` and each seed's gradient in its row of ``grads``.

    ``policy``: any one of the seeds' policies (their shapes are one); ``weights`` and ``grads``:
    ``[S, P]``, seed ``s``'s parameters and gradient buffer in row ``s`` (the fused order of
    :mod:`ppokit.control.fast.layout`, as FlatAdam lays them out). ``data[s]``: seed ``s``'s whole
    batch, ``(obs, actions, batch)`` as :class:`~ppokit.control.fast.update.NumpyMinibatchStep`
    takes it. ``settings[s]``: seed ``s``'s; only :data:`PER_SEED_SETTINGS` may differ.
    """

    def __init__(self, policy: ActorCritic, weights: np.ndarray, grads: np.ndarray,
                 data: Sequence[tuple[Tensor, Tensor, PPOBatch]], settings: Sequence[PPOUpdateSettings]) -> None:
        if len(data) != weights.shape[0] or len(settings) != weights.shape[0] or grads.shape != weights.shape:
            raise ValueError("stacked update: one batch, one settings and one row of weights per seed")
        self.settings = common_settings(settings)
        self.size = size = weights.shape[0]
        self.clip = np.array([s.clip_range for s in settings], dtype=np.float32)[:, None]
        self.beta = np.array([s.kl_coef for s in settings], dtype=np.float32)[:, None]
        name = policy.spec.activation
        self.activation, self.activation_grad = NUMPY_ACTIVATIONS[name], _DERIVATIVES[name]
        raw = FusedArrays(policy, rows=weights)
        self.w = raw.broadcasting()
        self.log_std = raw.log_std  # [S, A]
        self.gaussian = raw.log_std is not None
        self.num_out = a = raw.num_out
        self.twin = raw.twin
        g = FusedArrays(policy, rows=grads)
        # The gradient views in the shapes the backward pass writes.
        self.g_weights = [_view(w, (size, 2, w.shape[1] // 2, w.shape[2])) if g.twin and k == 0 else w
                          for k, w in enumerate(g.weights)]
        self.g_biases = [_view(b, (size, 2, b.shape[-1] if b.ndim == 4 else b.shape[1] // 2)) if g.twin else b
                         for b in g.biases]
        self.g_out_w = g.out_w
        self.g_out_b = _view(g.out_b, (size, a + 1))
        self.g_log_std = g.log_std

        # Every seed's batch in one buffer of S blocks of the longest batch's rows (the rest zeros):
        # a minibatch of all seeds is then one gather.
        sizes = [int(obs.shape[0]) for obs, _, _ in data]
        self.rows_per_seed = longest = max(sizes)
        first_obs = data[0][0]
        width = int(np.prod(first_obs.shape[1:], dtype=np.int64))
        self.obs = np.zeros((size * longest, width), dtype=np.float32)
        action_shape = tuple(data[0][1].shape[1:]) if self.gaussian else ()
        self.actions = np.zeros((size * longest, *action_shape), dtype=np.float32 if self.gaussian else np.intp)
        self.data = np.zeros((4, size * longest), dtype=np.float32)
        for s, ((obs, actions, batch), n) in enumerate(zip(data, sizes)):
            rows = slice(s * longest, s * longest + n)
            self.obs[rows] = obs.numpy().reshape(n, -1)
            self.actions[rows] = actions.numpy()
            assert batch.values is not None and batch.returns is not None, "the fast path's critic needs values and returns"
            for k, t in enumerate((batch.logp, batch.values, batch.advantages, batch.returns)):
                self.data[k, rows] = t.numpy()
        self.sizes = np.array(sizes)
        self.offsets = np.arange(size)[:, None] * longest
        self.ones = np.ones(longest, dtype=np.float32)

    def forward(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """The losses ``[S]`` of seed ``s``'s rows ``parts[s]`` (indices into its batch; a seed given
        none gets a loss of 0 and no gradient)."""
        s_ = self.settings
        size = self.size
        counts = np.array([len(p) for p in parts])
        b = max(int(counts.max()), 1)
        idx = np.zeros((size, b), dtype=np.intp)
        mask = np.zeros((size, b), dtype=np.float32)
        for s, rows in enumerate(parts):
            n = len(rows)
            if n:
                idx[s, :n] = rows
                idx[s, n:] = rows[0]  # padding: a real row of the seed's, so every number stays finite
                mask[s, :n] = 1.0
        flat = (idx + self.offsets).ravel()
        inv = (1.0 / np.maximum(counts, 1)).astype(np.float32)
        weight = mask * inv[:, None]  # each row's share of its seed's means; 0 for padding
        x = self.obs.take(flat, axis=0).reshape(size, b, -1)
        logp_old, values_old, adv, ret = self.data.take(flat, axis=1).reshape(4, size, b)
        with np.errstate(all="ignore"):  # overflow gives inf/NaN, as in torch; the caller checks
            self.outs = features(self.w, x, self.activation)
            self.f = trunk_output(self.w, self.outs)
            out, values = heads(self.w, self.f)  # out: [S, A, b]

            if self.gaussian:
                actions = self.actions.take(flat, axis=0).reshape(size, b, -1).swapaxes(1, 2)
                assert self.log_std is not None
                log_std = self.log_std
                inv_std = np.exp(-log_std)[:, :, None]
                u = (actions - out) * inv_std
                logp = -0.5 * np.add.reduce(u * u, axis=1) - (log_std.sum(axis=1) + out.shape[1] * HALF_LOG_2PI)[:, None]
                entropy = (0.5 + HALF_LOG_2PI + log_std).sum(axis=1)
                self.u, self.inv_std = u, inv_std
            else:
                shifted = out - np.maximum.reduce(out, axis=1)[:, None]
                e = np.exp(shifted)
                total = np.add.reduce(e, axis=1)[:, None]
                log_probs = shifted - np.log(total)
                probs = e / total
                a = out.shape[1]
                self.flat_idx = (self.actions.take(flat).reshape(size, b) * b
                                 + np.arange(size)[:, None] * (a * b) + np.arange(b)).ravel()
                logp = log_probs.ravel().take(self.flat_idx).reshape(size, b)
                self.plogp = np.add.reduce(probs * log_probs, axis=1)  # minus each row's entropy
                entropy = -np.add.reduce(self.plogp * weight, axis=1)
                self.probs, self.log_probs = probs, log_probs

            if s_.whiten_advantages:
                mean = np.add.reduce(adv * mask, axis=1) * inv
                centred = (adv - mean[:, None]) * mask
                dof = np.maximum(counts - 1, 1)
                var = np.where(counts > 1, np.add.reduce(centred * centred, axis=1) / dof, 0.0)
                adv = centred * (1.0 / np.sqrt(var + 1e-8)).astype(np.float32)[:, None]
            log_ratio = logp - logp_old
            ratio = np.exp(log_ratio)
            kl_k1 = -np.add.reduce(log_ratio * weight, axis=1)
            k3 = np.expm1(log_ratio)  # per sample (r - 1) - log r; also the penalty's KL term
            k3 -= log_ratio
            kl_k3 = np.add.reduce(k3 * weight, axis=1)
            clip_fraction = np.add.reduce((np.abs(ratio - 1.0) > self.clip) * weight, axis=1)
            unclipped = ratio * adv
            if s_.loss == "penalty":
                policy_loss = -np.add.reduce((unclipped - self.beta * k3) * weight, axis=1)
                g_logp = (unclipped - self.beta * (ratio - 1.0)) * -weight
            else:
                lo, hi = 1.0 - self.clip, 1.0 + self.clip
                clipped = np.minimum(np.maximum(ratio, lo), hi)
                clipped *= adv
                policy_loss = -np.add.reduce(np.minimum(unclipped, clipped) * weight, axis=1)
                # The unclipped term is the minimum, or the clip passes the gradient (inside it).
                passes = unclipped < clipped
                passes |= (ratio >= lo) & (ratio <= hi)
                g_logp = unclipped * passes * -weight

            err = values - ret
            if s_.clip_range_vf is None:
                v_loss = 0.5 * np.add.reduce(err * err * weight, axis=1)
                g_values = err
            else:
                c = s_.clip_range_vf
                delta_v = values - values_old
                err_c = np.minimum(np.maximum(delta_v, -c), c)
                err_c += values_old
                err_c -= ret
                e1, e2 = err * err, err_c * err_c
                v_loss = 0.5 * np.add.reduce(np.maximum(e1, e2) * weight, axis=1)
                g_clipped = err_c * (np.abs(delta_v) <= c)
                # torch's maximum splits the gradient evenly on ties (common: the clip inactive)
                g_values = np.where(e1 > e2, err, g_clipped)
                g_values = np.where(e1 == e2, 0.5 * (err + g_clipped), g_values)
            g_values = g_values * (s_.vf_coef * weight)

        self.weight = weight
        self.g_logp, self.g_values = g_logp.astype(np.float32, copy=False), g_values.astype(np.float32, copy=False)
        loss = policy_loss + s_.vf_coef * v_loss - s_.ent_coef * entropy
        self.rows = np.stack([policy_loss, v_loss, entropy, kl_k1, kl_k3, clip_fraction, loss], axis=1).astype(np.float64)
        self.rows[counts == 0] = 0.0
        return self.rows[:, -1].copy()

    def approx_kl(self) -> np.ndarray:
        """Each seed's :math:`k_3` estimate of KL(old || new) on its last minibatch, ``[S]``."""
        return self.rows[:, 4].copy()

    def stats(self) -> np.ndarray:
        """``[S, 7]``: each seed's diagnostics in the order of :data:`~ppokit.core.update.STEP_STAT_NAMES`."""
        return self.rows

    def backward(self) -> None:
        """Each seed's gradient of its last loss, into its row of ``grads`` (every entry written)."""
        s_ = self.settings
        g_logp = self.g_logp
        size, b = g_logp.shape
        with np.errstate(all="ignore"):
            if self.gaussian:
                u = self.u
                g_out = g_logp[:, None] * u * self.inv_std
                # d logp / d s = u² - 1 per row; the entropy's derivative is 1 for every seed.
                assert self.g_log_std is not None
                np.add.reduce(g_logp[:, None] * (u * u - 1.0), axis=2, out=self.g_log_std)
                self.g_log_std -= s_.ent_coef
            else:
                # dlogp/dz = onehot - p; -c2 dH/dz / m with dH/dz_j = -p_j (log p_j + H), padding weighted 0
                g_out = self.log_probs - self.plogp[:, None]
                g_out *= (s_.ent_coef * self.weight)[:, None]
                g_out -= g_logp[:, None]
                g_out *= self.probs
                g_out.ravel()[self.flat_idx] += g_logp.ravel()
            a, f, w = self.num_out, self.f, self.w
            if self.twin:
                grad = np.zeros((size, 2, a + 1, b), dtype=np.float32)
                grad[:, 0, :a] = g_out
                grad[:, 1, a] = self.g_values
                np.add.reduce(np.matmul(grad, f), axis=1, out=self.g_out_w)
                np.add.reduce(grad, axis=(1, 3), out=self.g_out_b)
            else:
                grad = np.empty((size, a + 1, b), dtype=np.float32)
                grad[:, :a] = g_out
                grad[:, a] = self.g_values
                np.matmul(grad, f, out=self.g_out_w)
                np.add.reduce(grad, axis=2, out=self.g_out_b)
            d_f = np.matmul(grad.swapaxes(-1, -2), w.out_w)  # dL/d(features): [S, 2, b, H] or [S, b, H]
            self._trunk_backward(d_f)

    def _trunk_backward(self, d_f: np.ndarray) -> None:
        w, outs, twin = self.w, self.outs, self.twin
        for k in range(len(w.weights) - 1, -1, -1):
            h_out = outs[k + 1]
            h_in = outs[k]
            if twin and k == 0:
                h_out = split_twin(h_out)
                h_in = h_in[:, None]  # the input, shared by both nets: [S, 1, b, in]
            elif twin and k == 1:
                h_in = split_twin(h_in)
            delta = d_f * self.activation_grad(h_out)  # [S, (2,) b, H]
            np.matmul(delta.swapaxes(-1, -2), h_in, out=self.g_weights[k])
            np.matmul(self.ones[:delta.shape[-2]], delta, out=self.g_biases[k])  # sum over rows, by BLAS
            if k > 0:
                d_f = np.matmul(delta, w.weights[k])
