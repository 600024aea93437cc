"""Code that leaves a trace: importing this module, or calling its functions, appends a line to the
file named by PPOKIT_TRACE. The trust tests name it inside saved files and check it never ran."""

import os
from pathlib import Path


def _trace(what: str) -> None:
    path = os.environ.get("PPOKIT_TRACE")
    if path:
        with Path(path).open("a", encoding="utf-8") as f:
            f.write(what + "\n")


_trace("imported")


def make_env(**kwargs):
    _trace("env made")
    import gymnasium as gym

    return gym.make("CartPole-v1")


def reward(prompts, completions):
    _trace("reward called")
    return [0.0] * len(completions)


def make_parallel_env(**kwargs):
    _trace("parallel env made")
    from tests.multiagent.envs import leaky

    return leaky(**kwargs)
