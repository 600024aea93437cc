"""``ppokit tune``: an Optuna study over PPO hyperparameters (needs ``pip install 'ppokit[tune]'``).

- :mod:`ppokit.tune.space`: the search space, its YAML form and its checks;
- :mod:`ppokit.tune.study`: the settings, one trial (train, evaluate, report, prune), worker processes;
- :mod:`ppokit.tune.sweep`: :func:`~ppokit.tune.sweep.tune` (run or resume a study) and its outputs;
- :mod:`ppokit.tune.cli`: the ``tune`` subcommand.

Importing this package imports neither torch, gymnasium nor Optuna, so ``ppokit --help`` stays fast.
"""

from ppokit.tune.cli import add_parser, run

__all__ = ["add_parser", "run"]
