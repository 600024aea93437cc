"""Reward functions: a Python callable (given, or named ``'module:function'``) as a reward source.

A slow callable can run concurrently: with ``workers > 1`` each batch is split into ``workers``
contiguous chunks, called at once in threads (or, for a ``'module:function'``, in worker processes),
and the scores are joined in order. Every call has a ``timeout``.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ppokit.errors import ConfigError, TrainingError
from ppokit.imports import import_user_module
from ppokit.lifetime import die_with_parent
from ppokit.urls import url_scheme

RewardFn = Callable[[list[str], list[str]], Sequence[float]]
RewardPool = Literal["thread", "process"]


def real_numbers(values: Any, source: str) -> list[float]:
    """``values`` as floats when it is a sequence (list, tuple, 1-D array or tensor) of real numbers
    (ints, floats, NumPy or torch scalars); anything else, a dict or a string among them, is an error
    naming ``source`` and the offending type rather than something quietly coerced."""
    if isinstance(values, (np.ndarray, Tensor)):
        if isinstance(values, np.ndarray):
            real = values.dtype.kind in "iuf"
        else:
            real = values.dtype != torch.bool and not values.is_complex()
        if values.ndim != 1 or not real:
            raise TrainingError(f"{source} must return a 1-D sequence of real numbers, got a {values.ndim}-D "
                                f"{type(values).__name__} of {values.dtype}")
        return [float(v) for v in values.tolist()]
    if not isinstance(values, (list, tuple)):
        raise TrainingError(f"{source} must return a list of numbers, got {type(values).__name__}")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, (Tensor, np.ndarray)) and v.ndim == 0:
            v = v.item()
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TrainingError(f"{source} returned a {type(v).__name__} ({v!r:.40}) at position {i}; scores must be "
                                "real numbers (int, float, or a NumPy/torch scalar)")
        out.append(float(v))
    return out


class CallableReward:
    """A Python function ``fn(prompts, completions) -> list[float]``, given directly or as
    ``'module:function'`` (the module is imported; a file path is not executed).

    ``workers > 1`` splits each batch into that many contiguous chunks and calls them concurrently:
    in threads (``pool='thread'``; pays for functions that wait: on a server, a subprocess, I/O) or
    in worker processes (``pool='process'``; pays for pure-Python work, which threads serialise on the
    GIL; a ``'module:function'`` only, since each worker imports the function by name). The scores are
    joined in the batch's order.

    ``timeout``: seconds each call may take; a call that takes longer stops training with a
    :class:`~ppokit.errors.TrainingError`. A thread cannot be killed, so a timed-out thread is
    abandoned: it runs on in the background and its result is ignored. Timed-out worker processes
    are terminated. With one worker and no timeout the function is called in the caller's thread;
    with a timeout, the same call (the whole batch, in order) runs in a thread of its own.
    """

    def __init__(self, fn: RewardFn | str, *, workers: int = 1, timeout: float | None = None,
                 pool: RewardPool = "thread") -> None:
        #: The 'module:function' the function came from; None for a Python object.
        self.spec = fn if isinstance(fn, str) else None
        if isinstance(fn, str):
            self.name = fn
            fn = import_callable(fn)
        else:
            self.name = getattr(fn, "__qualname__", repr(fn))
        self.fn = fn
        if workers < 1 or (timeout is not None and not timeout > 0) or pool not in ("thread", "process"):
            raise ConfigError(f"reward function {self.name}: workers must be at least 1, timeout positive (or None) "
                              f"and pool 'thread' or 'process' (got {workers}, {timeout}, {pool!r})")
        if pool == "process" and self.spec is None:
            raise ConfigError(f"reward function {self.name}: reward_pool: process needs the function as a "
                              "'module:function' string (each worker process imports it by name); a function "
                              "given as a Python object can run concurrently with reward_pool: thread")
        self.workers = workers
        self.timeout = timeout
        self.pool = pool
        self._processes: Any = None  # the worker processes (pool='process'), started at the first call

    def __call__(self, prompts: list[str], completions: list[str]) -> Tensor:
        prompts, completions = list(prompts), list(completions)
        if self.pool == "process":
            chunks = split_batch(prompts, completions, self.workers)
            results = self._in_processes(chunks)
        elif self.workers == 1 and self.timeout is None:
            chunks = [(prompts, completions)]
            results = [self._call(prompts, completions)]
        else:
            chunks = split_batch(prompts, completions, self.workers)
            results = self._in_threads(chunks)
        values: list[float] = []
        for (_, chunk), result in zip(chunks, results):
            values += self._checked(result, len(chunk), offset=len(values))
        return torch.tensor(values, dtype=torch.float32)

    def _call(self, prompts: list[str], completions: list[str]) -> Any:
        try:
            return self.fn(prompts, completions)
        except Exception as err:  # noqa: BLE001 - the user's code; report it with its name
            raise TrainingError(f"reward function {self.name} raised {type(err).__name__}: {err}") from err

    def _checked(self, values: Any, count: int, offset: int) -> list[float]:
        """What one call returned, as ``count`` finite floats, or a TrainingError naming the function."""
        values = real_numbers(values, f"reward function {self.name}")
        if len(values) != count:
            raise TrainingError(f"reward function {self.name} returned {len(values)} scores for {count} completions")
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            raise TrainingError(f"reward function {self.name} returned a non-finite score ({values[bad[0]]}) "
                                f"for completion {offset + bad[0]}")
        return values

    def _too_slow(self, index: int, chunks: Sequence[tuple[list[str], list[str]]], fate: str) -> TrainingError:
        where = f" on chunk {index + 1} of {len(chunks)} ({len(chunks[index][1])} completions)" if len(chunks) > 1 else ""
        return TrainingError(f"reward function {self.name} did not return within reward_timeout = {self.timeout:g} s"
                             f"{where}; {fate}. Raise reward_timeout, or split the work over more reward_workers")

    def _in_threads(self, chunks: Sequence[tuple[list[str], list[str]]]) -> list[Any]:
        """Each chunk's call in a thread of its own, all at once, each given ``timeout`` seconds."""
        # Threads start without the caller's autograd mode; a function that runs a torch model
        # should not start recording graphs because it was moved off the caller's thread.
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
        boxes: list[dict[str, Any]] = [{} for _ in chunks]

        def run(box: dict[str, Any], prompts: list[str], completions: list[str]) -> None:
            try:
                with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                    box["values"] = self.fn(prompts, completions)
            except BaseException as err:  # noqa: BLE001 - reported by the caller's thread
                box["error"] = err

        # Daemon threads: one abandoned after a timeout must not keep the interpreter from exiting.
        threads = [threading.Thread(target=run, args=(box, p, c), name=f"ppokit-reward-{i}", daemon=True)
                   for i, (box, (p, c)) in enumerate(zip(boxes, chunks))]
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        for i, (thread, box) in enumerate(zip(threads, boxes)):
            if thread.is_alive():
                raise self._too_slow(i, chunks, "its thread cannot be stopped and is abandoned (it runs on in the "
                                     "background; its result will be ignored)")
            if "error" in box:
                err = box["error"]
                raise TrainingError(f"reward function {self.name} raised {type(err).__name__}: {err}") from err
        return [box["values"] for box in boxes]

    def _in_processes(self, chunks: Sequence[tuple[list[str], list[str]]]) -> list[Any]:
        """Each chunk's call in a worker process, all at once, each given ``timeout`` seconds."""
        processes = self._process_pool()
        pending = [processes.apply_async(_call_in_worker, chunk) for chunk in chunks]
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        results = []
        for i, result in enumerate(pending):
            try:
                results.append(result.get(None if deadline is None else max(0.0, deadline - time.monotonic())))
            except multiprocessing.TimeoutError:
                self.close()
                raise self._too_slow(i, chunks, "its worker processes were stopped") from None
            except Exception as err:  # noqa: BLE001 - the user's code, raised in the worker
                raise TrainingError(f"reward function {self.name} raised {type(err).__name__}: {err}") from err
        return results

    def _process_pool(self) -> Any:
        """The worker processes, started (spawned: safe with threads and CUDA in this one) at the first call.
        Starting them and importing the function is not counted against ``timeout``."""
        if self._processes is None:
            processes = multiprocessing.get_context("spawn").Pool(self.workers, _load_in_worker,
                                                                   (self.spec, os.getpid()))
            try:
                problems = processes.map_async(_worker_problem, range(self.workers), chunksize=1).get(
                    max(WORKER_START_S, self.timeout or 0.0))
            except multiprocessing.TimeoutError:
                processes.terminate()
                raise TrainingError(f"reward function {self.name}: its {self.workers} worker processes did not start "
                                    f"within {max(WORKER_START_S, self.timeout or 0.0):g} s") from None
            problem = next((p for p in problems if p), None)
            if problem is not None:
                processes.terminate()
                raise ConfigError(f"reward {self.spec!r}: a worker process could not load it: {problem}")
            self._processes = processes
        return self._processes

    def close(self) -> None:
        """Stop the worker processes, if any (they are started again when needed)."""
        if self._processes is not None:
            self._processes.terminate()
            self._processes.join()
            self._processes = None


#: Seconds worker processes get to start and import the reward function.
WORKER_START_S = 120.0
_worker_fn: Any = None
_worker_error = ""


def _load_in_worker(spec: str, parent: int) -> None:
    """A worker process's start: stop with the trainer (a pool's workers otherwise outlive a killed
    parent, waiting on their queue for ever), then import the function once. A failure is kept and
    reported, not raised (an initializer that raises makes multiprocessing start the worker again,
    forever). The parent may have started the pool from a thread that ends: the watchdog alone."""
    global _worker_fn, _worker_error
    die_with_parent(parent, kernel=False)
    try:
        _worker_fn = import_callable(spec)
    except Exception as err:  # noqa: BLE001 - sent back to the parent as text
        _worker_error = str(err)


def _worker_problem(_: int) -> str:
    return _worker_error


def _call_in_worker(prompts: list[str], completions: list[str]) -> Any:
    if _worker_fn is None:
        raise RuntimeError(_worker_error or "the reward function was not loaded")
    return _worker_fn(prompts, completions)


def split_batch(prompts: list[str], completions: list[str], parts: int) -> list[tuple[list[str], list[str]]]:
    """``min(parts, n)`` contiguous chunks of the batch whose sizes differ by at most one (an empty
    batch is one empty chunk)."""
    count = max(1, min(parts, len(completions)))
    size, extra = divmod(len(completions), count)
    chunks, start = [], 0
    for i in range(count):
        end = start + size + (i < extra)
        chunks.append((prompts[start:end], completions[start:end]))
        start = end
    return chunks


def reward_import(spec: object) -> str | None:
    """The module that building the reward source ``spec`` would import (a ``'module:function'``
    string that is not an existing path); None for a reward-model directory, a URL (a reward server
    is called, not imported: resuming may call it) or a Python object."""
    # Any scheme:// (ftp://, file://) is a URL, never a module: build_reward refuses the schemes it cannot call.
    if isinstance(spec, str) and ":" in spec and url_scheme(spec) is None and not Path(spec).exists():
        return spec.partition(":")[0] or spec
    return None


def import_callable(spec: str) -> RewardFn:
    """``'package.module:function'`` → the function, with a clear error for each way it can fail."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"reward {spec!r}: expected 'module:function'")
    try:
        module = import_user_module(module_name)  # the working directory too: a rules.py beside the data
    except ImportError as err:
        raise ConfigError(f"reward {spec!r}: cannot import module {module_name!r}: {err}") from None
    fn: Any = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ConfigError(f"reward {spec!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ConfigError(f"reward {spec!r}: {attr!r} is not callable")
    return fn
