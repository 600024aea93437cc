"""Where a data-parallel ``ppokit train`` run's time goes: each process's phases and its collectives.

    PYTHONPATH=. .venv/bin/python benchmarks/distributed_profile.py --nproc 2 -- train CartPole-v1 \\
        --total-steps 20480 --no-progress --set num_envs_scope=global --set eval_episodes=0 \\
        --set tensorboard=false --set checkpoint_minutes=0 --run-dir /tmp/dp-profile --overwrite

The arguments after ``--`` are ``ppokit``'s (without ``--nproc``). With ``--nproc N`` above 1 the
script starts itself as N processes through torchrun (``OMP_NUM_THREADS`` as ``--nproc`` sets it),
and each runs the command in process with timers around its phases. Each process prints one JSON
line, per update (means over the run's updates): the seconds in ``collect`` (env steps and acting),
in the update (``update``, and inside it ``run_epochs``), and of its collectives: ``calls``,
``bytes`` sent, ``seconds`` inside them (waiting for the slowest process included), and the same
split by operation (``mean_flat_``: the gradient with the loss and KL; ``moments_of_parts``: an
epoch's whitening moments; ``gather_rows``: normalisers and moments; ``sum_floats``: episode
figures, diagnostics...). An operation that calls another is counted in both. One run's numbers on
a shared machine say little: compare runs made side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from phase_times import CALLS, TIMES, timed  # noqa: E402  (one timer for both profiles)

ARGV_ENV = "PPOKIT_PROFILE_ARGV"


def worker(argv: list[str]) -> None:
    import torch

    import ppokit.control.algorithm as algorithm
    import ppokit.control.rollout.host as rollout
    import ppokit.runtime as runtime
    from ppokit.cli.main import main as cli_main
    from ppokit.core.collective import Collective

    timed(rollout.RolloutCollector, "collect", "collect")
    timed(algorithm.PPOAlgorithm, "train", "update")  # an update's K epochs, from PPO.update
    timed(algorithm, "run_epochs", "run_epochs")
    for op in ("mean_flat_", "moments_of_parts", "gather_rows", "sum_floats", "mean_", "gather_objects",
               "broadcast_object", "broadcast_tensors_", "barrier"):
        timed(Collective, op, f"collective.{op}")
    joined: list[Collective] = []
    join = runtime.join_processes

    def keep(*args: Any, **kwargs: Any) -> Collective:
        joined.append(join(*args, **kwargs))
        return joined[-1]

    runtime.join_processes = keep  # type: ignore[assignment]
    start = time.perf_counter()
    code = cli_main(argv)
    wall = time.perf_counter() - start
    updates = max(CALLS["update"], 1)
    traffic = joined[-1].traffic if joined else None
    row: dict[str, Any] = {
        "rank": int(os.environ.get("RANK", 0)), "exit_code": code, "wall_s": round(wall, 3), "updates": CALLS["update"],
        "threads": torch.get_num_threads(),
        "per_update": {
            "collect_s": TIMES["collect"] / updates, "update_s": TIMES["update"] / updates,
            "run_epochs_s": TIMES["run_epochs"] / updates,
            "collective_calls": traffic.calls / updates if traffic else 0.0,
            "collective_bytes": traffic.bytes / updates if traffic else 0.0,
            "collective_s": traffic.seconds / updates if traffic else 0.0,
            "by_operation": {key.split(".", 1)[1]: {"calls": CALLS[key] / updates, "s": TIMES[key] / updates}
                             for key in sorted(TIMES) if key.startswith("collective.")},
        },
    }
    sys.stdout.flush()
    os.write(1, (json.dumps(row) + "\n").encode())  # one write: the processes share the launcher's stdout


def main() -> None:
    if ARGV_ENV in os.environ:  # one of the processes
        worker(json.loads(os.environ[ARGV_ENV]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("ppokit_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    argv = args.ppokit_args[1:] if args.ppokit_args[:1] == ["--"] else args.ppokit_args
    if args.nproc == 1:
        worker(argv)
        return
    from ppokit.launch import max_processes

    # The command travels to the processes in the environment: torchrun would read ppokit's
    # options after the script as its own where a prefix matches (--nproc for --nproc-per-node).
    env = {**os.environ, ARGV_ENV: json.dumps(argv)}
    env.setdefault("OMP_NUM_THREADS", str(max(1, max_processes() // args.nproc)))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc),
               __file__]
    sys.exit(subprocess.run(command, env=env).returncode)


if __name__ == "__main__":
    main()
