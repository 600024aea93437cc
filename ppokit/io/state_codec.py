"""Exact, code-free serialisation of plain state (numbers, arrays, numpy RNGs) to JSON.

Checkpoints must never run code when loaded, so nothing here is pickled: arrays travel as base64
bytes with their dtype and shape, numpy random generators as their bit generator's state dict,
tuples with a tag. Floats are written with ``repr`` precision, so every value round-trips exactly.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from ppokit.errors import CheckpointError


class _Skip:
    """Marker for a value :func:`encode` cannot represent."""

    def __repr__(self) -> str:
        return "SKIP"


SKIP = _Skip()

_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


def encode(value: Any) -> Any:
    """A JSON-ready form of ``value``, or :data:`SKIP` when it is not plain data."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            return SKIP
        data = np.ascontiguousarray(value)
        return {"__ndarray__": base64.b64encode(data.tobytes()).decode("ascii"),
                "dtype": data.dtype.str, "shape": list(data.shape)}
    if isinstance(value, np.generic):
        return {"__npscalar__": encode(np.asarray(value))}
    if isinstance(value, np.random.Generator):
        return {"__generator__": type(value.bit_generator).__name__, "state": value.bit_generator.state}
    if isinstance(value, np.random.RandomState):
        return {"__randomstate__": encode(value.get_state(legacy=True))}
    if isinstance(value, (list, tuple)):
        items = [encode(v) for v in value]
        if any(i is SKIP for i in items):
            return SKIP
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            # Other keys (numbers, tuples) as a list of encoded pairs, so they come back as they were.
            pairs = [[encode(k), encode(v)] for k, v in value.items()]
            if any(k is SKIP or v is SKIP for k, v in pairs):
                return SKIP
            return {"__pairs__": pairs}
        out = {k: encode(v) for k, v in value.items()}
        if any(v is SKIP for v in out.values()):
            return SKIP
        if any(k.startswith("__") for k in out):
            return {"__dict__": out}
        return out
    return SKIP


def decode(value: Any) -> Any:
    """Inverse of :func:`encode`; raises :class:`CheckpointError` on a malformed entry."""
    try:
        return _decode(value)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"malformed saved state entry ({type(err).__name__}: {err})") from None


def _hashable(key: Any) -> Any:
    if isinstance(key, list):  # a tuple's items decode as a tuple; anything else unhashable is bad data
        raise CheckpointError("saved mapping key is a list")
    return key


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__ndarray__" in value:
        raw = base64.b64decode(value["__ndarray__"], validate=True)
        dtype = np.dtype(value["dtype"])
        if dtype.hasobject:
            raise CheckpointError("saved array has an object dtype")
        return np.frombuffer(raw, dtype=dtype).reshape(value["shape"]).copy()
    if "__npscalar__" in value:
        return _decode(value["__npscalar__"])[()]
    if "__generator__" in value:
        name = value["__generator__"]
        if name not in _BIT_GENERATORS:
            raise CheckpointError(f"unknown numpy bit generator {name!r} in saved state")
        bit_generator = getattr(np.random, name)()
        bit_generator.state = value["state"]
        return np.random.Generator(bit_generator)
    if "__randomstate__" in value:
        rs = np.random.RandomState()
        rs.set_state(_decode(value["__randomstate__"]))
        return rs
    if "__tuple__" in value:
        return tuple(_decode(v) for v in value["__tuple__"])
    if "__dict__" in value:
        return {k: _decode(v) for k, v in value["__dict__"].items()}
    if "__pairs__" in value:
        return {_hashable(_decode(k)): _decode(v) for k, v in value["__pairs__"]}
    return {k: _decode(v) for k, v in value.items()}
