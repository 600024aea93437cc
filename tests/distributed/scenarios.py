"""What each process of the data-parallel tests' torchrun jobs runs, and the one-process references.

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m tests.distributed.scenarios NAME OUT_DIR [ARG]

Each scenario writes ``OUT_DIR/rank<R>.pt`` for the test to compare.
"""

from __future__ import annotations

import sys
from pathlib import Path

import gymnasium as gym
import torch

from ppokit import runtime
from ppokit.control.algorithm import PPOAlgorithm, make_batch
from ppokit.control.config import ControlConfig
from ppokit.control.policy.networks import ActorCritic, PolicySpec
from ppokit.control.rollout.storage import Rollout
from ppokit.core.update import run_epochs
from ppokit.launch import leave_processes

#: Envs per process, steps per env, and the processes, of the one-update scenario.
LOCAL_ENVS, STEPS, WORLD = 3, 16, 2


def update_config(backend: str, num_envs: int) -> ControlConfig:
    """``backend``: the update backend, with ``@KL`` for a target KL that stops the epochs early."""
    name, _, target_kl = backend.partition("@")
    config = ControlConfig(env_id="CartPole-v1", num_envs=num_envs, num_steps=STEPS, num_epochs=3, num_minibatches=4,
                           update_backend=name, clip_range_vf=0.2, target_kl=float(target_kl or 0.5),
                           learning_rate=3e-3, total_steps=num_envs * STEPS)
    return config.for_actions(True)


def make_policy(config: ControlConfig) -> ActorCritic:
    env = gym.make("CartPole-v1")
    torch.manual_seed(0)
    spec = PolicySpec.from_spaces(env.observation_space, env.action_space, hidden_sizes=config.hidden_sizes)
    return ActorCritic(spec)


def full_rollout(policy: ActorCritic) -> Rollout:
    """A rollout of every process's envs side by side ``[T, WORLD * LOCAL_ENVS]``, with episode ends
    and invalid (reset) steps scattered so that the processes hold different numbers of rows."""
    g = torch.Generator().manual_seed(123)
    T, N = STEPS, WORLD * LOCAL_ENVS
    obs = torch.randn(T, N, 4, generator=g)
    actions = torch.randint(0, 2, (T, N), generator=g)
    with torch.no_grad():
        logp, _, values = policy.evaluate(obs.reshape(T * N, 4), actions.reshape(-1))
    return Rollout(
        obs=obs, actions=actions, logp=logp.reshape(T, N) + 0.05 * torch.randn(T, N, generator=g),
        values=values.reshape(T, N), rewards=torch.randn(T, N, generator=g),
        terminated=torch.rand(T, N, generator=g) < 0.1, truncated=torch.rand(T, N, generator=g) < 0.05,
        valid=torch.rand(T, N, generator=g) > 0.15, last_value=torch.randn(N, generator=g),
    )


def rank_slice(rollout: Rollout, rank: int) -> Rollout:
    cols = slice(rank * LOCAL_ENVS, (rank + 1) * LOCAL_ENVS)
    return Rollout(**{k: getattr(rollout, k)[:, cols] if k != "last_value" else rollout.last_value[cols]
                      for k in ("obs", "actions", "logp", "values", "rewards", "terminated", "truncated", "valid",
                                "last_value")})


def rank_orders(rollout: Rollout, epochs: int) -> list[list[torch.Tensor]]:
    """The row permutations each process draws in the update (torch seeded 1000 + rank, as below)."""
    orders = []
    for rank in range(WORLD):
        torch.manual_seed(1000 + rank)
        n = int(rank_slice(rollout, rank).valid.sum())
        orders.append([torch.randperm(n) for _ in range(epochs)])
    return orders


def params(policy: ActorCritic) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in policy.parameters()]).clone()


def reference_update(backend: str) -> tuple[torch.Tensor, dict[str, float]]:
    """One process's update on the whole rollout, with minibatch j of each epoch the union of every
    process's minibatch j (what the data-parallel update computes)."""
    config = update_config(backend, WORLD * LOCAL_ENVS)
    policy = make_policy(config)
    rollout = full_rollout(policy)
    algorithm = PPOAlgorithm(config, policy, torch.device("cpu"))
    # Global row of each process's local row: rows are the valid (t, env) in time-major order.
    flat_valid = rollout.valid.reshape(-1)
    global_row = torch.full((flat_valid.numel(),), -1, dtype=torch.long)
    global_row[flat_valid] = torch.arange(int(flat_valid.sum()))
    local_to_global = []
    for rank in range(WORLD):
        local_valid = rank_slice(rollout, rank).valid.reshape(-1)
        positions = local_valid.nonzero().squeeze(1)
        t, env = positions // LOCAL_ENVS, positions % LOCAL_ENVS
        local_to_global.append(global_row[t * WORLD * LOCAL_ENVS + rank * LOCAL_ENVS + env])
    orders = rank_orders(rollout, config.num_epochs)

    def minibatches(epoch: int) -> list[torch.Tensor]:
        chunks = [orders[r][epoch].tensor_split(config.num_minibatches) for r in range(WORLD)]
        return [torch.cat([local_to_global[r][chunks[r][j]] for r in range(WORLD)])
                for j in range(config.num_minibatches)]

    settings = algorithm.settings(0.0)
    algorithm.optimizer.set_learning_rate(config.learning_rate)
    batch = make_batch(rollout, config.gamma, config.gae_lambda)
    stats = run_epochs(algorithm.minibatch_step(batch, settings), batch.rows, algorithm.optimizer,
                       settings, minibatches=minibatches)
    return params(policy), stats


def one_update(out: Path, backend: str) -> None:
    collective = runtime.join_processes(torch.device("cpu"))
    config = update_config(backend, LOCAL_ENVS)
    policy = make_policy(config)
    rollout = rank_slice(full_rollout(policy), collective.rank)
    algorithm = PPOAlgorithm(config, policy, torch.device("cpu"), collective)
    torch.manual_seed(1000 + collective.rank)
    before = collective.traffic.copy()
    stats = algorithm.update(rollout, 0.0)
    torch.save({"params": params(policy), "stats": stats, "fast": bool(algorithm.fast_update),
                "exchanges": collective.traffic.since(before).calls}, out / f"rank{collective.rank}.pt")


#: The tensors each process averages in the exchange scenario: float32 ones that fill several
#: buckets of BUCKET, a bfloat16 one (a bucket of its own dtype), a non-contiguous float32 one.
BUCKET = 64


def exchange_tensors(rank: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7 + rank)
    return [torch.randn(5, generator=g), torch.randn(3, 4, generator=g), torch.randn(40, generator=g),
            torch.randn(6, generator=g).to(torch.bfloat16), torch.randn(4, 3, generator=g).T, torch.randn(2, generator=g)]


def exchange(out: Path, _: str) -> None:
    """Collective.mean_flat_ over tensors of several dtypes and buckets, with numbers riding along;
    moments_of_parts against moments one part at a time."""
    collective = runtime.join_processes(torch.device("cpu"))
    rank = collective.rank
    result = {}
    for name, tail_dtype in (("float32_last", torch.float32), ("bfloat16_last", torch.bfloat16)):
        tensors = exchange_tensors(rank)
        if tail_dtype == torch.bfloat16:
            tensors = tensors[:-1] + [tensors[-1].to(torch.bfloat16)]
        before = collective.traffic.copy()
        extra = collective.mean_flat_(tensors, (1.5 + rank, -2.0 * rank), bucket_bytes=BUCKET)
        result[name] = {"tensors": tensors, "extra": extra, "calls": collective.traffic.since(before).calls}
    g = torch.Generator().manual_seed(11 + rank)
    parts = [(torch.randn(n, generator=g), None if n % 2 else torch.rand(n, generator=g) > 0.3) for n in (5, 8, 1, 0)]
    before = collective.traffic.copy()
    together = collective.moments_of_parts(parts)
    result["moments_calls"] = collective.traffic.since(before).calls
    result["moments_together"] = [torch.stack([m.double() for m in row]) for row in together]
    result["moments_apart"] = [torch.stack([m.double() for m in collective.moments(x, mask)]) for x, mask in parts]
    torch.save(result, out / f"rank{rank}.pt")


def learn(out: Path, env_id: str) -> None:
    from ppokit.control.agent import PPO

    agent = PPO(ControlConfig(env_id=env_id, num_envs=4, num_steps=128, num_epochs=4, num_minibatches=4,
                              learning_rate=2.5e-3, total_steps=2 * 4 * 128 * 30, progress=False, tensorboard=False,
                              eval_episodes=10, seed=3, run_dir=str(out / "run"), checkpoint_minutes=0))
    agent.learn()
    torch.save({"params": params(agent.policy), "obs_rms": agent.obs_rms.state_dict() if agent.obs_rms else None,
                "global_step": agent.global_step}, out / f"rank{agent.collective.rank}.pt")
    agent.close()


def multiagent(out: Path, resume: str) -> None:
    """MAPPO on the leaky test env (agents finishing early and joining late), 2 env copies per process;
    ``resume``: continue the run in ``out/run`` from its checkpoint to 8 updates."""
    from ppokit.multiagent import MultiAgentConfig, MultiAgentPPO

    if resume:
        agent = MultiAgentPPO.resume(out / "run", trust=True, total_steps=8 * 2 * 2 * 16)
    else:
        agent = MultiAgentPPO(MultiAgentConfig(
            env_id="tests.multiagent.envs:leaky", num_envs=2, num_steps=16, num_minibatches=2, num_epochs=2,
            total_steps=8 * 2 * 2 * 16, progress=False, tensorboard=False, eval_episodes=2, seed=3,
            run_dir=str(out / "run"), checkpoint_every=4, checkpoint_minutes=0))
    agent.learn(callback=None if resume else (lambda row: row["update"] < 4))
    group = agent.groups[0]
    torch.save({"params": params(group.policy), "value_rms": group.value_rms.state_dict() if group.value_rms else None,
                "global_step": agent.global_step, "updates": agent.num_updates},
               out / f"rank{agent.collective.rank}{'_resumed' if resume else ''}.pt")
    agent.close()


if __name__ == "__main__":
    name, out_dir = sys.argv[1], Path(sys.argv[2])
    arg = sys.argv[3] if len(sys.argv) > 3 else ""
    {"one_update": one_update, "learn": learn, "multiagent": multiagent, "exchange": exchange}[name](out_dir, arg)
    leave_processes()
