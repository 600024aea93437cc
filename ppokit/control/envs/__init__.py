"""Where a control run's environments come from and how they are read.

- :mod:`~ppokit.control.envs.make`: vector envs from Gymnasium ids and ``module:Env`` ids;
- :mod:`~ppokit.control.envs.source`: ids or env objects given in code, and the consent check;
- :mod:`~ppokit.control.envs.torch_env`, :mod:`~ppokit.control.envs.torch_source`: torch-batched (GPU) envs;
- :mod:`~ppokit.control.envs.envpool_env`, :mod:`~ppokit.control.envs.atari`: EnvPool and Atari;
- :mod:`~ppokit.control.envs.observations`: Dict/Tuple/Discrete observations, masks, the critic's view;
- :mod:`~ppokit.control.envs.spaces`: spaces as JSON; :mod:`~ppokit.control.envs.state`: env state for resume.
"""
