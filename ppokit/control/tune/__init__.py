"""``ppokit tune``: an Optuna study over PPO hyperparameters (needs ``pip install 'ppokit[tune]'``).

- :mod:`ppokit.control.tune.space`: the search space, its YAML form and its checks;
- :mod:`ppokit.control.tune.study`: the settings, one trial (train, evaluate, report, prune), worker processes;
- :mod:`ppokit.control.tune.sweep`: :func:`~ppokit.control.tune.sweep.tune` (run or resume a study) and its outputs;
- :mod:`ppokit.cli.tune`: the ``tune`` subcommand.

Importing this package imports neither torch, gymnasium nor Optuna, so ``ppokit --help`` stays fast.
"""
