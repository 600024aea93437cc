"""Train a few short control and RLHF runs and print a hash of the weights each ends with.

Two checkouts that print the same hashes train bit-identically (one thread, a CPU): the check that
a refactor changed no number. Run it once per checkout, from that checkout's root:

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/weights_hash.py
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile

import torch


def _hash(params) -> str:
    return hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in params)).hexdigest()[:16]


def control(tmp: str) -> None:
    from ppokit import PPO, ControlConfig

    runs = {
        "cartpole-vf-clip-entropy": dict(env_id="CartPole-v1", total_steps=8192, num_envs=4, num_steps=128,
                                         num_minibatches=4, num_epochs=4, clip_range_vf=0.2, ent_coef=0.01,
                                         normalize_obs=False, normalize_reward=False),
        "pendulum-normalised-penalty": dict(env_id="Pendulum-v1", total_steps=4096, num_envs=2, num_steps=512,
                                            num_minibatches=8, num_epochs=3, normalize_obs=True,
                                            normalize_reward=True, loss="penalty"),
        "cartpole-target-kl-adaptive-clip": dict(env_id="CartPole-v1", total_steps=4096, num_envs=4, num_steps=128,
                                                 num_minibatches=4, num_epochs=4, target_kl=0.001, adaptive_clip=True, ent_coef=0.0,
                                                 normalize_obs=False, normalize_reward=False),
    }
    for name, fields in runs.items():
        agent = PPO(ControlConfig(progress=False, tensorboard=False, eval_episodes=0,
                                  run_dir=os.path.join(tmp, name), **fields))
        agent.learn()
        print(f"control {name}: {_hash(agent.policy.parameters())}")
        agent.close()


def rlhf(tmp: str) -> None:
    from ppokit.rlhf.config import RLHFConfig
    from ppokit.rlhf.demo import NOUNS, WORDS
    from ppokit.rlhf.ppo.trainer import RLHFTrainer
    from ppokit.rlhf.tiny import build_tiny_gpt2

    base = str(build_tiny_gpt2(os.path.join(tmp, "base"), WORDS, n_layer=2, n_embd=32, n_head=2, seed=0))
    prompts = [{"prompt": f"describe the {noun} :"} for noun in NOUNS]
    sys.path.insert(0, os.getcwd())  # the reward below lives in this checkout's tests/
    for name, extra in {"critic": {}, "value-head-k3": {"value_model": "head", "kl_estimator": "k3", "num_epochs": 2},
                        "lora": {"lora": True}}.items():
        config = RLHFConfig(policy=base, rewards=["tests.rlhf.helpers:pleasant_minus_unpleasant"], total_updates=3,
                            batch_size=8, num_minibatches=2, max_new_tokens=6, learning_rate=1e-3, kl_coef=0.05,
                            adaptive_kl=True, progress=False, tensorboard=False, torch_threads=1, device="cpu",
                            seed=0, sample_every=0, **extra)
        trainer = RLHFTrainer(config, prompts=prompts, run_dir=os.path.join(tmp, name))
        trainer.learn()
        print(f"rlhf {name}: {_hash(trainer.models.trainable.parameters())} beta {trainer.kl_coef:.8f}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        control(tmp)
        rlhf(tmp)
