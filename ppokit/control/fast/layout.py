r"""The fast path's parameter layout: actor and critic side by side, so one NumPy call does both.

A separate-trunk actor-critic computes two MLPs of the same widths on the same input. Stored in
:func:`fused_order` (each layer's actor weight directly followed by the critic's, then the biases;
the policy head's weight followed by the value head's), each layer of both nets is one contiguous
block, and the NumPy code works on views of it:

- layer 0: ``W`` is ``[2H, in]``: one product ``x W^\top`` gives both nets' first features ``[B, 2H]``;
- layer ``i > 0``: ``W`` is ``[2, H_i, H_{i-1}]``: one batched product on features ``[2, B, H]``;
- the output: ``[A + 1, H]`` (the policy head's ``A`` rows, then the value head's), applied to both
  nets' features; the logits are read off the actor's product and the value off the critic's
  (the two cross products are computed and not used: ``A + 1`` rows of a 64-wide net cost less than
  a second call).

A shared trunk (or a net without hidden layers) is one MLP; only the output is fused. Each product
is the same sum per entry as the separate layers' (a block of a matrix product is the product of
the blocks), up to the order in which BLAS adds terms.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ppokit.control.policy.networks import ActorCritic


def fused_order(policy: ActorCritic) -> list[Tensor] | None:
    """The policy's parameters in the fused storage order (every parameter exactly once); None for a
    policy that is not an MLP described by its layers (a CNN, a recurrent core, a mixed head)."""
    try:
        layers = policy.layers()
    except TypeError:
        return None
    order: list[Tensor] = []
    if layers.critic is None:
        for lin in layers.actor:
            order += [lin.weight, lin.bias]
    else:
        for actor, critic in zip(layers.actor, layers.critic):
            order += [actor.weight, critic.weight, actor.bias, critic.bias]
    order += [layers.head.weight, layers.value.weight, layers.head.bias, layers.value.bias]
    if layers.log_std is not None:
        order.append(layers.log_std)
    params = list(policy.parameters())
    if len(order) != len(params) or {id(p) for p in order} != {id(p) for p in params}:
        return None  # parameters outside the MLP layers (a recurrent core)
    return order


def _contiguous(tensors: list[Tensor]) -> bool:
    """Whether the tensors lie back to back, in this order, in one storage."""
    first = tensors[0]
    if not all(t.is_contiguous() and t.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
               for t in tensors):
        return False
    offset = first.storage_offset()
    for t in tensors:
        if t.storage_offset() != offset:
            return False
        offset += t.numel()
    return True


def _block(tensors: list[Tensor], shape: tuple[int, ...], base: np.ndarray | None) -> np.ndarray:
    """The tensors as one array of ``shape``: a view of ``base`` (their whole storage, or ``[S, storage]``:
    then ``[S, *shape]``) when they lie back to back there, else (``base`` None) a copy."""
    if base is not None:
        start = tensors[0].storage_offset()
        return base[..., start:start + sum(t.numel() for t in tensors)].reshape(*base.shape[:-1], *shape)
    return np.concatenate([t.detach().numpy().reshape(-1) for t in tensors]).reshape(shape)


class FusedArrays:
    """NumPy arrays of a policy's parameters (or, ``grads``, of their ``.grad``) in the fused form.

    ``weights[i]``/``biases[i]``: layer ``i`` (twin: ``[2H, in]`` and ``[2H]`` for ``i = 0``,
    ``[2, H, H']`` and ``[2, 1, H]`` after; else the layer's own ``[H, H']`` and ``[H]``).
    ``out_w``/``out_b``: ``[A + 1, H]`` and ``[A + 1, 1]``. ``log_std``: ``[A]`` or None.
    ``twin``: separate actor and critic trunks with at least one hidden layer.
    ``views``: the arrays are views of the live storage (the parameters lie in :func:`fused_order`,
    as FlatAdam keeps them); otherwise they are copies, taken now.
    """

    def __init__(self, policy: ActorCritic, grads: bool = False, rows: np.ndarray | None = None) -> None:
        """``rows``: ``[S, P]``, each row a buffer laid out as this policy's parameters are (FlatAdam's
        flat buffer, ``P`` numbers): every array is then a view of it with a leading axis of ``S``,
        in the shapes above (the stacked update's weights and gradients of ``S`` seeds)."""
        order = fused_order(policy)
        if order is None:
            raise ValueError("FusedArrays: only MLP policies with one head have the fused form")
        layers = policy.layers()
        tensors = [p.grad if grads else p.detach() for p in order]
        if any(t is None for t in tensors):
            raise ValueError("FusedArrays: a parameter has no gradient buffer")
        ts: list[Tensor] = [t for t in tensors if t is not None]
        self.views = _contiguous(ts)
        base = torch.empty(0, dtype=ts[0].dtype).set_(ts[0].untyped_storage()).numpy() if self.views else None
        if rows is not None:
            if base is None or rows.shape[-1] != base.shape[0]:
                raise ValueError("FusedArrays: rows need the parameters laid out in fused_order, one buffer a row")
            base = rows
        if grads and not self.views:
            raise ValueError("the NumPy update needs the gradients laid out in fused_order (FlatAdam with "
                             "layout=fused_order(policy))")
        self.twin = layers.critic is not None and len(layers.actor) > 0
        self.weights: list[np.ndarray] = []
        self.biases: list[np.ndarray] = []
        i = 0
        for k, lin in enumerate(layers.actor):
            out_f, in_f = lin.weight.shape
            if self.twin:
                w_shape = (2 * out_f, in_f) if k == 0 else (2, out_f, in_f)
                b_shape = (2 * out_f,) if k == 0 else (2, 1, out_f)
                self.weights.append(_block(ts[i:i + 2], w_shape, base))
                self.biases.append(_block(ts[i + 2:i + 4], b_shape, base))
                i += 4
            else:
                self.weights.append(_block(ts[i:i + 1], (out_f, in_f), base))
                self.biases.append(_block(ts[i + 1:i + 2], (out_f,), base))
                i += 2
        head_out, width = layers.head.weight.shape
        self.num_out = head_out
        self.out_w = _block(ts[i:i + 2], (head_out + 1, width), base)
        self.out_b = _block(ts[i + 2:i + 4], (head_out + 1, 1), base)
        self.log_std = _block(ts[i + 4:i + 5], (head_out,), base) if layers.log_std is not None else None
        #: The parameters' version counters when copied (to notice an in-place change).
        self.version = tuple(p._version for p in policy.parameters())

    @classmethod
    def stacked(cls, many: list[FusedArrays]) -> FusedArrays:
        """Copies of several policies' arrays of one shape, stacked on a new first axis (the output
        layer of twins on ``[S, 1, A + 1, H]``, to broadcast over the two nets)."""
        first = many[0]
        out = cls.__new__(cls)
        out.twin, out.num_out, out.views, out.version = first.twin, first.num_out, False, ()
        out.weights = [np.stack(ws) for ws in zip(*(a.weights for a in many))]
        out.biases = [np.stack(bs) for bs in zip(*(a.biases for a in many))]
        out.out_w, out.out_b = np.stack([a.out_w for a in many]), np.stack([a.out_b for a in many])
        log_stds = [a.log_std for a in many if a.log_std is not None]
        out.log_std = np.stack(log_stds)[:, None, :] if log_stds else None
        return out.broadcasting()

    def broadcasting(self) -> FusedArrays:
        """Arrays with a leading seed axis (:meth:`stacked`, or ``rows``) as views that broadcast in
        :func:`features` and :func:`heads`: biases ``[S, 2H]`` as ``[S, 1, 2H]``, the output layer of
        twins on ``[S, 1, A + 1, H]`` (over the two nets). ``log_std`` is left as it is."""
        out = copy.copy(self)
        out.biases = [b[:, None] if b.ndim == 2 else b for b in self.biases]
        if self.twin:
            out.out_w, out.out_b = self.out_w[:, None], self.out_b[:, None]
        return out


class LiveViews:
    """A policy's parameter and gradient views in the fused form, kept from one update to the next
    and taken again only when a parameter or its gradient has moved (checked by address), as
    building them costs more than a minibatch."""

    def __init__(self, policy: ActorCritic) -> None:
        self.policy = policy
        self._where: tuple[int, ...] = ()
        self._arrays: tuple[FusedArrays, FusedArrays] | None = None

    def get(self) -> tuple[FusedArrays, FusedArrays]:
        """``(weights, gradients)``; raises as :class:`FusedArrays` does for gradients out of layout."""
        params = list(self.policy.parameters())
        where = (*(p.data_ptr() for p in params), *(0 if p.grad is None else p.grad.data_ptr() for p in params))
        if self._arrays is None or where != self._where:
            self._arrays = (FusedArrays(self.policy), FusedArrays(self.policy, grads=True))
            self._where = where
        return self._arrays


def split_twin(h: np.ndarray) -> np.ndarray:
    """Twin features ``[..., B, 2H]`` as ``[..., 2, B, H]`` (a view)."""
    return h.reshape(*h.shape[:-1], 2, -1).swapaxes(-2, -3)


def features(arrays: FusedArrays, x: np.ndarray, activation: Callable[[np.ndarray], np.ndarray]) -> list[np.ndarray]:
    """Every layer's output, input first: ``[..., B, in]``, then twin ``[..., B, 2H]``,
    ``[..., 2, B, H]``, ... (leading axes: stacked policies)."""
    outs = [x]
    for k, (w, b) in enumerate(zip(arrays.weights, arrays.biases)):
        h = split_twin(outs[-1]) if arrays.twin and k == 1 else outs[-1]
        z = np.matmul(h, w.swapaxes(-1, -2))
        z += b
        outs.append(activation(z))
    return outs


def trunk_output(arrays: FusedArrays, outs: list[np.ndarray]) -> np.ndarray:
    """The features the output layer reads: ``[..., 2, B, H]`` (twin) or ``[..., B, H]``."""
    if arrays.twin and len(outs) == 2:  # one hidden layer: still [..., B, 2H]
        return split_twin(outs[-1])
    return outs[-1]


def heads(arrays: FusedArrays, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The policy head's output transposed, ``[..., A, B]``, and the values ``[..., B]``."""
    out = np.matmul(arrays.out_w, f.swapaxes(-1, -2))
    out += arrays.out_b
    if arrays.twin:
        return out[..., 0, :-1, :], out[..., 1, -1, :]
    return out[..., :-1, :], out[..., -1, :]
