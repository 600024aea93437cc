"""Saving and restoring the state of running environments, so a resumed run continues mid-episode.

There is no Gymnasium API for this, so ppokit walks the env objects it created (the vector env, its
wrappers, each sub-env and the unwrapped env) and captures the attributes that are plain data:
numbers, arrays, numpy generators (the envs' RNGs), and MuJoCo's integration state. Objects it
knows to be fixed for an env's life (spaces, specs, callables, the MuJoCo model and renderer) are
skipped. Anything else (a Box2D world, a worker process, ale-py's emulator, an EnvPool pool) means
the state cannot be captured exactly; the checkpoint then records why, and a resumed run starts
fresh episodes instead (seeded, so still reproducible, but not bit-identical to an uninterrupted run).
"""

from __future__ import annotations

import enum
import sys
import types
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ppokit.control.envs.contract import settle_checks
from ppokit.errors import CheckpointError
from ppokit.io.state_codec import SKIP, decode, encode


def _mujoco() -> Any:
    """The mujoco module if an env has loaded it, else None. Never imported here: it is an optional
    extra, and importing it costs ~0.1 s of every run's start-up, MuJoCo or not."""
    return sys.modules.get("mujoco")


def _is_fixed(value: Any) -> bool:
    """Objects that do not change while an env runs, so need not be saved."""
    fixed: tuple[type, ...] = (spaces.Space, gym.envs.registration.EnvSpec, types.FunctionType,
                               types.MethodType, types.BuiltinFunctionType, types.ModuleType, type,
                               types.LambdaType, enum.Enum)
    if isinstance(value, fixed) or value is None:
        return True
    mujoco = _mujoco()
    if mujoco is not None and isinstance(value, mujoco.MjModel):
        return True
    name = type(value).__name__
    # Renderers are rebuilt on demand; training never renders.
    if "Renderer" in name or "Viewer" in name or type(value).__module__.split(".")[0] == "pygame":
        return True  # pygame: a window or font, made again when the env renders
    if isinstance(value, (list, tuple)) and all(_is_fixed(v) for v in value):
        return True
    if isinstance(value, dict) and all(_is_fixed(v) or encode(v) is not SKIP for v in value.values()):
        return True  # e.g. metadata holding a callable; its plain entries never change either
    return False


def _is_env(value: Any) -> bool:
    return isinstance(value, (gym.Env, gym.vector.VectorEnv, gym.Wrapper, gym.vector.VectorWrapper))


def _capture(obj: Any, path: str, problems: list[str],
             is_child: Callable[[Any], bool] = _is_env) -> dict[str, Any]:
    mujoco = _mujoco()
    attrs: dict[str, Any] = {}
    children: dict[str, Any] = {}
    for key, value in vars(obj).items():
        where = f"{path}.{key}"
        if is_child(value):
            children[key] = _capture(value, where, problems, is_child)
        elif isinstance(value, list) and value and all(is_child(v) for v in value):
            children[key] = [_capture(v, f"{where}[{i}]", problems, is_child) for i, v in enumerate(value)]
        elif mujoco is not None and isinstance(value, mujoco.MjData):
            model = getattr(obj, "model", None)
            if not isinstance(model, mujoco.MjModel):
                problems.append(f"{where} (MjData without its model)")
                continue
            spec = mujoco.mjtState.mjSTATE_INTEGRATION
            state = np.empty(mujoco.mj_stateSize(model, spec), dtype=np.float64)
            mujoco.mj_getState(model, value, state, spec)
            attrs[key] = {"__mujoco_state__": encode(state)}
        else:
            encoded = encode(value)
            if encoded is not SKIP:
                attrs[key] = encoded
            elif not _is_fixed(value):
                problems.append(f"{where} ({type(value).__name__})")
    return {"type": _kind(obj), "attrs": attrs, "children": children}


def capture_env_state(env: gym.vector.VectorEnv) -> tuple[dict[str, Any] | None, str | None]:
    """``(state, None)`` when the env's whole state was captured, else ``(None, reason)``.

    A vector env that knows its state cannot be captured says why in ``state_not_captured`` (EnvPool's
    lives in C++); its attributes are not walked."""
    why = getattr(env, "state_not_captured", None)
    if isinstance(why, str):
        return None, why
    if isinstance(env, gym.vector.AsyncVectorEnv):
        return None, "the envs run in worker processes (vectorization 'async')"
    problems: list[str] = []
    settle_checks(env)  # the first-answer proxies are not the env's: never in its saved state
    state = _capture(env, "env", problems)
    if problems:
        shown = ", ".join(problems[:3]) + (f" and {len(problems) - 3} more" if len(problems) > 3 else "")
        return None, f"these env attributes are not plain data: {shown}"
    return state, None


def _kind(obj: Any) -> str:
    """The env's class, as a checkpoint names it: its own, or the class whose state it keeps that it
    names as ``saved_as`` (ppokit's CartPole, a quicker step of Gymnasium's; read from the class
    itself, so a subclass of it goes by its own name)."""
    kind = vars(type(obj)).get("saved_as", type(obj))
    return f"{kind.__module__}.{kind.__qualname__}"


def _restore(obj: Any, state: dict[str, Any], path: str) -> None:
    kind = _kind(obj)
    if state.get("type") != kind:
        raise CheckpointError(f"saved env state at {path} is for {state.get('type')!r}, but the env is {kind!r}")
    for key, child in state.get("children", {}).items():
        value = getattr(obj, key, None)
        if isinstance(child, list):
            if not isinstance(value, list) or len(value) != len(child):
                raise CheckpointError(f"saved env state at {path}.{key} has {len(child)} envs; the env has "
                                      f"{len(value) if isinstance(value, list) else 'none'}")
            for i, (sub, sub_state) in enumerate(zip(value, child)):
                _restore(sub, sub_state, f"{path}.{key}[{i}]")
        else:
            if value is None:
                raise CheckpointError(f"saved env state has {path}.{key}, the env has not")
            _restore(value, child, f"{path}.{key}")
    for key, encoded in state.get("attrs", {}).items():
        if isinstance(encoded, dict) and "__mujoco_state__" in encoded:
            mujoco = _mujoco()
            if mujoco is None:
                raise CheckpointError(f"saved env state at {path}.{key} is MuJoCo's, but this env does not use MuJoCo")
            model, data = obj.model, getattr(obj, key)
            spec = mujoco.mjtState.mjSTATE_INTEGRATION
            saved = decode(encoded["__mujoco_state__"])
            if saved.shape != (mujoco.mj_stateSize(model, spec),):
                raise CheckpointError(f"saved MuJoCo state at {path}.{key} does not fit this model")
            mujoco.mj_setState(model, data, saved, spec)
        else:
            _set_plain(obj, key, encoded, path)


def _set_plain(obj: Any, key: str, encoded: Any, path: str) -> None:
    """Set attribute ``key`` to saved plain data. Saved data never goes where the env keeps code (a
    method, a class, a module): a resume.json can set plain values, which nothing calls, and nothing else."""
    current = getattr(obj, key, None)
    if callable(current) or isinstance(current, (types.ModuleType, spaces.Space)):
        raise CheckpointError(f"saved env state would replace {path}.{key}, a {type(current).__name__}, "
                              "with data; refused")
    setattr(obj, key, decode(encoded))


def restore_env_state(env: gym.vector.VectorEnv, state: dict[str, Any]) -> None:
    """Put a state from :func:`capture_env_state` back into an env built from the same config (which
    answered the Gymnasium API in the run that saved it: its first-answer checks are taken out)."""
    settle_checks(env)
    _restore(env, state, "env")


def _owners(root: Any, is_child: Callable[[Any], bool]) -> dict[int, tuple[Any, ...]]:
    """Each part's owning trail (attribute names and list indices from ``root``): the shortest path to it,
    breadth first, so a part several parts point to (an MPE landmark an agent has as its goal) is owned
    where it lives (``world.landmarks[2]``), and the others hold a reference."""
    owners: dict[int, tuple[Any, ...]] = {id(root): ()}
    queue: list[tuple[Any, tuple[Any, ...]]] = [(root, ())]
    while queue:
        obj, trail = queue.pop(0)
        for key, value in vars(obj).items():
            items = ([((key,), value)] if is_child(value) else
                     [((key, i), v) for i, v in enumerate(value)]
                     if isinstance(value, list) and value and all(is_child(v) for v in value) else [])
            for steps, part in items:
                if id(part) not in owners:
                    owners[id(part)] = trail + steps
                    queue.append((part, trail + steps))
    return owners


def _capture_owned(obj: Any, trail: tuple[Any, ...], path: str, problems: list[str], is_child: Callable[[Any], bool],
                   owners: dict[int, tuple[Any, ...]]) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    children: dict[str, Any] = {}
    refs: dict[str, Any] = {}

    def part(value: Any, steps: tuple[Any, ...], where: str) -> dict[str, Any]:
        if owners[id(value)] == trail + steps:
            return _capture_owned(value, trail + steps, where, problems, is_child, owners)
        return {"ref": list(owners[id(value)])}

    for key, value in vars(obj).items():
        where = f"{path}.{key}"
        if is_child(value):
            captured = part(value, (key,), where)
            (refs if "ref" in captured else children)[key] = captured
        elif isinstance(value, list) and value and all(is_child(v) for v in value):
            children[key] = [part(v, (key, i), f"{where}[{i}]") for i, v in enumerate(value)]
        else:
            encoded = encode(value)
            if encoded is not SKIP:
                attrs[key] = encoded
            elif not _is_fixed(value):
                problems.append(f"{where} ({type(value).__name__})")
    return {"type": _kind(obj), "attrs": attrs, "children": children, "refs": refs}


def _follow(root: Any, trail: list[Any], path: str) -> Any:
    obj = root
    for step in trail:
        try:
            obj = obj[step] if isinstance(step, int) and isinstance(obj, list) else getattr(obj, str(step))
        except (AttributeError, IndexError, TypeError):
            raise CheckpointError(f"saved env state at {path} refers to {trail}, which this env does not have") from None
    return obj


def _restore_owned(root: Any, obj: Any, state: dict[str, Any], path: str) -> None:
    kind = _kind(obj)
    if state.get("type") != kind:
        raise CheckpointError(f"saved env state at {path} is for {state.get('type')!r}, but the env is {kind!r}")
    for key, child in state.get("children", {}).items():
        value = getattr(obj, key, None)
        if isinstance(child, list):
            if not isinstance(value, list) or len(value) != len(child):
                raise CheckpointError(f"saved env state at {path}.{key} has {len(child)} parts; the env has "
                                      f"{len(value) if isinstance(value, list) else 'none'}")
            for i, sub_state in enumerate(child):
                if "ref" in sub_state:
                    value[i] = _follow(root, sub_state["ref"], f"{path}.{key}[{i}]")
                else:
                    _restore_owned(root, value[i], sub_state, f"{path}.{key}[{i}]")
        elif value is None or not hasattr(value, "__dict__"):
            raise CheckpointError(f"saved env state has {path}.{key}, the env has not")
        else:
            _restore_owned(root, value, child, f"{path}.{key}")
    for key, ref in state.get("refs", {}).items():
        setattr(obj, key, _follow(root, ref["ref"], f"{path}.{key}"))
    for key, encoded in state.get("attrs", {}).items():
        _set_plain(obj, key, encoded, path)


def capture_object_state(obj: Any, is_child: Callable[[Any], bool], name: str = "env") -> tuple[dict[str, Any] | None, str | None]:
    """:func:`capture_env_state` for envs of another API (PettingZoo's): ``is_child`` says which attribute
    values are parts of the env to walk into (the others must be plain data or fixed). A part that
    several parts point to is saved once, where it lives, and the others as references to it, so the
    restored env points where the saved one did."""
    problems: list[str] = []
    state = _capture_owned(obj, (), name, problems, is_child, _owners(obj, is_child))
    if problems:
        shown = ", ".join(problems[:3]) + (f" and {len(problems) - 3} more" if len(problems) > 3 else "")
        return None, f"these env attributes are not plain data: {shown}"
    return state, None


def restore_object_state(obj: Any, state: dict[str, Any], name: str = "env") -> None:
    """Put a state from :func:`capture_object_state` back into an env built the same way. References
    are followed only inside the env, and only to its own parts."""
    _restore_owned(obj, obj, state, name)
