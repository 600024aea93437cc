"""Reference torch-batched envs: classic-control physics for thousands of envs at once, on any device.

They follow :class:`ppokit.control.envs.torch_env.TorchVecEnv` (tensors in, tensors out, same-step
autoreset) and exist for ppokit's tests and benchmarks, and as a model for adapting a GPU simulator.
They import torch and Gymnasium's spaces and nothing of ppokit, so a benchmark's anchor library can
step the very same env.

- :class:`~ppokit.envs.torch_cartpole.TorchCartPole`: CartPole-v1 (Discrete(2)), 500-step limit;
- :class:`~ppokit.envs.torch_pendulum.TorchPendulum`: Pendulum-v1 (Box(1)), 200-step limit.

And one NumPy env, which ``CartPole-v0``/``-v1`` runs use without being asked:
:class:`~ppokit.envs.cartpole_vector.CartPoleVectorEnv`, Gymnasium's batched CartPole with the same
results, bit for bit, from a step that costs less for a few envs.
"""
