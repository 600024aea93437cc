"""``--nproc N``: run this same command as N processes on this machine, with torchrun's own launcher.

``ppokit train … --nproc 2`` is ``torchrun --standalone --nproc_per_node 2 -m ppokit train …``: the
processes start in their own sessions, join one torch.distributed job through a rendezvous on
localhost, and train data-parallel. Each process runs the ppokit this command imported (by its
path, with the working directory kept off ``sys.path``, so a ``ppokit/`` folder where the command is
run never stands in for it), and dies with this command (:mod:`ppokit.lifetime`): a SIGKILL of the
launcher leaves no process training or holding the run's lock. When one of them fails the launcher stops the others and this
command ends with that process's exit code (its one-line error is printed above, by the process
itself). Ctrl-C or SIGTERM to this command reaches every process once: they finish the current
update together, rank 0 saves a checkpoint, and they stop.

For several machines, run ``torchrun`` yourself on each (docs/how-to/distributed.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

from ppokit.errors import ConfigError
from ppokit.lifetime import PARENT_ENV

#: Exit codes of a process stopped by a signal after saving its checkpoint (ppokit.io.interrupt).
INTERRUPTED = (130, 143)


def add_nproc_flag(parser: argparse.ArgumentParser) -> None:
    def count(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of processes (1 or more)")
        return int(text)

    parser.add_argument("--nproc", type=count, default=1, metavar="N",
                        help="train data-parallel in N processes on this machine (torchrun --standalone; "
                             "gloo on a CPU, NCCL on GPUs); see docs/how-to/distributed.md")


def max_processes() -> int:
    """The most processes ``--nproc`` starts: the CPU cores this process may use. Each process needs
    a core of its own to step its envs (on GPUs, too), and more only fight over them."""
    from ppokit.runtime import usable_cores

    return usable_cores()


def check_nproc(nproc: int, seeds: str | None = None) -> None:
    """Refuse, before any process starts, an ``--nproc`` that cannot work (one line each)."""
    if seeds is not None:
        raise ConfigError(f"--nproc {nproc} and --seeds {seeds}: --seeds trains several runs in one process and "
                          "--nproc one run in several processes; give one of them")
    limit = max_processes()
    if nproc > limit:
        raise ConfigError(f"--nproc {nproc}: this machine gives ppokit {limit} CPU core{'s' * (limit != 1)}, and "
                          f"each process needs one; use --nproc {limit} or fewer (for more processes across "
                          "machines, run torchrun on each: docs/how-to/distributed.md)")


#: What each process runs: ``ppokit.cli.main`` with this launcher's ``sys.path`` (so it imports what
#: the launcher can, env modules included), this launcher's ppokit first, and no entry that means
#: "the working directory" ("" that ``-c`` and ``-m`` put first). ``-P`` (Python 3.11) keeps the
#: working directory off the path while the interpreter starts; ``os`` and ``sys`` are loaded by
#: then, so nothing is imported from it before the path is set, on 3.10 too.
_WORKER_CODE = (
    "import os, sys\n"
    "sys.path[:] = sys.argv.pop(1).split(os.pathsep)\n"
    "from ppokit.cli.main import main\n"
    "sys.exit(main())\n"
)


def worker_command(argv: Sequence[str]) -> list[str]:
    """The interpreter arguments that run ``ppokit ARGV`` (less ``--nproc``) as one of the processes."""
    root = str(Path(__file__).resolve().parent.parent)  # the folder holding this ppokit package
    path = [root, *(p for p in sys.path if p and p != root)]
    safe = ["-P"] if sys.version_info >= (3, 11) else []
    return [*safe, "-c", _WORKER_CODE, os.pathsep.join(path), *strip_nproc(argv)]


def in_worker() -> bool:
    """Whether this process is already one of a torchrun job's (so ``--nproc`` was handled)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


#: The exit code of a process that stopped only because another one did: the launcher names the
#: other one (the cause) when both are among the failures it saw.
EXIT_LOST_CONTACT = 75

#: What gloo's transport says when the process at the other end of a connection is gone; it raises
#: a plain RuntimeError for it, not one of torch.distributed's own errors.
_PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe")


def lost_contact(err: BaseException) -> str | None:
    """A one-line message when ``err`` is torch.distributed failing because another process stopped."""
    dist = sys.modules.get("torch.distributed")
    if dist is None:
        return None
    peer_gone = isinstance(err, RuntimeError) and "gloo" in str(err) and any(s in str(err) for s in _PEER_GONE)
    if not (peer_gone or isinstance(err, getattr(dist, "DistError", ()))):
        return None
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return (f"process {os.environ.get('RANK', '?')}: lost contact with the other processes of the job ({first}); "
            "another process failed or was stopped: its error says why")


def leave_processes() -> None:
    """Leave the torch.distributed job this process joined, if any, once every process got here.

    The pause after the barrier lets gloo's worker threads finish releasing the tensors of the last
    operations: with torch 2.13, once ``torch._dynamo`` is loaded, ``destroy_process_group`` no longer
    stops them, and one still holding a Python-made tensor at interpreter exit aborts the process
    ("terminate called without an active exception") now and then: 5 of 72 two-process jobs before
    the pause, 0 of 70 with it."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        import time

        dist.barrier()
        time.sleep(0.05)
        dist.destroy_process_group()


def strip_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without its ``--nproc N`` (or ``--nproc=N``)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def relaunch(argv: Sequence[str], nproc: int) -> int:
    """Run ``ppokit ARGV`` (less ``--nproc``) as ``nproc`` processes (:func:`worker_command`); the exit
    code. :func:`check_nproc` first."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if "OMP_NUM_THREADS" not in os.environ:
        # Each process's torch would otherwise start a thread per core and they would fight over them.
        os.environ["OMP_NUM_THREADS"] = str(max(1, max_processes() // nproc))
    os.environ[PARENT_ENV] = str(os.getpid())  # the workers die with this process (ppokit.lifetime)
    for name in ("torch.distributed.elastic", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # the processes report their own errors
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    try:
        elastic_launch(config, entrypoint=sys.executable)(*worker_command(argv))
    except ChildFailedError as err:
        # Name the process that failed: not one that lost contact with it, nor one the launcher stopped.
        rank, failure = min(err.failures.items(), key=lambda item: (
            item[1].exitcode in (EXIT_LOST_CONTACT, -int(signal.SIGTERM)), item[1].timestamp, item[0]))
        codes = {f.exitcode for f in err.failures.values()}
        if codes <= set(INTERRUPTED):
            return max(codes)
        print(f"ppokit: error: process {rank} of {nproc} failed (exit code {failure.exitcode}); its error is above, "
              "and the launcher stopped the others", file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    except SignalException as err:
        # The launcher passed the signal to every process; they saved a checkpoint and stopped.
        return 128 + int(err.sigval)
    return 0
