"""Where a ``ppokit train`` run's time goes: the CLI run in process, with timers around its phases.

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/phase_times.py train CartPole-v1 \\
        --preset CartPole-v1-cleanrl --no-progress --set tensorboard=false --set eval_episodes=0 \\
        --run-dir /tmp/phases --overwrite

The arguments are ``ppokit``'s. Printed, in seconds: the imports, the collector (``collect``; inside
it ``advance``, and inside that the env's ``step``), the update (inside it ``make_batch`` and
``run_epochs``; inside that the fast path's minibatch ``forward``/``backward`` and FlatAdam's clip and
step) and the whole ``main()``. Each timer adds ~0.5 µs per call, so the totals run a little over a
plain run's. The last line is the same as JSON (``benchmarks/purejaxrl_phases.py`` reads it). To compare two commits, run this script from each (``PYTHONPATH`` at a worktree of the
other) alternately on one core; one run's numbers alone say little on a shared machine.
"""

from __future__ import annotations

import collections
import json
import sys
import time
from collections.abc import Callable
from typing import Any

TIMES: dict[str, float] = collections.defaultdict(float)
CALLS: dict[str, int] = collections.defaultdict(int)


def timed(owner: Any, name: str, key: str) -> None:
    """Replace ``owner.name`` by a wrapper that adds its wall time to ``TIMES[key]`` and its calls to
    ``CALLS[key]`` (``distributed_profile.py`` uses it too)."""
    inner: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            TIMES[key] += time.perf_counter() - start
            CALLS[key] += 1

    setattr(owner, name, wrapper)


def main(argv: list[str]) -> None:
    start = time.perf_counter()
    import ppokit.control.algorithm as algorithm
    import ppokit.control.fast.flat_adam as flat_adam
    import ppokit.control.fast.update as fast_update
    import ppokit.control.rollout.host as rollout
    from ppokit.cli.main import main as cli_main

    TIMES["import"] = time.perf_counter() - start
    timed(rollout.RolloutCollector, "collect", "collect")
    # PPO.update runs GAE (PPOAlgorithm.batch), then the K epochs (PPOAlgorithm.train): both are "update".
    timed(algorithm.PPOAlgorithm, "batch", "update")
    timed(algorithm.PPOAlgorithm, "train", "update")
    timed(algorithm, "run_epochs", "  run_epochs")
    timed(algorithm, "make_batch", "  make_batch")
    timed(fast_update.NumpyMinibatchStep, "forward", "    minibatch forward")
    timed(fast_update.NumpyMinibatchStep, "backward", "    minibatch backward")
    timed(flat_adam.FlatAdam, "clip_grad_norm", "    clip")
    timed(flat_adam.FlatAdam, "step", "    Adam step")
    advance = rollout.RolloutCollector.advance

    def advance_timing_the_env(self: Any, *args: Any) -> None:
        if not getattr(self.env, "_phase_timed", False):
            timed(self.env, "step", "    env step")
            self.env._phase_timed = True
        advance(self, *args)

    rollout.RolloutCollector.advance = advance_timing_the_env  # type: ignore[method-assign]
    timed(rollout.RolloutCollector, "advance", "  advance")
    start = time.perf_counter()
    try:
        cli_main(argv)
    except SystemExit:
        pass
    TIMES["main"] = time.perf_counter() - start
    for key in ("import", "collect", "  advance", "    env step", "update", "  make_batch", "  run_epochs",
                "    minibatch forward", "    minibatch backward", "    clip", "    Adam step", "main"):
        print(f"{key:24s} {TIMES.get(key, 0.0):7.3f}")
    print(json.dumps({"times": {k.strip(): v for k, v in TIMES.items()}, "calls": {k.strip(): n for k, n in CALLS.items()}}))


if __name__ == "__main__":
    main(sys.argv[1:])
