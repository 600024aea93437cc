"""Time-to-solve tasks: the threshold, ppokit's preset and the RL Zoo's tuned SB3 settings.

The RL Zoo numbers are those of rl-baselines3-zoo's ``hyperparams/ppo.yml`` (rl_zoo3 2.9.2) for each
env; ``lin_X`` there means a value annealed linearly from X to 0, written here as
``("linear", X)``. Plain data, read by both sides.
"""

TASKS = {
    "cartpole": {
        "env_id": "CartPole-v1", "threshold": 475.0,
        "rl_zoo": {"n_envs": 8, "n_timesteps": 100_000, "n_steps": 32, "batch_size": 256, "gae_lambda": 0.8,
                   "gamma": 0.98, "n_epochs": 20, "ent_coef": 0.0, "learning_rate": ("linear", 1e-3),
                   "clip_range": ("linear", 0.2)},
    },
    "pendulum": {
        "env_id": "Pendulum-v1", "threshold": -200.0,
        "rl_zoo": {"n_envs": 4, "n_timesteps": 100_000, "n_steps": 1024, "gae_lambda": 0.95, "gamma": 0.9,
                   "n_epochs": 10, "ent_coef": 0.0, "learning_rate": 1e-3, "clip_range": 0.2,
                   "use_sde": True, "sde_sample_freq": 4},
    },
    "acrobot": {
        "env_id": "Acrobot-v1", "threshold": -100.0,
        "rl_zoo": {"normalize": True, "n_envs": 16, "n_timesteps": 1_000_000, "n_steps": 256, "gae_lambda": 0.94,
                   "gamma": 0.99, "n_epochs": 4, "ent_coef": 0.0},
    },
}

#: rl_zoo3 train.py's defaults: evaluate every 25,000 steps (divided among the envs), deterministically.
RL_ZOO_EVAL_FREQ = 25_000
#: The issue's definition of solved: the mean of a deterministic 20-episode evaluation.
EVAL_EPISODES = 20
