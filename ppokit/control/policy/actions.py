"""From the policy's actions to what the env accepts, and back out of a batch.

A policy emits one flat vector per env: an index (Discrete), an index per dimension (MultiDiscrete),
a real vector (Box), or the parts side by side (a Tuple or Dict of those). :class:`ActionAdapter`
turns it into the env's own format: start offsets, shapes, clipping to Box bounds, and the tuple or
dict of parts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from torch import Tensor


def action_width(space: spaces.Space) -> int:
    """Entries a flat action of ``space`` takes: 1 (Discrete), one per dimension (MultiDiscrete, Box),
    and the sum of the parts' for a Tuple or Dict."""
    if isinstance(space, spaces.Discrete):
        return 1
    if isinstance(space, (spaces.Tuple, spaces.Dict)):
        parts = space.spaces.values() if isinstance(space, spaces.Dict) else space.spaces
        return sum(action_width(s) for s in parts)
    shape = np.asarray(space.nvec).shape if isinstance(space, spaces.MultiDiscrete) else (space.shape or ())
    return int(np.prod(shape))


def all_discrete(space: spaces.Space) -> bool:
    """Whether every part of ``space`` is a finite choice (Discrete, MultiDiscrete, MultiBinary)."""
    if isinstance(space, (spaces.Tuple, spaces.Dict)):
        parts = space.spaces.values() if isinstance(space, spaces.Dict) else space.spaces
        return all(all_discrete(s) for s in parts)
    return isinstance(space, (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary))


def first_of(actions: Any) -> Any:
    """The first env's action out of a batch in the env's format (an array, or a tuple/dict of them)."""
    if isinstance(actions, tuple):
        return tuple(first_of(a) for a in actions)
    if isinstance(actions, dict):
        return {k: first_of(v) for k, v in actions.items()}
    return actions[0]


class ActionAdapter:
    """Turns policy outputs into what the env accepts: start offsets, shape and clipping to bounds;
    for a Tuple or Dict space, the flat vector of the parts split back into them."""

    def __init__(self, action_space: spaces.Space) -> None:
        self.space = action_space
        self.parts: list[tuple[str | int, ActionAdapter, int]] = []
        if isinstance(action_space, (spaces.Tuple, spaces.Dict)):
            items = action_space.spaces.items() if isinstance(action_space, spaces.Dict) else enumerate(action_space.spaces)
            self.parts = [(key, ActionAdapter(s), action_width(s)) for key, s in items]
        if isinstance(action_space, (spaces.Discrete, spaces.MultiDiscrete)):
            self.start = np.asarray(action_space.start)
            self.has_start = bool(np.any(self.start != 0))
        elif isinstance(action_space, spaces.Box):
            self.low = action_space.low.reshape(-1).astype(np.float32)
            self.high = action_space.high.reshape(-1).astype(np.float32)
            self.shape = action_space.shape
            self.dtype = action_space.dtype
        #: Whether a NumPy array of actions goes to the env as it is (indices that start at 0).
        self.as_is = isinstance(action_space, (spaces.Discrete, spaces.MultiDiscrete)) and not self.has_start

    def __call__(self, actions: Tensor | np.ndarray) -> Any:
        if self.as_is and isinstance(actions, np.ndarray):
            return actions
        a = actions.detach().cpu().numpy() if isinstance(actions, Tensor) else np.asarray(actions)
        if self.parts:
            out, start = [], 0
            for _, adapter, width in self.parts:
                piece = a[..., start:start + width]
                start += width
                if isinstance(adapter.space, spaces.Discrete):
                    piece = piece[..., 0]
                if not isinstance(adapter.space, spaces.Box):
                    piece = np.rint(piece).astype(np.int64)
                out.append(adapter(piece))
            if isinstance(self.space, spaces.Dict):
                return {key: part for (key, _, _), part in zip(self.parts, out)}
            return tuple(out)
        if isinstance(self.space, spaces.Box):
            # Clip only what the env sees; the unclipped sample keeps its log-probability.
            return np.clip(a, self.low, self.high).reshape(a.shape[:-1] + self.shape).astype(self.dtype, copy=False)
        return a + self.start if self.has_start else a
