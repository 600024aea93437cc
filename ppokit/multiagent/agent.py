"""PPO for many agents on PettingZoo environments: the public facade (learn, predict, evaluate, save,
load, resume), in the same loop shell and with the same update as control.

One update::

    collect T steps of N env copies; each group's rows are its agents in every copy     (rollout.py)
    GAE(γ, λ) over each agent's own steps                            (core.advantages.gae_over_own_steps)
    per group: K epochs of minibatch updates on the clipped surrogate       (control.algorithm → core.update)

IPPO: each agent's critic reads its own observation. MAPPO: the critic reads the env's global
``state()`` (or every agent's observation concatenated). A group of agents that share a policy is
single-agent PPO on their stacked rows: nothing of the maths is written twice.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppokit import runtime
from ppokit.configuration import adapt, adapted_notes, check_unchanged, given_fields, replace
from ppokit.control import data_parallel
from ppokit.control.agent import check_budget
from ppokit.control.algorithm import ControlBatch, SequenceBatch
from ppokit.control.checkpointing import save_model
from ppokit.control.data_parallel import local_num_envs
from ppokit.control.policy.networks import is_image_space
from ppokit.core.collective import check_world_size, gather_rank_states, on_main, rank_state
from ppokit.core.health import HealthMonitor
from ppokit.errors import CheckpointError, ConfigError, EnvError
from ppokit.io.atomic import atomic_write_json
from ppokit.io.checkpoints import (
    BEST,
    RESUME_FILE,
    checkpoint_path,
    find_resumable,
    latest_checkpoint,
    prune_checkpoints,
    read_resume_state,
)
from ppokit.io.loop import Callback, LoopPlan, run_loop
from ppokit.io.metrics import MetricsLogger, NullMetrics
from ppokit.io.rng import rng_state, set_rng_state
from ppokit.io.run_dir import default_run_dir, holds_run, open_run
from ppokit.io.state_codec import decode, encode
from ppokit.multiagent import checkpointing
from ppokit.multiagent.config import RESUMABLE_FIELDS, MultiAgentConfig
from ppokit.multiagent.envs import (
    AgentEnv,
    Group,
    agents_of,
    as_agent_env,
    imports_foreign_code,
    is_aec,
    is_parallel,
    make_env,
    make_groups,
    require_consent,
    resolve_factory,
)
from ppokit.multiagent.groups import PolicyGroup
from ppokit.multiagent.rollout import MultiAgentCollector

log = logging.getLogger("ppokit")

#: The metrics of one group's update that the row shows per group when there are several.
GROUP_STATS = ("policy_loss", "value_loss", "entropy", "approx_kl_k3", "clip_fraction", "explained_variance")


class _Optimizers:
    """Every group's optimiser state as one (for ``optimizer.pt``)."""

    def __init__(self, groups: list[PolicyGroup]) -> None:
        self.groups = groups

    def state_dict(self) -> dict[str, Any]:
        return checkpointing.optimizer_states(self.groups)


class MultiAgentPPO:
    """IPPO / MAPPO on a PettingZoo environment, policies shared or separate per group of agents.

    >>> agent = MultiAgentPPO(MultiAgentConfig(env_id="mpe2.simple_spread_v3", total_steps=200_000)).learn()  # doctest: +SKIP
    >>> actions = agent.predict(observations)   # {agent: observation} -> {agent: action}       # doctest: +SKIP
    """

    def __init__(self, config: MultiAgentConfig | None = None, env: Any = None, **overrides: Any) -> None:
        """``env``: a function making one PettingZoo env (ParallelEnv or AEC), called once per env copy, or
        such an env itself (the other copies, and the evaluation's, are deep copies of it), instead of
        ``env_id``."""
        config = config or MultiAgentConfig()
        notes = adapted_notes(config)
        if env is not None and "env_id" not in overrides:
            name = getattr(env, "__qualname__", None) or getattr(env, "metadata", {}).get("name") or type(env).__name__
            overrides["env_id"] = f"<object {name}>"
        if overrides:
            config = replace(config, source="MultiAgentPPO(...)", **overrides)
            notes += adapted_notes(config)
        for note in notes:
            log.info("adapted %s", note)
        self.config = config
        self._factory = env
        #: Where the env id came from while making it needs the user's consent (a file read back); None in code.
        self._unvouched: str | None = None
        self.device = runtime.setup(config.seed, config.device, config.torch_threads)
        #: The processes of a data-parallel run (one process: a no-op), each with its own env copies.
        self.collective = runtime.join_processes(self.device, config.dist_backend, config.dist_timeout,
                                                 settings=config)
        envs = self._make_envs(local_num_envs(config, self.collective))
        self._setup(envs[0].env, envs)

    # ------------------------------------------------------------------ building
    def _make_one(self) -> Any:
        c = self.config
        if self._factory is not None:
            if callable(self._factory) and not (is_parallel(self._factory) or is_aec(self._factory)):
                env = self._factory()
            else:  # an env object: a fresh copy of it as it was given
                try:
                    env = copy.deepcopy(self._factory)
                except Exception as err:  # noqa: BLE001 - whatever the env holds may refuse to be copied
                    raise EnvError(f"the env object {type(self._factory).__name__} cannot be copied for the env copies "
                                   f"and evaluation ({type(err).__name__}: {err}); pass a function that makes one "
                                   "instead (MultiAgentPPO(config, env=make_env))") from None
            return make_env(c.env_id, {}, factory=lambda: env)
        if c.env_id.startswith("<object"):
            raise EnvError(f"this run's env was an object given in code ({c.env_id}); pass it again: "
                           "MultiAgentPPO.load(path, env=make_env)")
        if self._unvouched is not None:
            require_consent(c.env_id, self._unvouched)
        return make_env(c.env_id, c.env_kwargs, factory=resolve_factory(c.env_id))

    def _make_envs(self, n: int) -> list[AgentEnv]:
        return [as_agent_env(self._make_one()) for _ in range(n)]

    def _setup(self, probe: Any, envs: list[AgentEnv] | None, saved: tuple[list[Group], int | None] | None = None) -> None:
        c = self.config
        if saved is None:
            possible = agents_of(probe)
            groups = make_groups(c.policies, possible, probe.observation_space, probe.action_space)
            state_size = None
            images = [g.name for g in groups if c.network != "mlp" and is_image_space(
                _Reading(g, c).reader.observation_space)]
            if c.critic == "mappo" and images:
                # The image encoder is one trunk for actor and critic, so the critic reads what the actor does.
                if "critic" in given_fields(c):
                    raise ConfigError(f"config field 'critic' = 'mappo' cannot apply: group {images[0]!r} sees images, "
                                      "and the CNN is one trunk for actor and critic, which reads the agent's own "
                                      "observation; use critic: ippo")
                adapt(c, "critic", "ippo", f"group {images[0]!r} sees images, and the CNN trunk serves actor and critic")
                log.info("adapted %s", adapted_notes(c)[-1])
            if c.critic == "mappo":
                assert envs is not None
                probe_collector = MultiAgentCollector(envs, [_Reading(g, c) for g in groups], 1, c.gamma,  # type: ignore[misc]
                                                      c.clip_reward, True, self._env_seed(len(envs)))
                state_size = probe_collector.state_size()
                probe_collector._started = False
        else:
            groups, state_size = saved
        self.groups = [PolicyGroup(g, c, self.device, state_size, self.collective) for g in groups]
        for group in self.groups:  # every rank starts from rank 0's weights, then its own random stream
            data_parallel.start(self.collective, group.policy, c.seed, tuple(group.normalisers().values()))
        self.agents = [a for g in self.groups for a in g.agents]
        self.health = [HealthMonitor(target_kl=c.target_kl, normalize_reward=c.normalize_reward,
                                     shared_trunk=g.spec.shared_trunk) for g in self.groups]
        self.envs = envs
        self.collector = (MultiAgentCollector(envs, self.groups, c.num_steps, c.gamma, c.clip_reward,
                                              c.critic == "mappo", self._env_seed(len(envs)), c.bootstrap_truncation)
                          if envs is not None else None)
        self.global_step = 0
        self.num_updates = 0
        self.total_steps: int | None = None
        self.run_dir: Path | None = None
        self.best_eval_return: float | None = None
        self.resume_from: Path | None = None
        self._start = (0, time.perf_counter())
        if len(self.groups) > 1 or self.groups[0].agents != [self.agents[0]]:
            log.info("policies: %s", "; ".join(f"{g.group.name} -> {', '.join(g.agents)}" for g in self.groups))

    def _env_seed(self, local_envs: int, num_updates: int = 0) -> int:
        return data_parallel.env_seed(self.config, local_envs, self.collective.rank, num_updates)

    @property
    def global_batch(self) -> int:
        """Env steps per update over every process (each step of an env copy counts once, however many
        agents act in it)."""
        return self.config.global_batch_size(self.collective.world_size)

    # ------------------------------------------------------------------ training
    def learn(self, total_steps: int | None = None, *, run_dir: str | Path | None = None, overwrite: bool = False,
              resume: bool = False, callback: Callback | None = None) -> MultiAgentPPO:
        """Train until ``total_steps`` env steps (default: the config's), then save and evaluate; as
        :meth:`ppokit.PPO.learn` (run directory, checkpoints, SIGINT/SIGTERM, ``resume``, ``callback``)."""
        c = self.config
        main = self.collective.is_main
        if self.resume_from is not None and self.run_dir is not None:
            directory = self.run_dir
        else:  # rank 0's (a default name holds the time)
            directory = self.collective.broadcast_object(
                Path(run_dir or c.run_dir or default_run_dir(c.env_id.replace(":", "."), c.seed)))
        if resume and self.resume_from is None:
            if run_dir is None and c.run_dir is None:
                raise ConfigError("resume=True needs the run directory to resume (run_dir)")
            overwrite = self.restore_latest(directory) or overwrite
        resuming = self.resume_from is not None
        total = int(total_steps) if total_steps is not None else (
            self.total_steps if resuming and self.total_steps is not None else c.total_steps)
        if resuming:
            check_budget(total, self.global_step, directory)
        num_updates = max(0, (total - self.global_step) // self.global_batch)
        if num_updates == 0 and self.global_step == 0:
            raise ConfigError(f"total_steps = {total} is less than one rollout (num_envs * num_steps = "
                              f"{c.num_envs} * {c.num_steps} = {c.batch_size}); nothing would be trained")
        self._ensure_envs()
        self.total_steps = total
        launch = {"world_size": self.collective.world_size, "global_batch_size": self.global_batch}
        self.run_dir, metrics = on_main(self.collective, lambda: open_run(
            directory, replace(c, total_steps=total, run_dir=str(directory)), overwrite=overwrite,
            resume_update=self.num_updates if resuming else None, purge_step=self.global_step + 1 if resuming else None,
            launch=launch if self.collective.active else None), lambda: (directory, NullMetrics()))
        self._start = (self.global_step, time.perf_counter())
        plan = LoopPlan(
            updates=num_updates, desc=c.env_id, checkpoint_every=c.checkpoint_every,
            checkpoint_minutes=c.checkpoint_minutes, x_axis=lambda record: int(record["global_step"]),
            progress=c.progress and main, unit="step", total=self.global_step + num_updates * self.global_batch,
            position=lambda: self.global_step,
            postfix=lambda r: {"ret": "-" if r["episodic_return"] is None else f"{r['episodic_return']:.1f}"},
            agree=self.collective.any,
            resume_flags=("" if not checkpointing_needs_env(c.env_id) else f" --env {c.env_id}")
            + f" --nproc {self.collective.world_size}" * self.collective.active,
        )
        with metrics:
            run_loop(self, plan, metrics, callback)
            if main:  # the weights are the same on every rank
                self.finish_run(metrics)
            self.resume_from = None
            self.collective.barrier()
        return self

    def finish_run(self, metrics: MetricsLogger) -> None:
        assert self.run_dir is not None
        self.save(self.run_dir / "model")
        result = None
        if self.config.eval_episodes > 0:
            result = self.evaluate(self.config.eval_episodes, deterministic=self.config.eval_deterministic)
            atomic_write_json(self.run_dir / "eval.json", result)
        metrics.finish({f"eval/{k}": v for k, v in (result or {}).items() if not isinstance(v, (list, dict))},
                       self.run_dir / "model")

    def update(self) -> dict[str, Any]:
        """One update: collect a rollout of every env copy, then each group's K epochs; its metrics row."""
        assert self.collector is not None
        fraction = self.global_step / self.total_steps if self.total_steps else 0.0
        batches = self.collector.collect()
        for group in self.groups:
            data_parallel.sync_normalisers(self.collective, (group.obs_rms, group.critic_rms, group.ret_rms))
        self.global_step += self.global_batch
        per_group = [self._train(group, batch, fraction) for group, batch in zip(self.groups, batches)]
        self.num_updates += 1
        episodes = self.collector.episodes
        record: dict[str, Any] = {"global_step": self.global_step, "update": self.num_updates}
        if self.collective.active:
            record.update(data_parallel.episode_figures(episodes, self.collective))
        else:
            record.update(episodic_return=float(np.mean(episodes.returns)) if episodes.returns else None,
                          episodic_length=float(np.mean(episodes.lengths)) if episodes.lengths else None,
                          episodes=len(episodes.last[0]))
        for key in per_group[0]:
            values = [s[key] for s in per_group if isinstance(s.get(key), (int, float))]
            if values:
                record[key] = float(np.mean(values))
        if len(self.groups) > 1:
            for group, stats in zip(self.groups, per_group):
                record.update({f"{group.group.name}/{k}": stats[k] for k in GROUP_STATS if k in stats})
        for group, monitor, stats in zip(self.groups, self.health, per_group):
            found = monitor.check({**record, **stats}, fraction, self.num_updates)
            if found:  # the row keeps them, as control's does (a group's named when there are several)
                prefix = f"{group.group.name}: " if len(self.groups) > 1 else ""
                record.setdefault("warnings", []).extend(prefix + w for w in found)
        return record

    def _train(self, group: PolicyGroup, batch: ControlBatch | SequenceBatch, fraction: float) -> dict[str, Any]:
        if group.value_rms is not None:
            # The critic learns normalised returns: the statistics take this batch's returns first (as
            # MAPPO's value normaliser does), and the old values go into the same units for clipping.
            assert batch.returns is not None and batch.values is not None
            returns = batch.returns if batch.mask is None else batch.returns[batch.mask]
            group.value_rms.update_array(returns.detach().cpu().numpy().astype(np.float64).reshape(-1))
            data_parallel.sync_normalisers(self.collective, (group.value_rms,))
            batch.returns = group.normalize_values(batch.returns)
            batch.values = group.normalize_values(batch.values)
        return group.algorithm.train(batch, fraction)

    def after_update(self, record: dict[str, Any]) -> bool:
        c = self.config
        start_step, start_time = self._start
        elapsed = time.perf_counter() - start_time
        record["sps"] = (self.global_step - start_step) / max(elapsed, 1e-9)
        record["time_elapsed"] = elapsed
        if not (c.eval_every and self.num_updates % c.eval_every == 0) or not self.collective.is_main:
            return False  # rank 0 evaluates; the loop shares its decision
        result = self.evaluate(c.eval_episodes, deterministic=c.eval_deterministic,
                               seed=c.seed + 10_000 + self.num_updates)
        record["eval_return"] = result["mean_return"]
        if self.best_eval_return is None or result["mean_return"] > self.best_eval_return:
            self.best_eval_return = result["mean_return"]
            assert self.run_dir is not None
            self.save(self.run_dir / BEST)
            atomic_write_json(self.run_dir / BEST / "eval.json", result)
        return c.stop_at_return is not None and result["mean_return"] >= c.stop_at_return

    # ------------------------------------------------------------------ acting
    def _group_of(self, agent: str) -> tuple[PolicyGroup, int]:
        for group in self.groups:
            if agent in group.index:
                return group, group.index[agent]
        raise EnvError(f"agent {agent!r} has no policy here (agents: {', '.join(self.agents)})")

    def predict(self, observations: dict[str, Any], deterministic: bool = True,
                infos: dict[str, Any] | None = None) -> dict[str, Any]:
        """Actions for the agents in ``observations`` (``{agent: observation}``, as a ParallelEnv returns
        them), in the env's format. Action masks are read as in training (the observation's
        ``action_mask`` key, or ``infos[agent]['action_mask']``)."""
        out = {}
        for agent, raw in observations.items():
            group, slot = self._group_of(agent)
            if group.policy.core is not None:
                raise ConfigError("predict: a recurrent multi-agent policy is evaluated with evaluate(); predict "
                                  "keeps no state between calls")
            obs, mask = group.reader.read_single(raw, (infos or {}).get(agent, {}))
            x = group.policy_obs(np.asarray(obs), np.array([slot]), None)
            with torch.inference_mode():
                mask_t = None if mask is None else torch.as_tensor(mask[None], device=self.device)
                action = group.policy.action(torch.as_tensor(x, device=self.device), deterministic, mask_t)
            out[agent] = group.to_env(action.cpu().numpy()[0])
        return out

    def evaluate(self, episodes: int = 20, deterministic: bool = True, seed: int | None = None) -> dict[str, Any]:
        """Mean and std of the episode return (the mean over agents of each agent's return) over
        ``episodes`` fresh episodes of a new env copy, as written to eval.json, with each agent's mean."""
        seed = self.config.seed + 10_000 if seed is None else seed
        env = as_agent_env(self._make_one())
        torch_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        returns: list[float] = []
        lengths: list[int] = []
        per_agent: dict[str, list[float]] = {a: [] for a in self.agents}
        try:
            for episode in range(episodes):
                env.reset(seed=seed + episode)
                totals: dict[str, float] = {}
                states = {g.group.name: g.policy.initial_state(len(g.agents), self.device) for g in self.groups}
                fresh = {g.group.name: np.ones(len(g.agents), dtype=bool) for g in self.groups}
                length = 0
                while env.acting:
                    actions = {}
                    for agent, raw in env.acting.items():
                        group, slot = self._group_of(agent)
                        obs, mask = group.reader.read_single(raw, env.infos.get(agent, {}))
                        x = group.policy_obs(np.asarray(obs), np.array([slot]), None)
                        critic = None
                        if group.spec.critic_obs_shape:
                            critic = np.zeros((1, group.spec.critic_obs_shape[0]), dtype=np.float32)  # unused by acting
                        name = group.group.name
                        state = states[name][slot:slot + 1] if group.policy.core is not None else None
                        action, _, _, new_state = group.act(x, None if mask is None else mask[None], critic, state,
                                                            fresh[name][slot:slot + 1], deterministic)
                        if new_state is not None:
                            states[name][slot] = new_state[0]
                        fresh[name][slot] = False
                        actions[agent] = group.to_env(action[0])
                    result = env.step(actions)
                    length += 1
                    for agent, r in result.rewards.items():
                        totals[agent] = totals.get(agent, 0.0) + r
                    for agent in result.ended:
                        group, slot = self._group_of(agent)
                        fresh[group.group.name][slot] = True
                    if result.over:
                        break
                returns.append(float(np.mean(list(totals.values()))) if totals else 0.0)
                lengths.append(length)
                for agent, total in totals.items():
                    per_agent[agent].append(total)
        finally:
            env.close()
            torch.random.set_rng_state(torch_state)
        return {
            "mean_return": float(np.mean(returns)) if returns else float("nan"),
            "std_return": float(np.std(returns)) if returns else float("nan"),
            "mean_length": float(np.mean(lengths)) if lengths else float("nan"),
            "episodes": len(returns), "deterministic": deterministic, "returns": returns,
            "agent_returns": {a: float(np.mean(v)) for a, v in per_agent.items() if v},
            "global_step": self.global_step,
        }

    # ------------------------------------------------------------------ saving and loading
    def _counters(self) -> dict[str, Any]:
        return {"global_step": self.global_step, "num_updates": self.num_updates}

    def _model_state(self) -> dict[str, Any]:
        return checkpointing.model_state(self.config, self.groups, self._counters())

    def save(self, path: str | Path) -> Path:
        """Write every group's policy (safetensors) and the run's metadata (JSON) to directory ``path``."""
        return save_model(path, checkpointing.tensors(self.groups), self._model_state())

    def checkpoint_path(self) -> Path:
        assert self.run_dir is not None
        return checkpoint_path(self.run_dir, self.num_updates)

    def save_checkpoint(self) -> Path:
        """A resumable checkpoint: weights, optimisers, RNGs, the collector's and the env copies' state."""
        assert self.run_dir is not None and self.collector is not None and self.envs is not None
        env_states, why = checkpointing.capture_envs(self.envs, self.config.env_id)
        own = {"rng": rng_state(), "collector": encode(self.collector.state_dict()), "env": env_states,
               "env_not_saved": why}
        per_rank = gather_rank_states(self.collective, own)
        path = self.checkpoint_path()
        if not self.collective.is_main:
            return path
        resume = {
            "format": checkpointing.FORMAT, "kind": checkpointing.KIND,
            "global_step": self.global_step, "num_updates": self.num_updates, "total_steps": self.total_steps,
            "best_eval_return": self.best_eval_return,
            "health": [m.state_dict() for m in self.health],
            **per_rank,
        }

        def write_resume(tmp: Path) -> None:
            (tmp / RESUME_FILE).write_text(json.dumps(resume) + "\n", encoding="utf-8")

        save_model(path, checkpointing.tensors(self.groups), self._model_state(), optimizer=_Optimizers(self.groups),  # type: ignore[arg-type]
                   extra=write_resume)
        prune_checkpoints(self.run_dir, self.config.keep_checkpoints)
        return path

    @classmethod
    def load(cls, path: str | Path, *, trust: bool = False, env: Callable[[], Any] | None = None,
             **overrides: Any) -> MultiAgentPPO:
        """Load a saved multi-agent policy (a model or checkpoint directory, or a run directory's
        ``model``). Envs are made from the saved ``env_id`` when needed; an id outside PettingZoo's and
        MPE2's own modules is imported only with ``trust=True`` or when you name it again (``env_id=``)."""
        from ppokit.control.checkpointing import find_model_dir

        model_dir = find_model_dir(path)
        state = checkpointing.read_state(model_dir)
        agent = cls.__new__(cls)
        agent.config = checkpointing.saved_config(model_dir, state, overrides)
        agent._factory = env
        agent._unvouched = (None if env is not None or trust or "env_id" in overrides
                            else str(model_dir / checkpointing.STATE_FILE))
        runtime.set_threads(agent.config.torch_threads)
        agent.device = runtime.resolve_device(agent.config.device)
        agent.collective = runtime.join_processes(agent.device, agent.config.dist_backend, agent.config.dist_timeout,
                                                  settings=agent.config)
        agent._setup(None, None, saved=checkpointing.saved_groups(model_dir, state))
        checkpointing.load_weights(model_dir, agent.groups)
        agent.global_step = int(state.get("global_step", 0))
        agent.num_updates = int(state.get("num_updates", 0))
        checkpointing.load_optimizers(model_dir, agent.groups, agent.device)
        return agent

    @classmethod
    def resume(cls, run_dir: str | Path, *, trust: bool = False, env: Callable[[], Any] | None = None,
               **overrides: Any) -> MultiAgentPPO:
        """The run in ``run_dir`` as of its latest checkpoint, ready for :meth:`learn` to continue."""
        fixed = sorted(set(overrides) - RESUMABLE_FIELDS - {"env_id"})
        if fixed:
            raise ConfigError(f"resuming {run_dir}: {', '.join(fixed)} shaped the run and cannot change on resume "
                              f"(only {', '.join(sorted(RESUMABLE_FIELDS))} can)")
        checkpoint = find_resumable(run_dir)
        agent = cls.load(checkpoint, trust=trust, env=env, **overrides)
        agent._restore_training(checkpoint, Path(run_dir))
        if "total_steps" in overrides:
            agent.total_steps = agent.config.total_steps
        return agent

    def restore_latest(self, run_dir: Path) -> bool:
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is not None:
            state = checkpointing.read_state(checkpoint)
            check_unchanged(checkpointing.saved_config(checkpoint, state, {}), self.config, RESUMABLE_FIELDS,
                            str(checkpoint))
            checkpointing.load_weights(checkpoint, self.groups)
            self.global_step = int(state.get("global_step", 0))
            self.num_updates = int(state.get("num_updates", 0))
            checkpointing.load_optimizers(checkpoint, self.groups, self.device)
            self._restore_training(checkpoint, run_dir)
            self.total_steps = self.config.total_steps
            return False
        if holds_run(run_dir):
            log.warning("%s holds a run stopped before its first checkpoint; starting it over", run_dir)
            return True
        return False

    def _restore_training(self, checkpoint: Path, run_dir: Path) -> None:
        resume = read_resume_state(checkpoint, checkpointing.KIND, checkpointing.FORMAT)
        file = checkpoint / RESUME_FILE
        check_world_size(resume, self.collective, file, "env copies and random state")
        try:
            saved = {**resume, **rank_state(resume, self.collective)}
            self.total_steps = saved["total_steps"]
            self.best_eval_return = saved["best_eval_return"]
            for monitor, health in zip(self.health, saved["health"]):
                monitor.load_state_dict(health)
            self._ensure_envs(reset=saved["env"] is None)
            assert self.collector is not None and self.envs is not None
            collector_state = decode(saved["collector"])
            if saved["env"] is not None:
                checkpointing.restore_envs(self.envs, saved["env"])
                self.collector.load_state_dict(collector_state)
            else:
                log.warning("resuming with fresh episodes, not bit-identically: %s", saved["env_not_saved"])
                self.collector.episodes.carry_over(collector_state["episodes"])
            set_rng_state(saved["rng"])
        except CheckpointError as err:
            raise CheckpointError(f"{file}: {err}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CheckpointError(f"{file}: bad or incompatible resume state ({type(err).__name__}: {err})") from None
        self.run_dir = run_dir
        self.resume_from = checkpoint

    def _ensure_envs(self, reset: bool = True) -> None:
        if self.collector is not None:
            return
        c = self.config
        local = local_num_envs(c, self.collective)
        self.envs = self._make_envs(local)
        self.collector = MultiAgentCollector(self.envs, self.groups, c.num_steps, c.gamma, c.clip_reward,
                                             c.critic == "mappo", self._env_seed(local, self.num_updates),
                                             c.bootstrap_truncation)
        if reset:
            self.collector.reset()
        else:
            self.collector._started = True

    def close(self) -> None:
        for env in self.envs or []:
            env.close()


class _Reading:
    """What the probe collector needs of a group before its policy exists: its agents and reader."""

    def __init__(self, group: Group, config: MultiAgentConfig) -> None:
        from ppokit.control.envs.observations import ObservationReader

        self.group = group
        self.agents = group.agents
        self.reader = ObservationReader(group.observation_space, group.action_space, config.action_mask_key,
                                        text=config.text_observations)
        self.obs_size = int(np.prod(self.reader.observation_space.shape or ()))
        self.device = torch.device("cpu")
        self.policy = _NoPolicy()

    def observation_only(self, raw: Any) -> np.ndarray:
        return np.asarray(self.reader.policy_observation(self.reader._actor_part(raw), None))


class _NoPolicy:
    def initial_state(self, n: int, device: Any) -> torch.Tensor:
        return torch.zeros(n, 0)


def checkpointing_needs_env(env_id: str) -> bool:
    return not env_id.startswith("<object") and imports_foreign_code(env_id)
