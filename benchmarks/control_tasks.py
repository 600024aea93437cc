"""The control benchmark tasks: one set of hyperparameters per task, read by both sides.

Plain data only, so the SB3 anchor (run in .venv-bench, without ppokit's config classes) and the
ppokit side configure themselves from the same numbers.
"""

TASKS = {
    # CleanRL ppo.py: 4 envs x 128 steps, 4 epochs, 4 minibatches, 64-64 tanh, lr 2.5e-4 annealed.
    "cartpole": {
        "env_id": "CartPole-v1", "num_envs": 4, "num_steps": 128, "num_epochs": 4, "num_minibatches": 4,
        "learning_rate": 2.5e-4, "gamma": 0.99, "gae_lambda": 0.95, "clip_range": 0.2, "clip_range_vf": 0.2,
        "ent_coef": 0.01, "vf_coef": 0.5, "max_grad_norm": 0.5, "normalize": False, "default_steps": 100_000,
    },
    # CleanRL ppo_continuous_action.py: 1 env x 2048 steps, 10 epochs, 32 minibatches, obs/reward
    # normalisation, lr 3e-4 annealed.
    "halfcheetah": {
        "env_id": "HalfCheetah-v5", "num_envs": 1, "num_steps": 2048, "num_epochs": 10, "num_minibatches": 32,
        "learning_rate": 3e-4, "gamma": 0.99, "gae_lambda": 0.95, "clip_range": 0.2, "clip_range_vf": 0.2,
        "ent_coef": 0.0, "vf_coef": 0.5, "max_grad_norm": 0.5, "normalize": True, "default_steps": 40_960,
    },
}


def parse_task_args(description: str, seed: bool = True) -> tuple[str, dict, int, int]:
    """``--task``, ``--steps`` (default: the task's) and ``--seed`` of a single-run script;
    returns ``(task name, its settings without default_steps, steps, seed)``."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--steps", type=int)
    if seed:
        parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    settings = dict(TASKS[args.task])
    default_steps = settings.pop("default_steps")
    return args.task, settings, args.steps or default_steps, getattr(args, "seed", 0)
