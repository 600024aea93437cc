"""The defaults sweep's suite: public tasks of each kind, with the budgets people train them for.

Plain data only, so the SB3 anchor (run in .venv-bench, without ppokit) reads the same list.
"""

#: env id -> env steps per run. Classic control at 100k-200k, Box2D and MuJoCo at 300k: the lower
#: half of the 100k-1M range people use, so three seeds of seven tasks on both sides fit in under an
#: hour on two cores (SB3's defaults run at about a thousand steps/s here).
SUITE = {
    "CartPole-v1": 100_000,
    "Acrobot-v1": 100_000,
    "MountainCarContinuous-v0": 100_000,
    "Pendulum-v1": 200_000,
    "LunarLander-v3": 300_000,
    "HalfCheetah-v5": 300_000,
    "Hopper-v5": 300_000,
}

#: Tasks kept out of the sweep: the defaults were chosen without seeing them, and checked on them
#: afterwards (``defaults_vs_sb3.py --suite held-out``), since users bring envs that no sweep saw.
HELD_OUT = {
    "MountainCar-v0": 100_000,
    "InvertedDoublePendulum-v5": 100_000,
    "Reacher-v5": 100_000,
    "BipedalWalker-v3": 300_000,
    "Walker2d-v5": 300_000,
}

#: Episodes of the final, deterministic evaluation on a fresh env (both sides).
EVAL_EPISODES = 10


def parse_run_args(description: str):  # noqa: ANN201 - an argparse.Namespace
    """``--env``, ``--steps``, ``--seed`` and repeated ``--set key=value`` of a single-run script."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--env", choices=sorted({**SUITE, **HELD_OUT}), required=True)
    parser.add_argument("--steps", type=int, help="env steps (default: the suite's budget for --env)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="ppokit only: a config field to change from the default (a sweep candidate)")
    args = parser.parse_args()
    args.steps = args.steps or {**SUITE, **HELD_OUT}[args.env]
    return args
