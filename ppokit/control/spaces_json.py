"""Gymnasium spaces to and from JSON, so a saved policy can be rebuilt without its environment."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from ppokit.errors import CheckpointError


def _finite_list(a: np.ndarray) -> list[Any]:
    return [None if not np.isfinite(x) else float(x) for x in np.asarray(a, dtype=np.float64).ravel()]


def space_to_json(space: spaces.Space) -> dict[str, Any]:
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": np.asarray(space.nvec).tolist(), "start": np.asarray(space.start).tolist()}
    if isinstance(space, spaces.Box):
        # Infinite bounds are written as null (JSON has no infinity) and restored by their sign.
        return {
            "type": "Box", "shape": list(space.shape), "dtype": str(space.dtype),
            "low": _finite_list(space.low), "high": _finite_list(space.high),
        }
    raise CheckpointError(f"cannot describe space {space} in a checkpoint")


def space_from_json(data: dict[str, Any]) -> spaces.Space:
    try:
        kind = data["type"]
        if kind == "Discrete":
            return spaces.Discrete(int(data["n"]), start=int(data.get("start", 0)))
        if kind == "MultiDiscrete":
            return spaces.MultiDiscrete(np.array(data["nvec"]), start=np.array(data.get("start", 0)))
        if kind == "Box":
            shape = tuple(data["shape"])
            dtype = np.dtype(data["dtype"])
            low = np.array([-np.inf if v is None else v for v in data["low"]], dtype=np.float64).reshape(shape)
            high = np.array([np.inf if v is None else v for v in data["high"]], dtype=np.float64).reshape(shape)
            return spaces.Box(low.astype(dtype), high.astype(dtype), shape=shape, dtype=dtype)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"invalid space description {data!r}: {err}") from None
    raise CheckpointError(f"unknown space type {data.get('type')!r} in checkpoint")
