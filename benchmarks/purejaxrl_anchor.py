"""PureJaxRL's PPO on gymnax's CartPole, the anchor of ``benchmarks/vs_purejaxrl.py`` (run in .venv-bench).

This file reproduces ``purejaxrl/ppo.py``'s ``make_train`` (github.com/luchris429/purejaxrl, commit
31756b19) at its CartPole config, written here by calling gymnax, flax, optax and distrax: PureJaxRL
cannot be installed from a package registry, and its ``wrappers.py`` imports brax and navix at the top,
which CartPole needs neither of. What it keeps, because it is what is measured:

* the whole training loop is one function, ``jax.jit``-compiled whole: ``lax.scan`` over updates, inside
  it a ``lax.scan`` over the 128 env steps (the policy samples, the ``vmap``-ed gymnax env steps and
  resets itself), GAE as a reverse ``lax.scan`` (unroll 16), then ``lax.scan`` over 4 epochs of
  ``lax.scan`` over 4 shuffled minibatches;
* the network: separate actor and critic MLPs, 64-64 tanh, orthogonal init (√2 hidden, 0.01 policy
  head, 1.0 value head), zero biases, a ``distrax.Categorical`` head;
* the settings: NUM_ENVS 4, NUM_STEPS 128, TOTAL_TIMESTEPS 5e5 (976 updates), UPDATE_EPOCHS 4,
  NUM_MINIBATCHES 4, LR 2.5e-4 annealed linearly per update, Adam eps 1e-5 after a global-norm clip of
  0.5, GAMMA 0.99, GAE_LAMBDA 0.95, CLIP_EPS 0.2 (policy and value), ENT_COEF 0.01, VF_COEF 0.5,
  advantages whitened within each minibatch;
* the episode statistics of its ``LogWrapper`` (returns of finished episodes, carried in the env state)
  as the per-step metrics the run returns. Its ``FlattenObservationWrapper`` is left out: CartPole's
  observation is already flat, so the reshape it adds is the identity.

``--phase rollout`` compiles only the rollouts (the policy acting and the env stepping, the update and
GAE left out, so the parameters never change) and ``--phase env`` only the env steps (uniform random
actions drawn in the loop instead of the policy's): ``benchmarks/purejaxrl_phases.py`` takes the
differences of the three runs as the time of the update, of acting and of the env steps.

``--seeds N`` trains N independent agents at once as PureJaxRL's README does:
``jax.jit(jax.vmap(make_train(config)))(jax.random.split(key, N))``. ``--debug`` adds PureJaxRL's
``DEBUG`` callback (its ``__main__`` turns it on), which prints every finished episode from inside the
compiled loop; it is off by default because ppokit's side prints nothing per episode either.

The last stdout line is JSON: the split of this process's time (imports, building, compiling, running,
reading the metrics back), the steps trained, and each seed's mean return over its last 100 finished
episodes (ppokit's ``episodic_return`` is the same window), so a fast but broken run shows.

    .venv-bench/bin/python benchmarks/purejaxrl_anchor.py [--seeds 8] [--total-steps 500000]
"""

from __future__ import annotations

import time

_T_START = time.perf_counter()  # before JAX is imported: the import is part of what this side costs

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any, NamedTuple  # noqa: E402

import distrax  # noqa: E402
import flax.linen as nn  # noqa: E402
import gymnax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import struct  # noqa: E402
from flax.linen.initializers import constant, orthogonal  # noqa: E402
from flax.training.train_state import TrainState  # noqa: E402

_T_IMPORTED = time.perf_counter()

#: purejaxrl/ppo.py's ``__main__`` config (DEBUG aside, see the module docstring).
CARTPOLE_CONFIG: dict[str, Any] = {
    "LR": 2.5e-4, "NUM_ENVS": 4, "NUM_STEPS": 128, "TOTAL_TIMESTEPS": 500_000, "UPDATE_EPOCHS": 4,
    "NUM_MINIBATCHES": 4, "GAMMA": 0.99, "GAE_LAMBDA": 0.95, "CLIP_EPS": 0.2, "ENT_COEF": 0.01,
    "VF_COEF": 0.5, "MAX_GRAD_NORM": 0.5, "ACTIVATION": "tanh", "ENV_NAME": "CartPole-v1",
    "ANNEAL_LR": True, "DEBUG": False, "PHASE": "full",
}
#: What ``--phase`` compiles: the whole run, the rollouts only, or the env steps only (module docstring).
PHASES = ("full", "rollout", "env")


class ActorCritic(nn.Module):
    """Two separate MLP trunks (no shared layer): logits of a categorical policy, and a scalar value."""

    action_dim: int
    hidden: tuple[int, ...] = (64, 64)

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[distrax.Categorical, jax.Array]:
        def trunk(x: jax.Array) -> jax.Array:
            for width in self.hidden:
                x = nn.tanh(nn.Dense(width, kernel_init=orthogonal(np.sqrt(2)), bias_init=constant(0.0))(x))
            return x

        logits = nn.Dense(self.action_dim, kernel_init=orthogonal(0.01), bias_init=constant(0.0))(trunk(obs))
        value = nn.Dense(1, kernel_init=orthogonal(1.0), bias_init=constant(0.0))(trunk(obs))
        return distrax.Categorical(logits=logits), value[..., 0]


@struct.dataclass
class TrackedState:
    """gymnax's env state plus the running and last-finished episode return/length (PureJaxRL's
    ``LogEnvState``), so episode statistics come out of the compiled loop without a host callback."""

    env: Any
    ep_return: jax.Array
    ep_length: jax.Array
    done_return: jax.Array
    done_length: jax.Array
    t: jax.Array


class Step(NamedTuple):
    """One env step of the rollout, as the scan stacks it to [NUM_STEPS, NUM_ENVS]."""

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    reward: jax.Array
    done: jax.Array
    info: dict[str, jax.Array]


def make_train(config: dict[str, Any]) -> Callable[[jax.Array], dict[str, Any]]:
    """``train(key)``: a whole PPO run as one pure function of its key, to be jitted (and vmapped).

    GAE, backwards over the rollout with ``d_t`` the done flag returned by step t (gymnax resets in
    place, so ``V(s_{t+1})`` after a done belongs to the next episode and is masked out):
    ``δ_t = r_t + γ(1−d_t)V(s_{t+1}) − V(s_t)``, ``A_t = δ_t + γλ(1−d_t)A_{t+1}``, target ``A_t + V(s_t)``.
    Loss per minibatch, with ``Â`` the advantages whitened within it and ``ρ = π/π_old``:
    ``−mean min(ρÂ, clip(ρ, 1±ε)Â) + c1·½·mean max((V−R)², (V_old + clip(V−V_old, ±ε) − R)²)
    − c2·H``.
    """
    n_envs, n_steps = int(config["NUM_ENVS"]), int(config["NUM_STEPS"])
    n_updates = int(config["TOTAL_TIMESTEPS"]) // n_steps // n_envs
    n_minibatches, n_epochs = int(config["NUM_MINIBATCHES"]), int(config["UPDATE_EPOCHS"])
    batch_size = n_envs * n_steps
    gamma, lam, clip_eps = config["GAMMA"], config["GAE_LAMBDA"], config["CLIP_EPS"]
    env, env_params = gymnax.make(config["ENV_NAME"])
    n_actions = int(env.action_space(env_params).n)
    network = ActorCritic(n_actions)
    phase = config.get("PHASE", "full")

    def learning_rate(count: jax.Array) -> jax.Array:
        # one optimiser step per minibatch; the rate falls once per update, to 1/n_updates of LR at the last
        updates_done = count // (n_minibatches * n_epochs)
        return config["LR"] * (1.0 - updates_done / n_updates)

    def env_reset(key: jax.Array) -> tuple[jax.Array, TrackedState]:
        obs, state = env.reset(key, env_params)
        zero_f, zero_i = jnp.float32(0.0), jnp.int32(0)
        return obs, TrackedState(state, zero_f, zero_i, zero_f, zero_i, zero_i)

    def env_step(key: jax.Array, state: TrackedState, action: jax.Array) -> tuple[Any, ...]:
        obs, inner, reward, done, info = env.step(key, state.env, action, env_params)
        keep = 1 - done
        ret, length = state.ep_return + reward, state.ep_length + 1
        state = TrackedState(inner, ret * keep, length * keep, state.done_return * keep + ret * done,
                             state.done_length * keep + length * done, state.t + 1)
        info = {**info, "returned_episode_returns": state.done_return, "returned_episode_lengths": state.done_length,
                "timestep": state.t, "returned_episode": done}
        return obs, state, reward, done, info

    def train(key: jax.Array) -> dict[str, Any]:
        key, init_key, reset_key = jax.random.split(key, 3)
        params = network.init(init_key, jnp.zeros(env.observation_space(env_params).shape))
        rate = learning_rate if config["ANNEAL_LR"] else config["LR"]
        optimiser = optax.chain(optax.clip_by_global_norm(config["MAX_GRAD_NORM"]), optax.adam(rate, eps=1e-5))
        state = TrainState.create(apply_fn=network.apply, params=params, tx=optimiser)
        obs, env_state = jax.vmap(env_reset)(jax.random.split(reset_key, n_envs))

        def act_and_step(carry: tuple, _: None) -> tuple[tuple, Step]:
            state, env_state, obs, key = carry
            key, act_key, step_key = jax.random.split(key, 3)
            pi, value = network.apply(state.params, obs)
            action = pi.sample(seed=act_key)
            next_obs, env_state, reward, done, info = jax.vmap(env_step)(
                jax.random.split(step_key, n_envs), env_state, action)
            return (state, env_state, next_obs, key), Step(obs, action, pi.log_prob(action), value, reward, done, info)

        def random_step(carry: tuple, _: None) -> tuple[tuple, Step]:
            # --phase env: the env steps alone, on uniform random actions instead of the policy's
            state, env_state, obs, key = carry
            key, act_key, step_key = jax.random.split(key, 3)
            action = jax.random.randint(act_key, (n_envs,), 0, n_actions)
            next_obs, env_state, reward, done, info = jax.vmap(env_step)(
                jax.random.split(step_key, n_envs), env_state, action)
            zero = jnp.zeros(n_envs)
            return (state, env_state, next_obs, key), Step(obs, action, zero, zero, reward, done, info)

        def gae(rollout: Step, last_value: jax.Array) -> tuple[jax.Array, jax.Array]:
            def back(carry: tuple, step: Step) -> tuple[tuple, jax.Array]:
                adv_next, value_next = carry
                alive = 1.0 - step.done
                delta = step.reward + gamma * value_next * alive - step.value
                adv = delta + gamma * lam * alive * adv_next
                return (adv, step.value), adv

            _, adv = jax.lax.scan(back, (jnp.zeros_like(last_value), last_value), rollout, reverse=True, unroll=16)
            return adv, adv + rollout.value

        def loss_fn(params: Any, mb: Step, adv: jax.Array, target: jax.Array) -> tuple[jax.Array, tuple]:
            pi, value = network.apply(params, mb.obs)
            clipped_value = mb.value + jnp.clip(value - mb.value, -clip_eps, clip_eps)
            value_loss = 0.5 * jnp.maximum(jnp.square(value - target), jnp.square(clipped_value - target)).mean()
            ratio = jnp.exp(pi.log_prob(mb.action) - mb.log_prob)
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            policy_loss = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv).mean()
            entropy = pi.entropy().mean()
            total = policy_loss + config["VF_COEF"] * value_loss - config["ENT_COEF"] * entropy
            return total, (value_loss, policy_loss, entropy)

        def minibatch_step(state: TrainState, minibatch: tuple) -> tuple[TrainState, jax.Array]:
            (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, *minibatch)
            return state.apply_gradients(grads=grads), loss

        def epoch(carry: tuple, _: None) -> tuple[tuple, jax.Array]:
            state, rollout, adv, target, key = carry
            key, perm_key = jax.random.split(key)
            order = jax.random.permutation(perm_key, batch_size)

            def to_minibatches(x: jax.Array) -> jax.Array:
                flat = x.reshape((batch_size,) + x.shape[2:])
                return jnp.take(flat, order, axis=0).reshape((n_minibatches, -1) + x.shape[2:])

            minibatches = jax.tree_util.tree_map(to_minibatches, (rollout, adv, target))
            state, losses = jax.lax.scan(minibatch_step, state, minibatches)
            return (state, rollout, adv, target, key), losses

        def update(carry: tuple, _: None) -> tuple[tuple, dict[str, jax.Array]]:
            carry, rollout = jax.lax.scan(random_step if phase == "env" else act_and_step, carry, None, n_steps)
            if phase != "full":
                return carry, rollout.info
            state, env_state, obs, key = carry
            _, last_value = network.apply(state.params, obs)
            adv, target = gae(rollout, last_value)
            (state, _, _, _, key), _ = jax.lax.scan(epoch, (state, rollout, adv, target, key), None, n_epochs)
            if config["DEBUG"]:
                jax.debug.callback(_print_episodes, rollout.info, n_envs)
            return (state, env_state, obs, key), rollout.info

        key, run_key = jax.random.split(key)
        carry, metrics = jax.lax.scan(update, (state, env_state, obs, run_key), None, n_updates)
        return {"runner_state": carry, "metrics": metrics}

    return train


def _print_episodes(info: dict[str, np.ndarray], n_envs: int) -> None:
    """PureJaxRL's DEBUG output: one line per episode that finished in this update."""
    finished = np.asarray(info["returned_episode"], dtype=bool)
    steps = np.asarray(info["timestep"])[finished] * n_envs
    for step, ret in zip(steps, np.asarray(info["returned_episode_returns"])[finished]):
        print(f"global step={step}, episodic return={ret}")


def last_returns(metrics: dict[str, Any], window: int = 100) -> list[float | None]:
    """Each seed's mean return over its last ``window`` finished episodes (None: no episode finished).
    Metrics are [seeds, updates, steps, envs]; finished episodes are taken in time order."""
    finished = np.asarray(metrics["returned_episode"], dtype=bool)
    returns = np.asarray(metrics["returned_episode_returns"])
    means: list[float | None] = []
    for seed_done, seed_ret in zip(finished, returns):
        done_returns = seed_ret.reshape(-1)[seed_done.reshape(-1)]
        means.append(float(done_returns[-window:].mean()) if done_returns.size else None)
    return means


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=1, help="agents trained at once (jax.vmap over their keys)")
    p.add_argument("--seed", type=int, default=1, help="the key the seeds' keys are split from")
    p.add_argument("--total-steps", type=int, default=CARTPOLE_CONFIG["TOTAL_TIMESTEPS"], help="env steps per agent")
    p.add_argument("--debug", action="store_true", help="print every finished episode as PureJaxRL's __main__ does")
    p.add_argument("--phase", choices=PHASES, default="full",
                   help="compile the whole run, or only its rollouts, or only its env steps (module docstring)")
    args = p.parse_args()
    config = {**CARTPOLE_CONFIG, "TOTAL_TIMESTEPS": args.total_steps, "DEBUG": args.debug, "PHASE": args.phase}
    t0 = time.perf_counter()
    key = jax.random.PRNGKey(args.seed)
    if args.seeds == 1:
        train, key_arg = jax.jit(make_train(config)), key
    else:
        train, key_arg = jax.jit(jax.vmap(make_train(config))), jax.random.split(key, args.seeds)
    t1 = time.perf_counter()
    compiled = train.lower(key_arg).compile()  # what the first train(key) call would compile
    t2 = time.perf_counter()
    out = jax.block_until_ready(compiled(key_arg))
    t3 = time.perf_counter()
    metrics = jax.tree_util.tree_map(np.asarray, out["metrics"])
    if args.seeds == 1:
        metrics = {k: v[None] for k, v in metrics.items()}
    returns = last_returns(metrics)
    t4 = time.perf_counter()
    n_updates = metrics["returned_episode"].shape[1]
    result = {
        "side": "purejaxrl", "phase": args.phase, "seeds": args.seeds, "jax": jax.__version__, "backend": jax.default_backend(),
        "steps_per_seed": int(n_updates * config["NUM_STEPS"] * config["NUM_ENVS"]),
        "final_return": returns, "final_return_mean": float(np.mean([r for r in returns if r is not None] or [np.nan])),
        "time_import_s": _T_IMPORTED - _T_START, "time_build_s": t1 - t0, "time_compile_s": t2 - t1,
        "time_run_s": t3 - t2, "time_read_metrics_s": t4 - t3, "time_in_process_s": t4 - _T_START,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
