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
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_json(s) for k, s in space.spaces.items()}}
    if isinstance(space, spaces.Tuple):
        return {"type": "Tuple", "spaces": [space_to_json(s) for s in space.spaces]}
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
        if kind == "MultiBinary":
            n = data["n"]
            return spaces.MultiBinary(int(n) if isinstance(n, int) else [int(v) for v in n])
        if kind == "Dict":
            return spaces.Dict({str(k): space_from_json(v) for k, v in data["spaces"].items()})
        if kind == "Tuple":
            return spaces.Tuple([space_from_json(v) for v in data["spaces"]])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"invalid space description {data!r}: {err}") from None
    raise CheckpointError(f"unknown space type {data.get('type')!r} in checkpoint")
