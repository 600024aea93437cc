"""The ``ppokit`` command line: thin layers that parse arguments and call the library.

- :mod:`~ppokit.cli.main`: the parser, the control commands (train, eval, resume, export, plot, info,
  presets) and the one-line errors;
- :mod:`~ppokit.cli.train_config`: how ``ppokit train`` resolves its config from the preset, a file, the
  flags and ``--set``;
- :mod:`~ppokit.cli.rlhf`: ``ppokit rlhf`` (sft, reward, ppo, serve-reward, demo);
- :mod:`~ppokit.cli.tune`: ``ppokit tune``.
"""
