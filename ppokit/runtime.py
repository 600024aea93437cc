"""The process-wide settings both front ends share: device, dtype, seeding, threads, and the rank.

One place, so that a control run and an RLHF run resolve ``device: auto`` the same way, seed the
same generators, and join a torch.distributed job (launched by ``torchrun``) the same way.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import random
from typing import Any

import numpy as np
import torch

from ppokit.core.collective import SINGLE, Collective
from ppokit.errors import ConfigError
from ppokit.lifetime import die_with_parent, parent_from_environment


def resolve_device(name: str, field: str = "device") -> torch.device:
    """``'auto'`` (CUDA when available, else the CPU), ``'cpu'``, ``'cuda'``, ``'cuda:N'`` or ``'mps'``.
    In a torchrun job, ``'cuda'`` is this process's GPU (``cuda:LOCAL_RANK``)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and launched_by_torchrun() and torch.cuda.is_available():
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"config field {field!r} = {name!r} is not a device ('auto', 'cpu', 'cuda', 'cuda:N')") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config field {field!r} = {name!r}: CUDA is not available on this machine")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``'auto'`` is bfloat16 on a GPU that supports it and float32 everywhere else."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's global and torch's generators (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, which a container or ``taskset`` narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def thread_count(requested: int) -> int:
    """The intra-op threads a process takes for the setting ``requested``: ``requested`` itself when
    it is above 0; for 0, in a job of N processes on this machine (torchrun), its share of the
    cores, ``max(1, cores // N)`` (torch's default, a thread per core in every process, would have N
    processes fight over each core; torchrun's ``OMP_NUM_THREADS=1`` would leave most cores idle);
    0 (torch's default) for a process on its own."""
    if requested > 0:
        return requested
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1) if launched_by_torchrun() else 1
    return max(1, usable_cores() // local) if local > 1 else 0


def set_threads(count: int) -> None:
    """torch's intra-op threads and NumPy's BLAS threads for the setting ``count`` (:func:`thread_count`);
    0 on a process of its own keeps both libraries' defaults."""
    threads = thread_count(count)
    if threads > 0:
        torch.set_num_threads(threads)
        limit_blas_threads(threads)


def limit_blas_threads(threads: int) -> None:
    """Hold the BLAS libraries loaded in this process (NumPy's OpenBLAS, MKL) to ``threads`` threads.

    torch's setting does not reach them, and the NumPy fast path (acting, the MLP update) multiplies
    small matrices: with a BLAS pool of a thread per core, every product wakes the pool and waits
    for it, and a busy core stalls it (BENCHMARKS.md, "PureJaxRL, phase by phase"). The limit is
    process-wide, as ``torch.set_num_threads`` is; without threadpoolctl it is left alone."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a dependency; kept optional for stripped installs
        return
    threadpool_limits(limits=threads, user_api="blas")


def setup(seed: int, device: str, threads: int) -> torch.device:
    """Threads, seeds and device for a run, in that order; returns the device."""
    set_threads(threads)
    seed_everything(seed)
    return resolve_device(device)


def launched_by_torchrun() -> bool:
    """Whether this process is one of a torchrun job's workers (torchrun sets these variables)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def rank_seed(seed: int, rank: int) -> int:
    """The seed of process ``rank`` of a run seeded ``seed``: ``seed`` itself on rank 0 (a one-process
    run is unchanged), and a well-separated stream for every other rank."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint32)[0])


def join_processes(device: torch.device, backend: str = "auto", timeout_s: float = 600.0,
                   settings: Any = None) -> Collective:
    """Join the torch.distributed job this process was launched into (one process when it was not).

    ``backend``: ``'auto'`` is NCCL for a CUDA device and gloo otherwise. ``timeout_s`` bounds how long
    a collective waits for a process that stopped answering before it fails. ``settings``: the run's
    config (a dataclass), which every process must share (:func:`agree_on_settings`). Every rank but
    0 logs only errors, so that warnings are printed once.
    """
    import torch.distributed as dist

    if not launched_by_torchrun():
        return SINGLE
    # A script under torchrun, too, must not train on after its launcher is gone.
    die_with_parent(parent_from_environment())
    if not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl" and device.type != "cuda":
            raise ConfigError(f"config field 'dist_backend' = 'nccl' needs a CUDA device, not {device}")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=device if backend == "nccl" else None)
    collective = Collective()
    if settings is not None:
        agree_on_settings(collective, settings)
    if not collective.is_main:
        logging.getLogger("ppokit").setLevel(logging.ERROR)
    return collective


def _fingerprint(value: Any) -> str:
    """``value`` as canonical JSON; an object that is not data stands for its type (its repr would
    name a memory address, which differs between processes)."""
    def plain(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return dataclasses.asdict(obj)
        return f"<{type(obj).__module__}.{type(obj).__qualname__}>"

    return json.dumps(value, sort_keys=True, default=plain)


def agree_on_settings(collective: Collective, settings: Any) -> None:
    """Refuse, on every process at once, a job whose processes were started with different configs or
    ppokit versions: they would train different models (or wait for each other until ``dist_timeout``
    when their loops differ in length) and write rank 0's config as the run's.

    Every field is compared: none may differ per process. Paths are compared as given, not resolved,
    since only rank 0 writes the run; ``device: auto`` is the same string on every rank, the device it
    picks (the rank's own GPU) is not part of the config."""
    from ppokit._version import __version__

    if not collective.active:
        return
    mine = {"ppokit version": __version__,
            **{f.name: _fingerprint(getattr(settings, f.name)) for f in dataclasses.fields(settings)}}
    everyone = collective.gather_objects(mine)
    first = everyone[0]
    differ: dict[str, str] = {}
    for rank, theirs in enumerate(everyone[1:], start=1):
        for name in [n for n in first if first[n] != theirs.get(n)] + [n for n in theirs if n not in first]:
            differ.setdefault(name, f"{name} = {_short(first.get(name))} on process 0 but {_short(theirs.get(name))} "
                                    f"on process {rank}")
    if differ:
        shown = "; ".join(list(differ.values())[:3]) + (f" (and {len(differ) - 3} more)" if len(differ) > 3 else "")
        raise ConfigError(f"the {collective.world_size} processes of this job were started with different settings: "
                          f"{shown}; start every process with the same config and the same ppokit")


def _short(text: str | None, limit: int = 60) -> str:
    if text is None:
        return "nothing"
    return text if len(text) <= limit else text[: limit - 3] + "..."
