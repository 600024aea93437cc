"""PPO on Gymnasium environments: the public facade (learn, predict, evaluate, save, load, resume).

One update is the PPO paper's algorithm box::

    collect T steps from N envs with the current policy          (rollout.py)
    estimate advantages with GAE(γ, λ)                            (algorithm.py → core.advantages)
    K epochs of minibatch updates on the clipped surrogate       (algorithm.py → core.update)
    adapt β / ε, check the run's health                           (algorithm.py, core.health)

and :meth:`PPO.learn` runs updates in the one loop shell (:mod:`ppokit.io.loop`), which logs,
checkpoints and handles signals. The agent owns the parts (envs, policy, normalisers, algorithm,
collector, counters) and hands each helper the parts it uses: :mod:`.checkpointing` knows the saved
format, :mod:`.evaluation` and :mod:`.device_evaluation` play episodes, :mod:`.data_parallel` knows
what a run of several processes does differently.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppokit import runtime
from ppokit.configuration import adapted_notes, check_unchanged, replace
from ppokit.control import checkpointing, data_parallel, device_evaluation, fast
from ppokit.control.algorithm import PPOAlgorithm
from ppokit.control.checkpointing import Counters, Spaces
from ppokit.control.config import RESUMABLE_FIELDS, ControlConfig
from ppokit.control.data_parallel import local_num_envs
from ppokit.control.envs import torch_source
from ppokit.control.envs.make import check_spaces, consent_flags
from ppokit.control.envs.observations import (
    ObservationReader,
    as_policy_input,
    observation_layout,
    predict_mask,
    split_dict_observation,
)
from ppokit.control.envs.source import EnvSource, given_for_evaluation
from ppokit.control.envs.torch_source import TorchEnvSource
from ppokit.control.evaluation import EvaluationEnvs, eval_vectorization, run_evaluation
from ppokit.control.evaluation_checks import deterministic_gap
from ppokit.control.policy.actions import ActionAdapter, all_discrete, first_of
from ppokit.control.policy.networks import (
    DEFAULT_IMAGE_SCALE,
    ActorCritic,
    PolicySpec,
    check_image_values,
    is_image_space,
)
from ppokit.control.rollout.collectors import Collector, make_collector
from ppokit.control.rollout.host import RolloutCollector, check_recurrent_inputs, observation_batch, policy_input
from ppokit.core.collective import on_main
from ppokit.core.health import HealthMonitor
from ppokit.core.running_stats import RunningMeanStd
from ppokit.errors import CheckpointError, ConfigError, EnvError, ObservationError
from ppokit.io.atomic import atomic_write_json
from ppokit.io.checkpoints import BEST, checkpoint_path, find_resumable, latest_checkpoint
from ppokit.io.loop import Callback, LoopPlan, run_loop
from ppokit.io.metrics import MetricsLogger, NullMetrics
from ppokit.io.run_dir import default_run_dir, holds_run, open_run

log = logging.getLogger("ppokit")

def check_budget(total_steps: int, done: int, run_dir: Path) -> None:
    """A resumed run's budget may grow, never fall below the steps it has done: its config.yaml
    would then record a total it has passed (``ppokit info``: "32,768 of 1,024 env steps")."""
    if total_steps < done:
        raise ConfigError(f"resuming {run_dir}: total_steps {total_steps:,} is below the {done:,} env steps the run "
                          f"has already done; give it (--total-steps) {done:,} or more")


class PPO:
    """Proximal Policy Optimization for a Gymnasium environment.

    >>> agent = PPO(ControlConfig(env_id="CartPole-v1", total_steps=50_000)).learn()   # doctest: +SKIP
    >>> action = agent.predict(obs)                                                   # doctest: +SKIP
    """

    def __init__(self, config: ControlConfig | None = None, env: Any = None, **overrides: Any) -> None:
        """``env``: an id or an env object (see :mod:`ppokit.control.envs.source`; a torch env,
        :mod:`ppokit.control.envs.torch_env`) instead of ``env_id``."""
        config = config or ControlConfig()
        # env_kwargs given beside the env (PPO(config, env=Cls, env_kwargs={...})) are the ones it is made with.
        env_kwargs = dict(overrides.get("env_kwargs", config.env_kwargs))
        given = torch_source.given(env, env_kwargs) if env is not None else None
        if given is not None:
            overrides = torch_source.given_overrides(given, overrides)
        notes = adapted_notes(config)
        if overrides:
            config = replace(config, source="PPO(...)", **overrides)
            notes += adapted_notes(config)
        for note in notes:
            log.info("adapted %s", note)
        self.config = config
        #: Where the envs come from. A config given in code or on the command line is trusted; one read
        #: back from a file (load, resume) only with the user's consent.
        self.env_source: EnvSource = torch_source.for_config(config, given)
        if config.eval_episodes or config.eval_every:  # refused now, not after the budget is spent
            self.env_source.require_evaluation()
        self.device = runtime.setup(config.seed, config.device, config.torch_threads)
        #: The processes of a data-parallel run (one process: a no-op); see data_parallel.
        self.collective = runtime.join_processes(self.device, config.dist_backend, config.dist_timeout,
                                                     settings=config)
        #: The training vector env; None after :meth:`load` until :meth:`learn` makes one.
        self.env: Any = self.env_source.training(local_num_envs(config, self.collective), config.vectorization)
        reader = ObservationReader.for_env(self.env, config.action_mask_key, text=config.text_observations)
        for key in reader.dropped:
            log.warning("observation key %r holds text, which the policy cannot read: left out "
                        "(text_observations: refuse makes this an error)", key)
        check_spaces(reader.observation_space, self.env.single_action_space, config.env_id)
        self.env_observation_space = reader.env_space  # what the env gives, less any mask (and text)
        self._build(reader.observation_space, self.env.single_action_space, action_mask=reader.in_observation,
                    critic_shape=getattr(reader.critic_observation_space, "shape", ()))
        self.ensure_env()

    def _build(self, observation_space: Any, action_space: Any, action_mask: bool = False,
               critic_shape: tuple[int, ...] = ()) -> None:
        self.config = c = self.config.for_actions(all_discrete(action_space))  # fields left to the actions
        self.observation_space, self.action_space = observation_space, action_space
        env_space = self.env_observation_space
        layout = observation_layout(env_space) if env_space is not observation_space else ()
        spec = PolicySpec.from_spaces(
            observation_space, action_space, network=c.network, hidden_sizes=c.hidden_sizes,
            activation=c.activation, shared_trunk=c.shared_trunk, ortho_init=c.ortho_init,
            log_std_init=c.log_std_init, action_mask=action_mask, critic_obs_shape=critic_shape,
            recurrent=c.recurrent, recurrent_size=c.recurrent_size, obs_parts=layout,
            image_scale=c.image_scale or DEFAULT_IMAGE_SCALE,
        )
        #: Whether to look at the first rollout's image values: image_scale was left to its default.
        self._check_image_scale = c.image_scale is None and spec.encoder != "mlp"
        if self._check_image_scale:  # recorded as the number it is (config.yaml, checkpoints)
            self.config = c = dataclasses.replace(c, image_scale=spec.image_scale)
        self.policy = ActorCritic(spec).to(self.device)
        # Builds the optimiser, which may move the parameters into one buffer: before any NumPy views.
        self.algorithm = PPOAlgorithm(c, self.policy, self.device, self.collective, on_device=self.torch_env)
        image = is_image_space(observation_space)
        self.obs_rms = RunningMeanStd(tuple(observation_space.shape)) if c.normalize_obs and not image else None
        if self.obs_rms is not None:  # image values inside a Dict observation: the CNN scales them
            self.obs_rms.keep_entries(spec.image_entries())
        self.ret_rms = RunningMeanStd(()) if c.normalize_reward else None
        self.to_env = ActionAdapter(action_space)
        self.numpy_policy = None
        if c.update_backend != "torch" and not self.torch_env and fast.refusal(spec, self.device) is None:
            from ppokit.control.fast.policy import NumpyPolicy

            self.numpy_policy = NumpyPolicy(self.policy)
        self.health = HealthMonitor(
            target_kl=c.target_kl or (c.kl_target if (c.adaptive_kl and c.loss == "penalty") or c.adaptive_clip else None),
            normalize_reward=c.normalize_reward, shared_trunk=spec.shared_trunk,
        )
        self._predict_rng = np.random.default_rng([c.seed, 3])
        #: The envs of the periodic evaluations, kept from the first to the end of learn().
        self._eval_envs = EvaluationEnvs(self.env_source, eval_vectorization(c))
        self.global_step = 0
        self.num_updates = 0
        self.run_dir: Path | None = None
        self.collector: Collector | None = None
        #: Total steps of the current (or resumed) learn() call; sets the schedules' progress.
        self.total_steps: int | None = None
        self.best_eval_return: float | None = None
        self.resume_from: Path | None = None  # the checkpoint restored from, until learn() goes on
        #: The evaluation that reached ``stop_at_return``, and where learn() started (step, time).
        self._final_eval: dict[str, Any] | None = None
        self._start = (0, time.perf_counter())
        self._fraction = 0.0
        data_parallel.start(self.collective, self.policy, c.seed, (self.obs_rms, self.ret_rms))

    @property
    def torch_env(self) -> bool:
        """Whether the run trains on a torch env, its rollout kept on the env's device."""
        return isinstance(self.env_source, TorchEnvSource)

    @property
    def global_batch(self) -> int:
        """Env steps per update, over every process."""
        return self.config.global_batch_size(self.collective.world_size)

    # ------------------------------------------------------------------ training
    def learn(
        self,
        total_steps: int | None = None,
        *,
        run_dir: str | Path | None = None,
        overwrite: bool = False,
        resume: bool = False,
        callback: Callback | None = None,
    ) -> PPO:
        """Train until ``total_steps`` environment steps (default: the config's), then save and evaluate.

        Writes the run directory. ``resume=True`` continues the run in ``run_dir`` from its latest
        checkpoint (bit-identically where the envs' state could be saved), or starts it. SIGINT or
        SIGTERM end the current update, save a checkpoint and raise ``TrainingInterrupted``.
        ``callback`` gets each update's metrics row; returning False stops training.
        """
        c, main = self.config, self.collective.is_main
        if self.resume_from is not None and self.run_dir is not None:
            directory = self.run_dir  # made by PPO.resume
        else:  # rank 0's (a default name holds the time)
            directory = self.collective.broadcast_object(Path(run_dir or c.run_dir or default_run_dir(c.env_id, c.seed)))
        if resume and self.resume_from is None:
            if run_dir is None and c.run_dir is None:
                raise ConfigError("resume=True needs the run directory to resume (run_dir)")
            overwrite = self.restore_latest(directory) or overwrite
        resuming = self.resume_from is not None
        if total_steps is not None:
            total = int(total_steps)
        elif resuming and self.total_steps is not None:
            total = self.total_steps
        else:
            total = c.total_steps
        if resuming:
            check_budget(total, self.global_step, directory)
        # Never exceed the step budget: a partial rollout at the end would be a different batch size.
        num_updates = max(0, (total - self.global_step) // self.global_batch)
        if total >= self.global_batch:
            planned = replace(c, total_steps=total)
            for note in planned.advice():
                log.warning("%s", note)
            rounding = planned.rounding_note(self.collective.world_size)
            if rounding and not resuming:
                log.info("%s", rounding)
        if num_updates == 0 and self.global_step == 0:
            raise ConfigError(
                f"total_steps = {total} is less than one rollout (num_envs * num_steps = "
                f"{c.num_envs} * {c.num_steps} = {c.batch_size}); nothing would be trained"
            )
        metrics = self.open_run(directory, total, overwrite)
        plan = LoopPlan(
            updates=num_updates, desc=c.env_id, checkpoint_every=c.checkpoint_every,
            checkpoint_minutes=c.checkpoint_minutes, x_axis=lambda record: int(record["global_step"]),
            progress=c.progress and main, unit="step", total=self.global_step + num_updates * self.global_batch,
            position=lambda: self.global_step,
            postfix=lambda r: {"ret": "-" if r["episodic_return"] is None else f"{r['episodic_return']:.1f}"},
            agree=self.collective.any,
            # A 'module:Env' id is imported on resume only when named again: the printed command does.
            resume_flags=consent_flags(c.env_id, c.env_spec, c.env_wrappers)
            + f" --nproc {self.collective.world_size}" * self.collective.active,
        )
        with metrics:  # open until the model and evaluation are written, so the trackers get them
            try:
                run_loop(self, plan, metrics, callback)
            finally:
                self._eval_envs.close()
            if main:  # the weights are the same on every rank
                self.finish_run(metrics)
            self.resume_from = None
            self.collective.barrier()  # so that on every rank, learn() returns with the model saved
        return self

    def open_run(self, directory: Path, total_steps: int, overwrite: bool = False) -> MetricsLogger:
        """Start (or, after a restore, continue) the run in ``directory`` towards ``total_steps`` env
        steps: make the envs, write config.yaml, open the metrics (rank 0; the other ranks log nothing)."""
        c = self.config
        resuming = self.resume_from is not None
        self.ensure_env()
        self.total_steps = total_steps
        launch = {"world_size": self.collective.world_size, "global_batch_size": self.global_batch}
        self.run_dir, metrics = on_main(self.collective, lambda: open_run(
            directory, replace(c, total_steps=total_steps, run_dir=str(directory)), overwrite=overwrite,
            resume_update=self.num_updates if resuming else None,
            purge_step=self.global_step + 1 if resuming else None,
            launch=launch if self.collective.active else None,
        ), lambda: (directory, NullMetrics()))
        self._final_eval = None
        self._start = (self.global_step, time.perf_counter())
        return metrics

    def finish_run(self, metrics: MetricsLogger) -> None:
        """The end of a run: save the model and the final evaluation (eval.json), and give them to the
        trackers (``metrics``). The evaluation that reached ``stop_at_return`` is the final one."""
        assert self.run_dir is not None
        c = self.config
        self.save(self.run_dir / "model")
        result = self._final_eval
        if result is None and c.eval_episodes > 0:
            result = self.evaluate(c.eval_episodes, deterministic=c.eval_deterministic)
        if result is not None:
            # The argmax of a policy that solves its task by sampling can loop: say so, once, where
            # the user reads the result (the log and eval.json), with how to evaluate sampling.
            recent = getattr(self.collector, "episodes", None)
            gap = deterministic_gap(result, list(recent.returns) if recent is not None else [], self.action_space,
                                    str(self.run_dir))
            if gap is not None:
                log.warning("%s", gap["deterministic_warning"])
                result = {**result, **gap}
            atomic_write_json(self.run_dir / "eval.json", result)
        metrics.finish({f"eval/{k}": v for k, v in (result or {}).items()}, self.run_dir / "model")

    def update(self) -> dict[str, Any]:
        """One update: collect a rollout, estimate advantages, run the K epochs; its metrics row."""
        batch, fraction = self.begin_update()
        return self.end_update(self.algorithm.train(batch, fraction))

    def begin_update(self) -> tuple[Any, float]:
        """The first half of :meth:`update`: collect a rollout and estimate its advantages; the batch
        for the K epochs and the fraction of training done."""
        assert self.collector is not None
        fraction = self.global_step / self.total_steps if self.total_steps else 0.0
        rollout = self.collector.collect()
        if self._check_image_scale:
            self._check_image_scale = False
            check_image_values(self.policy.spec, rollout.obs)
        data_parallel.sync_normalisers(self.collective, (self.obs_rms, self.ret_rms))
        self.global_step += self.global_batch
        self._fraction = fraction  # the health check's, in end_update
        return self.algorithm.batch(rollout), fraction

    def end_update(self, stats: dict[str, Any]) -> dict[str, Any]:
        """The second half of :meth:`update`, given the K epochs' statistics: the metrics row."""
        assert self.collector is not None
        self.num_updates += 1
        episodes = self.collector.episodes
        record: dict[str, Any] = {"global_step": self.global_step, "update": self.num_updates}
        if isinstance(self.collector, RolloutCollector) and self.collective.active:
            record.update(data_parallel.episode_figures(episodes, self.collective))
        else:
            record.update(episodic_return=float(np.mean(episodes.returns)) if episodes.returns else None,
                          episodic_length=float(np.mean(episodes.lengths)) if episodes.lengths else None,
                          episodes=len(episodes.last[0]))
        record.update(stats)
        self.health.check(record, self._fraction, self.num_updates)
        return record

    def after_update(self, record: dict[str, Any]) -> bool:
        """Throughput, and the periodic evaluation; True once it reaches ``stop_at_return``."""
        c = self.config
        start_step, start_time = self._start
        elapsed = time.perf_counter() - start_time
        record["sps"] = (self.global_step - start_step) / max(elapsed, 1e-9)
        record["time_elapsed"] = elapsed
        if not (c.eval_every and self.num_updates % c.eval_every == 0) or not self.collective.is_main:
            return False  # rank 0 evaluates; the loop shares its decision
        # A new seed per evaluation, so "best" is not chosen on one fixed set of start states.
        result = self.evaluate(c.eval_episodes, deterministic=c.eval_deterministic,
                               seed=c.seed + 10_000 + self.num_updates, env=self._eval_envs.get(c.eval_episodes))
        if self.best_eval_return is None or result["mean_return"] > self.best_eval_return:
            self.best_eval_return = result["mean_return"]
            assert self.run_dir is not None
            checkpointing.save_best(self.run_dir / BEST, self._tensors(), self._model_state(), result)
        record["eval_return"] = result["mean_return"]
        if c.stop_at_return is None or result["mean_return"] < c.stop_at_return:
            return False
        self._final_eval = result
        log.info("update %d: evaluation mean return %.2f reached stop_at_return %.2f; stopping",
                 self.num_updates, result["mean_return"], c.stop_at_return)
        return True

    # ------------------------------------------------------------------ acting
    def predict(self, obs: np.ndarray, deterministic: bool = True, rng: np.random.Generator | None = None,
                action_mask: np.ndarray | None = None, state: Any = None, episode_start: Any = None, *,
                action_masks: np.ndarray | None = None) -> Any:
        """Actions for one observation or a batch, in the env's format (clipped to Box bounds);
        ``action_mask`` (a boolean per action, or a batch of them) rules actions out; ``action_masks``
        is the same under sb3-contrib's name (``predict(obs, action_masks=env.action_masks())``). A recurrent
        policy returns ``(actions, state)``: pass the state back in, and ``episode_start`` where an
        episode begins. Fast-path policies draw from ``rng`` (default: the agent's own generator).
        Torch observations (a torch env's) give torch actions, on the policy's device."""
        if action_masks is not None:
            if action_mask is not None:
                raise ObservationError("predict: action_mask and action_masks were both given; they are one argument "
                                       "under two names (ppokit's and sb3-contrib's): give one")
            action_mask = action_masks
        if isinstance(obs, torch.Tensor) and self.torch_env:
            if action_mask is not None:
                raise ObservationError("predict: action_mask was given, but a torch env's policy acts unmasked")
            return device_evaluation.predict(self.policy, self.obs_rms, self.config.clip_obs,
                                             (self.observation_space, self.action_space), self.device, obs, deterministic)
        obs, action_mask = split_dict_observation(obs, action_mask, self.env_observation_space,
                                                  self.config.action_mask_key)
        obs = as_policy_input(self.env_observation_space, self.observation_space, obs)  # a Dict, Tuple, ... one
        batch, single = observation_batch(obs, self.observation_space)
        if action_mask is not None:
            action_mask = predict_mask(action_mask, self.action_space, len(batch), single)
        if self.policy.core is not None:
            check_recurrent_inputs(state, episode_start, len(batch), self.policy.state_size, self.policy.spec.recurrent)
        image = self.observation_space.dtype == np.uint8
        x = policy_input(batch, self.obs_rms, self.config.clip_obs, image=image)
        action: np.ndarray | torch.Tensor
        if self.numpy_policy is not None and action_mask is None and not self.policy.spec.action_mask:
            action = self.numpy_policy.action(x, rng or self._predict_rng, deterministic)
        else:
            mask = None if action_mask is None else torch.as_tensor(action_mask, device=self.device)
            with torch.inference_mode():
                if self.policy.core is not None:
                    action, state = self.policy.recurrent_action(
                        torch.as_tensor(x, device=self.device), state, episode_start, mask, deterministic)
                else:
                    action = self.policy.action(torch.as_tensor(x, device=self.device), deterministic, mask)
        out = self.to_env(action)
        out = first_of(out) if single else out
        return (out, state) if self.policy.core is not None else out

    def evaluate(
        self, episodes: int = 20, deterministic: bool = True, seed: int | None = None,
        video_dir: str | Path | None = None, env: Any = None,
    ) -> dict[str, Any]:
        """Mean and std of the return over ``episodes`` fresh episodes, as written to eval.json.

        ``env``: a vector env of this task to play them in (reset with ``seed``), or one
        ``gymnasium.Env`` (played as a vector env of one), checked as a training env object is; by
        default one is made for the call and closed after it."""
        seed = self.config.seed + 10_000 if seed is None else seed
        if self.torch_env:  # batched episodes on the env's device
            return {**self._evaluate_on_device(episodes, deterministic, seed, video_dir, env),
                    "global_step": self.global_step}
        rng = np.random.default_rng([seed, 2])
        if env is not None:
            env = given_for_evaluation(env)

        memory: dict[str, Any] = {"state": None}  # a recurrent policy's state across the evaluation's steps

        def act(obs: np.ndarray, det: bool, mask: np.ndarray | None, starts: np.ndarray) -> np.ndarray:
            if self.policy.core is None:
                return self.predict(obs, det, rng, action_mask=mask)
            action, memory["state"] = self.predict(obs, det, rng, mask, memory["state"], starts)
            return action

        result = run_evaluation(act, self.env_source, self.config, episodes, deterministic=deterministic, seed=seed,
                                video_dir=video_dir, env=env, policy_spaces=(self.observation_space, self.action_space))
        result["global_step"] = self.global_step  # which policy was evaluated
        return result

    # ------------------------------------------------------------------ saving and loading
    def _evaluate_on_device(self, episodes: int, deterministic: bool, seed: int, video_dir: Any,
                            env: Any) -> dict[str, Any]:
        """Evaluate on a torch env: ``env``, else new envs from the run's source, else (an env object that
        cannot be made again) the training env, whose episodes then start over."""
        if video_dir is not None:
            raise EnvError("video recording needs a Gymnasium env; a torch env has no single-env form")
        owned = env is None and self.env_source.can_make
        if owned:
            env = self.env_source.evaluation(episodes)
        elif env is None:
            if self.env is None:
                self.env = self.env_source.training(self.config.num_envs, self.config.vectorization)
            env = self.env
            if self.collector is not None:
                log.info("evaluating on the training env (an env object ppokit cannot make more of); its episodes "
                         "start over")
                self.collector.restart()
        try:
            return device_evaluation.evaluate(self.policy, self.obs_rms, self.config.clip_obs,
                                              (self.observation_space, self.action_space), self.device, env,
                                              self.config.env_id, episodes, deterministic, seed)
        finally:
            if owned:
                env.close()

    def _spaces(self) -> Spaces:
        return Spaces(self.observation_space, self.action_space, self.env_observation_space)

    def _tensors(self) -> dict[str, torch.Tensor]:
        return checkpointing.policy_tensors(self.policy, self.obs_rms, self.ret_rms)

    def _model_state(self) -> dict[str, Any]:
        return checkpointing.model_state(self.config, self._spaces(), self.policy, self._counters(), self.torch_env,
                                         self.algorithm.state_dict())

    def _counters(self) -> Counters:
        return Counters(self.global_step, self.num_updates, self.total_steps, self.best_eval_return)

    def save(self, path: str | Path) -> Path:
        """Write the policy (safetensors) and its metadata (JSON) to directory ``path``, atomically."""
        return checkpointing.save_model(path, self._tensors(), self._model_state())

    def save_checkpoint(self) -> Path:
        """A resumable checkpoint ``RUN_DIR/checkpoints/update_<N>`` (weights, optimizer, RNGs, envs,
        counters); keeps the newest ``keep_checkpoints``."""
        assert self.run_dir is not None and self.collector is not None and self.env is not None
        own = checkpointing.rollout_state(self.env, self.collector, self.torch_env)
        return checkpointing.save_checkpoint(
            self.run_dir, self._tensors(), self._model_state(), self.algorithm.optimizer, self._counters(),
            self.health.state_dict(), own, self.collective, self.config.keep_checkpoints)

    def checkpoint_path(self) -> Path:
        assert self.run_dir is not None
        return checkpoint_path(self.run_dir, self.num_updates)

    @classmethod
    def load(cls, path: str | Path, *, trust: bool = False, env: Any = None, **overrides: Any) -> PPO:
        """Load a saved policy from a model or checkpoint directory, or a run directory (its ``model``).

        The env is made from the saved config when needed (``overrides`` may change ``num_envs``,
        ``device``, …). A ``'module:Env'`` id from the file is made only if you name it again
        (``env_id=...``) or pass ``trust=True``: loading a downloaded directory must not run code.
        ``env``: an env object to evaluate and train on, as for the constructor.
        """
        model_dir = checkpointing.find_model_dir(path)
        state = checkpointing.read_state(model_dir)
        agent = cls.__new__(cls)
        agent.config = checkpointing.saved_config(model_dir, state, overrides)
        agent.env_source = torch_source.for_config(
            agent.config, torch_source.given(env, agent.config.env_kwargs) if env is not None else None,
            trusted=trust or "env_id" in overrides, where=str(model_dir / checkpointing.STATE_FILE),
            torch_env=bool(state.get("torch_env", False)))
        runtime.set_threads(agent.config.torch_threads)
        agent.device = runtime.resolve_device(agent.config.device)
        agent.collective = runtime.join_processes(agent.device, agent.config.dist_backend,
                                                  agent.config.dist_timeout, settings=agent.config)
        agent.env = None  # made on demand by learn()
        spaces = checkpointing.saved_spaces(model_dir, state)
        agent.env_observation_space = spaces.env_observation
        agent._build(spaces.observation, spaces.action, action_mask=bool(state.get("action_mask", False)),
                     critic_shape=tuple(state.get("critic_obs_shape") or ()))
        agent._load_weights(model_dir, state)
        return agent

    def _load_weights(self, model_dir: Path, state: dict[str, Any]) -> None:
        """Weights, normaliser statistics, counters, controllers and (if saved) optimiser state."""
        checkpointing.load_policy(model_dir, self.policy, self.obs_rms, self.ret_rms)
        counters = checkpointing.saved_counters(model_dir, state)
        self.global_step, self.num_updates = counters.global_step, counters.num_updates
        self.algorithm.load_state_dict(state, str(model_dir / checkpointing.STATE_FILE))
        checkpointing.load_optimizer(model_dir, self.algorithm.optimizer, self.device)

    @classmethod
    def resume(cls, run_dir: str | Path, *, trust: bool = False, env: Any = None, **overrides: Any) -> PPO:
        """The run in ``run_dir`` as of its latest checkpoint, ready for :meth:`learn` to continue.

        ``overrides`` change config fields for the rest of the run (``progress``, ``device``, …);
        changing ones that shape the batch breaks exactness. ``trust`` as for :meth:`load`.
        """
        fixed = sorted(set(overrides) - RESUMABLE_FIELDS - {"env_id"})
        if fixed:
            raise ConfigError(f"resuming {run_dir}: {', '.join(fixed)} shaped the run and cannot change on resume "
                              f"(only {', '.join(sorted(RESUMABLE_FIELDS))} can)")
        checkpoint = find_resumable(run_dir)
        saved_env = checkpointing.read_state(checkpoint)["config"].get("env_id")
        if "env_id" in overrides and overrides["env_id"] != saved_env:
            raise ConfigError(f"resuming {run_dir}: the run trains on {saved_env!r}, not {overrides['env_id']!r}")
        agent = cls.load(checkpoint, trust=trust, env=env, **overrides)
        agent._restore_training(checkpoint, Path(run_dir))
        if "total_steps" in overrides:
            agent.total_steps = agent.config.total_steps
        return agent

    def restore_latest(self, run_dir: Path) -> bool:
        """``learn(resume=True)``: restore the run's latest checkpoint into this freshly built agent. A
        run stopped before its first checkpoint has nothing to continue from: returns True (start it over)."""
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is not None:
            state = checkpointing.read_state(checkpoint)
            check_unchanged(checkpointing.saved_config(checkpoint, state, {}), self.config, RESUMABLE_FIELDS,
                            str(checkpoint))
            self._load_weights(checkpoint, state)
            self._restore_training(checkpoint, run_dir)
            self.total_steps = self.config.total_steps  # the budget given now, not the one saved
            return False
        if holds_run(run_dir):
            log.warning("%s holds a run stopped before its first checkpoint; starting it over", run_dir)
            return True
        return False

    def _restore_training(self, checkpoint: Path, run_dir: Path) -> None:
        """The state beyond the weights: counters, health, envs, collector, RNGs (``resume.json``)."""
        saved = checkpointing.read_resume(checkpoint, self.collective)
        self.total_steps, self.best_eval_return = saved.counters.total_steps, saved.counters.best_eval_return
        try:
            self.health.load_state_dict(saved.health)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CheckpointError(f"{saved.file}: bad or incompatible resume state ({type(err).__name__}: {err})") from None
        # No reset when the env state is restored: a reset would feed its observations into the
        # restored normalisation statistics.
        self.ensure_env(reset=not saved.envs_saved)
        assert self.collector is not None
        checkpointing.restore_rollout(saved, self.env, self.collector, self.torch_env)
        self.run_dir = run_dir
        self.resume_from = checkpoint

    def ensure_env(self, reset: bool = True) -> None:
        """Create the training env if needed (after :meth:`load`) and start collecting from it.

        Envs are seeded with ``seed + num_updates`` so a loaded agent does not replay the episodes
        its first run began with. ``reset=False`` leaves that to a state restore.
        """
        if self.collector is not None:
            return
        c = self.config
        local_envs = local_num_envs(c, self.collective)
        if self.env is None:
            self.env = self.env_source.training(local_envs, c.vectorization)
        self.collector = make_collector(
            self.env, self.policy, c, self.device, numpy_policy=self.numpy_policy, obs_rms=self.obs_rms,
            ret_rms=self.ret_rms, data_parallel=self.collective.active, can_make_envs=self.env_source.can_make)
        if reset:
            self.collector.reset(seed=data_parallel.env_seed(c, local_envs, self.collective.rank, self.num_updates))

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
        self._eval_envs.close()
