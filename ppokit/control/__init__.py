"""The Gymnasium front end: envs, actor-critic networks, rollouts, the trainer and evaluation."""
