"""PPO on Gymnasium environments: the training loop, saving, loading and acting.

The loop is the PPO paper's algorithm box::

    for each update:
        collect T steps from N envs with the current policy          (rollout.py)
        estimate advantages with GAE(γ, λ)                            (core.advantages)
        K epochs of minibatch updates on the clipped surrogate       (core.update)
        adapt β / ε, log diagnostics, checkpoint                      (here)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ppokit import __version__
from ppokit.configuration import from_mapping, replace, to_dict
from ppokit.control.config import PPOConfig
from ppokit.control.envs import check_spaces, make_vector_env
from ppokit.control.evaluation import evaluate_policy, record_video
from ppokit.control.networks import ActorCritic
from ppokit.control.numpy_policy import NumpyPolicy
from ppokit.control.numpy_update import NumpyMinibatchStep
from ppokit.control.rollout import ActionAdapter, Rollout, RolloutCollector, policy_input
from ppokit.control.spaces_json import space_from_json, space_to_json
from ppokit.core.advantages import gae
from ppokit.core.diagnostics import explained_variance, health_warnings
from ppokit.core.kl import AdaptiveClipController, AdaptiveKLController, kl_k3
from ppokit.core.optim import FlatAdam
from ppokit.core.running_stats import RunningMeanStd
from ppokit.core.schedules import make_schedule
from ppokit.core.update import PPOUpdateSettings, ppo_update, run_epochs
from ppokit.control.env_state import capture_env_state, restore_env_state
from ppokit.errors import CheckpointError, ConfigError, TrainingError, TrainingInterrupted
from ppokit.io.atomic import atomic_write_dir, atomic_write_json, atomic_write_text, recover_dir
from ppokit.io.checkpoints import (
    BEST,
    RESUME_FILE,
    checkpoint_due,
    checkpoint_path,
    find_resumable,
    latest_checkpoint,
    load_torch_state,
    prune_checkpoints,
    read_resume_state,
)
from ppokit.io.interrupt import StopOnSignal
from ppokit.io.metrics import MetricsLogger, truncate_metrics
from ppokit.io.rng import rng_state, set_rng_state
from ppokit.io.run_dir import default_run_dir, holds_run, prepare_run_dir
from ppokit.io.state_codec import decode, encode

log = logging.getLogger("ppokit")

CHECKPOINT_FORMAT = 1
#: Version of resume.json, the training state beyond the weights (RNGs, envs, counters).
RESUME_FORMAT = 1
MODEL_FILE = "model.safetensors"
#: Periodic evaluations run their episodes in parallel in up to this many envs.
MAX_EVAL_ENVS = 32
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
#: Consecutive updates a health check must fail before it is reported on the console.
WARN_AFTER = 3

#: Called after every update with the trainer and that update's metrics; return False to stop.
Callback = Callable[["PPO", dict[str, Any]], bool | None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config field 'device' = {name!r}: CUDA is not available on this machine")
    return torch.device(name)


class PPO:
    """Proximal Policy Optimization for a Gymnasium environment.

    >>> agent = PPO(PPOConfig(env_id="CartPole-v1", total_steps=50_000))   # doctest: +SKIP
    >>> agent.learn()                                                     # doctest: +SKIP
    >>> action = agent.predict(obs)                                       # doctest: +SKIP
    """

    def __init__(self, config: PPOConfig | None = None, **overrides: Any) -> None:
        config = config or PPOConfig()
        if overrides:
            config = replace(config, source="PPO(...)", **overrides)
        self._set_runtime(config)
        torch.manual_seed(config.seed)
        np.random.seed(config.seed)

        self.env = make_vector_env(config.env_id, config.num_envs, config.env_kwargs, config.vectorization)
        check_spaces(self.env.single_observation_space, self.env.single_action_space, config.env_id)
        self._build(self.env.single_observation_space, self.env.single_action_space)
        self.ensure_env()

    # ------------------------------------------------------------------ construction
    def _set_runtime(self, config: PPOConfig) -> None:
        self.config = config
        if config.torch_threads > 0:
            torch.set_num_threads(config.torch_threads)
        self.device = resolve_device(config.device)

    def _build(self, observation_space: Any, action_space: Any) -> None:
        c = self.config
        self.observation_space, self.action_space = observation_space, action_space
        self.policy = ActorCritic(
            observation_space, action_space, network=c.network, hidden_sizes=c.hidden_sizes,
            activation=c.activation, shared_trunk=c.shared_trunk, ortho_init=c.ortho_init,
            log_std_init=c.log_std_init,
        ).to(self.device)
        self.optimizer = FlatAdam(self.policy.parameters(), lr=c.learning_rate, eps=c.adam_eps)
        image = observation_space.dtype == np.uint8 and len(observation_space.shape) == 3
        self.obs_rms = RunningMeanStd(tuple(observation_space.shape)) if c.normalize_obs and not image else None
        self.ret_rms = RunningMeanStd(()) if c.normalize_reward else None
        self.lr_schedule = make_schedule(c.lr_schedule, c.learning_rate)
        self.clip_schedule = make_schedule(c.clip_schedule, c.clip_range)
        self.kl_controller = (
            AdaptiveKLController(c.kl_coef, c.kl_target) if c.loss == "penalty" and c.adaptive_kl else None
        )
        self.clip_controller = AdaptiveClipController(c.clip_range, c.kl_target) if c.adaptive_clip else None
        self.to_env = ActionAdapter(action_space)
        # After the optimiser: FlatAdam moves the parameters, and the NumPy views must see the moved ones.
        self.numpy_policy = NumpyPolicy(self.policy) if NumpyPolicy.supports(self.policy, self.device) else None
        # The same small-MLP-on-a-CPU case: the minibatch loss and its gradient in NumPy.
        self.numpy_update = NumpyMinibatchStep.supports(self.policy, self.device, self.optimizer)
        self._predict_rng = np.random.default_rng([c.seed, 3])
        self._eval_env: Any = None
        self.global_step = 0
        self.num_updates = 0
        self.run_dir: Path | None = None
        self._initial_entropy: float | None = None
        self._warned: set[str] = set()
        self._streaks: dict[str, int] = {}
        self.collector: RolloutCollector | None = None
        #: Total steps of the current (or resumed) learn() call; sets the schedules' progress.
        self.total_steps: int | None = None
        self.best_eval_return: float | None = None
        self._last_checkpoint_time = time.monotonic()
        self._resume_from: Path | None = None

    @property
    def kl_coef(self) -> float:
        return self.kl_controller.beta if self.kl_controller is not None else self.config.kl_coef

    def current_clip_range(self, fraction: float) -> float:
        if self.clip_controller is not None:
            return self.clip_controller.clip_range
        return self.clip_schedule(fraction)

    # ------------------------------------------------------------------ training
    def learn(
        self,
        total_steps: int | None = None,
        *,
        run_dir: str | Path | None = None,
        overwrite: bool = False,
        resume: bool = False,
        callback: Callback | None = None,
    ) -> "PPO":
        """Train until ``total_steps`` environment steps (default: the config's), then save and evaluate.

        Writes the run directory (config, metrics, TensorBoard, checkpoints, final model, eval.json).
        ``resume=True`` continues the run in ``run_dir`` from its latest checkpoint when it has one
        (and starts it when the directory holds no run yet), bit-identically to an uninterrupted run
        where the environments' state could be saved. SIGINT or SIGTERM end the current update,
        save a checkpoint and raise :class:`~ppokit.errors.TrainingInterrupted`.
        """
        c = self.config
        if self._resume_from is not None and self.run_dir is not None:
            directory = self.run_dir  # made by PPO.resume
        else:
            directory = Path(run_dir or c.run_dir or default_run_dir(c.env_id, c.seed))
        if resume and self._resume_from is None:
            if run_dir is None and c.run_dir is None:
                raise ConfigError("resume=True needs the run directory to resume (run_dir)")
            checkpoint = latest_checkpoint(directory)
            if checkpoint is not None:
                self._restore_checkpoint(checkpoint, directory)
            elif holds_run(directory):
                raise CheckpointError(
                    f"run directory {str(directory)!r} holds a run but no checkpoint to resume from; "
                    "pass --overwrite (overwrite=True) to start over in it"
                )
        resuming = self._resume_from is not None
        self.ensure_env()
        if total_steps is not None:
            total = int(total_steps)
        elif resuming and self.total_steps is not None:
            total = self.total_steps
        else:
            total = c.total_steps
        steps_per_update = c.num_envs * c.num_steps
        # Never exceed the step budget: a partial rollout at the end would be a different batch size.
        num_updates = max(0, (total - self.global_step) // steps_per_update)
        if num_updates == 0 and self.global_step == 0:
            raise ConfigError(
                f"total_steps = {total} is less than one rollout (num_envs * num_steps = "
                f"{c.num_envs} * {c.num_steps} = {steps_per_update}); nothing would be trained"
            )
        self.total_steps = total
        if resuming:
            self.run_dir = directory
            directory.mkdir(parents=True, exist_ok=True)
            # Rows logged after the checkpoint (before the crash) are redone by this run.
            truncate_metrics(directory / "metrics.jsonl", "global_step", self.global_step)
        else:
            self.run_dir = prepare_run_dir(directory, overwrite)
        atomic_write_text(self.run_dir / "config.yaml", config_to_yaml(replace(c, total_steps=total, run_dir=str(self.run_dir))))
        start_step = self.global_step
        start_time = time.perf_counter()
        self._last_checkpoint_time = time.monotonic()
        final_eval: dict[str, Any] | None = None

        progress = None
        if c.progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=total, initial=self.global_step, unit="step", unit_scale=True,
                            dynamic_ncols=True, desc=c.env_id, leave=True)
        purge = self.global_step + 1 if resuming else None
        try:
            with StopOnSignal("update") as stop, MetricsLogger(self.run_dir, tensorboard=c.tensorboard, purge_step=purge) as metrics:
                for _ in range(num_updates):
                    fraction = self.global_step / total
                    record = self.train_one_update(fraction)
                    elapsed = time.perf_counter() - start_time
                    record["sps"] = (self.global_step - start_step) / max(elapsed, 1e-9)
                    record["time_elapsed"] = elapsed
                    reached = False
                    if c.eval_every and self.num_updates % c.eval_every == 0:
                        result = self._periodic_eval(c.eval_episodes)
                        record["eval_return"] = result["mean_return"]
                        reached = c.stop_at_return is not None and result["mean_return"] >= c.stop_at_return
                        if reached:
                            final_eval = result
                    self._warn(record, fraction)
                    metrics.log(record, self.global_step)
                    if progress is not None:
                        progress.update(self.global_step - progress.n)
                        ret = record["episodic_return"]
                        progress.set_postfix(ret="-" if ret is None else f"{ret:.1f}", refresh=False)
                    if stop.signal_name is not None:
                        checkpoint = self.save_checkpoint()
                        raise TrainingInterrupted(stop.signal_name, str(checkpoint), f"ppokit resume {self.run_dir}")
                    if reached:
                        log.info("update %d: evaluation mean return %.2f reached stop_at_return %.2f; stopping",
                                 self.num_updates, final_eval["mean_return"], c.stop_at_return)
                        break
                    if checkpoint_due(self.num_updates, c.checkpoint_every, c.checkpoint_minutes,
                                      self._last_checkpoint_time):
                        self.save_checkpoint()
                    if callback is not None and callback(self, record) is False:
                        break
                # The final state is a checkpoint too, so `ppokit resume --total-steps` can extend the run.
                if latest_checkpoint(self.run_dir) != checkpoint_path(self.run_dir, self.global_step):
                    self.save_checkpoint()
        finally:
            if progress is not None:
                progress.close()
            self._close_eval_env()
        self._resume_from = None
        self.save(self.run_dir / "model")
        if final_eval is not None:
            atomic_write_json(self.run_dir / "eval.json", final_eval)
        elif c.eval_episodes > 0:
            result = self.evaluate(c.eval_episodes, deterministic=c.eval_deterministic)
            atomic_write_json(self.run_dir / "eval.json", result)
        return self

    def _periodic_eval(self, episodes: int) -> dict[str, Any]:
        """Evaluate now; keep the policy in ``RUN_DIR/best`` when it is the best so far."""
        assert self.run_dir is not None
        if self._eval_env is None:
            # Kept for the whole run, one env per episode: each evaluation is then as many vector
            # steps as its longest episode, with no env construction.
            self._eval_env = make_vector_env(self.config.env_id, min(episodes, MAX_EVAL_ENVS), self.config.env_kwargs)
        # A new seed per evaluation, so "best" is not chosen on one fixed set of start states.
        result = self.evaluate(episodes, deterministic=self.config.eval_deterministic,
                               seed=self.config.seed + 10_000 + self.num_updates, env=self._eval_env)
        if self.best_eval_return is None or result["mean_return"] > self.best_eval_return:
            self.best_eval_return = result["mean_return"]

            def extra(tmp: Path) -> None:
                (tmp / "eval.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

            self.save(self.run_dir / BEST, extra=extra)
        return result

    def train_one_update(self, fraction: float = 0.0) -> dict[str, Any]:
        """Collect one rollout, estimate advantages and run the K-epoch update; returns the metrics."""
        c = self.config
        lr = self.lr_schedule(fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        clip_range = self.current_clip_range(fraction)

        rollout = self.collector.collect()
        self.global_step += c.num_envs * c.num_steps
        batch = self._make_batch(rollout)

        obs, actions = batch.pop("obs"), batch.pop("actions")
        settings = PPOUpdateSettings(
            num_epochs=c.num_epochs, num_minibatches=c.num_minibatches, clip_range=clip_range,
            vf_coef=c.vf_coef, ent_coef=c.ent_coef,
            max_grad_norm=c.max_grad_norm if c.max_grad_norm > 0 else None,
            clip_range_vf=c.clip_range_vf, normalize_advantages=c.normalize_advantages,
            target_kl=c.target_kl, loss=c.loss, kl_coef=self.kl_coef,
            skip_nonfinite=c.on_nonfinite == "skip",
        )
        try:
            if self.numpy_update:
                step = NumpyMinibatchStep(self.policy, obs, actions, batch, settings)
                stats = run_epochs(step, obs.shape[0], self.optimizer, self.policy.parameters(), settings)
            else:
                stats = ppo_update(batch, lambda idx: self.policy.evaluate(obs[idx], actions[idx]),
                                   self.optimizer, self.policy.parameters(), settings)
        except TrainingError as err:
            last = latest_checkpoint(self.run_dir) if self.run_dir is not None else None
            saved = f"; the last checkpoint, {last}, is intact" if last is not None else ""
            raise TrainingError(f"update {self.num_updates + 1} (step {self.global_step}): {err}{saved}") from None
        self.num_updates += 1

        if self.kl_controller is not None or self.clip_controller is not None:
            with torch.no_grad():
                logp_new, _, _ = self.policy.evaluate(obs, actions)
                kl_after = float(kl_k3(logp_new - batch["logp"]).mean())
            stats["kl_after_update"] = kl_after
            if self.kl_controller is not None:
                self.kl_controller.update(kl_after)
            if self.clip_controller is not None:
                self.clip_controller.update(kl_after)

        returns = list(self.collector.episode_returns)
        lengths = list(self.collector.episode_lengths)
        record: dict[str, Any] = {
            "global_step": self.global_step,
            "update": self.num_updates,
            "episodic_return": float(np.mean(returns)) if returns else None,
            "episodic_length": float(np.mean(lengths)) if lengths else None,
            "episodes": len(self.collector.last_finished[0]),
            **stats,
            "explained_variance": explained_variance(batch["values"], batch["returns"]),
            "learning_rate": lr,
            "clip_range": clip_range,
            "kl_coef": settings.kl_coef,
        }
        if self._initial_entropy is None:
            self._initial_entropy = stats["entropy"]
        return record

    def _make_batch(self, rollout: Rollout) -> dict[str, torch.Tensor]:
        """GAE over the rollout, then flatten the valid steps into one batch."""
        c = self.config
        following = torch.cat([rollout.values[1:], rollout.last_value.unsqueeze(0)])
        # Termination: the future is worth nothing. Truncation: the following step's input is the
        # true final observation (next-step autoreset), so ``following`` already bootstraps from it.
        next_values = torch.where(rollout.terminated, torch.zeros_like(following), following)
        episode_ends = rollout.terminated | rollout.truncated
        advantages, returns = gae(rollout.rewards, rollout.values, next_values, episode_ends, c.gamma, c.gae_lambda)
        keep = rollout.valid.reshape(-1).nonzero().squeeze(1)

        def flat(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(-1, *x.shape[2:]).index_select(0, keep)

        return {
            "obs": flat(rollout.obs), "actions": flat(rollout.actions), "logp": flat(rollout.logp),
            "values": flat(rollout.values), "advantages": flat(advantages), "returns": flat(returns),
        }

    def _warn(self, record: dict[str, Any], fraction: float) -> None:
        found = health_warnings(
            record, progress=fraction, initial_entropy=self._initial_entropy,
            target_kl=self.config.target_kl or (self.config.kl_target if self.kl_controller or self.clip_controller else None),
            normalize_reward=self.config.normalize_reward,
            shared_trunk=self.policy.shared_trunk,
        )
        messages = []
        seen = set()
        for key, message in found:
            messages.append(message)
            seen.add(key)
            self._streaks[key] = self._streaks.get(key, 0) + 1
            # One bad update is often noise; say it on the console once it has held for
            # WARN_AFTER updates in a row, and only once per kind. metrics.jsonl gets every one.
            if self._streaks[key] == WARN_AFTER and key not in self._warned:
                self._warned.add(key)
                log.warning("update %d: %s", self.num_updates, message)
        for key in list(self._streaks):
            if key not in seen:
                del self._streaks[key]
        if messages:
            record["warnings"] = messages

    # ------------------------------------------------------------------ acting
    def _policy_input(self, obs: np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(obs), device=self.device)
        t = t.to(torch.uint8 if self.observation_space.dtype == np.uint8 else torch.float32)
        if self.obs_rms is not None:
            t = self.obs_rms.normalize(t, self.config.clip_obs).to(torch.float32)
        return t

    def predict(self, obs: np.ndarray, deterministic: bool = True, rng: np.random.Generator | None = None
                ) -> np.ndarray:
        """Actions for one observation or a batch, in the env's format (clipped to Box bounds).

        Stochastic actions of MLP policies on a CPU are drawn from ``rng`` (default: a generator of
        the agent's own, never the training one); other policies draw from torch's generator."""
        obs = np.asarray(obs)
        single = obs.shape == tuple(self.observation_space.shape)
        batch = obs[None] if single else obs
        if tuple(batch.shape[1:]) != tuple(self.observation_space.shape):
            raise ValueError(
                f"predict: observation shape {obs.shape} does not match the policy's "
                f"{tuple(self.observation_space.shape)} (or a batch of them)"
            )
        if self.numpy_policy is not None:
            x = policy_input(batch, self.obs_rms, self.config.clip_obs)
            action = self.numpy_policy.action(x, rng or self._predict_rng, deterministic)
        else:
            with torch.inference_mode():
                action = self.policy.act(self._policy_input(batch), deterministic)[0]
        out = self.to_env(action)
        return out[0] if single else out

    def evaluate(
        self, episodes: int = 20, deterministic: bool = True, seed: int | None = None,
        video_dir: str | Path | None = None, env: Any = None,
    ) -> dict[str, Any]:
        """Mean and std of the return over ``episodes`` fresh episodes, as written to eval.json.

        ``env``: a vector env of this task to play them in (reset with ``seed``); by default one is
        made for the call and closed after it."""
        seed = self.config.seed + 10_000 if seed is None else seed
        rng = np.random.default_rng([seed, 2])
        act = lambda obs, det: self.predict(obs, det, rng)  # noqa: E731
        # Stochastic evaluation of a torch-path policy draws from torch's generator; training must
        # not see those draws, or evaluating during a run would change its results.
        with torch.random.fork_rng(devices=[]):
            if video_dir is not None:
                result = record_video(act, self.config.env_id, episodes, video_dir,
                                      env_kwargs=self.config.env_kwargs, deterministic=deterministic, seed=seed)
            else:
                result = evaluate_policy(act, self.config.env_id, episodes, env_kwargs=self.config.env_kwargs,
                                         deterministic=deterministic, seed=seed, env=env)
        result["global_step"] = self.global_step  # which policy was evaluated
        return result

    # ------------------------------------------------------------------ saving and loading
    def _tensors(self) -> dict[str, torch.Tensor]:
        # clone: the parameters are views of one buffer (FlatAdam), and safetensors refuses shared memory.
        tensors = {f"policy.{k}": v.detach().cpu().clone() for k, v in self.policy.state_dict().items()}
        for name, rms in (("obs_rms", self.obs_rms), ("ret_rms", self.ret_rms)):
            if rms is not None:
                tensors.update({f"{name}.{k}": v.contiguous() for k, v in rms.state_dict().items()})
        return tensors

    def _state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "kind": "ppokit.control",
            "ppokit_version": __version__,
            "config": to_dict(self.config),
            "observation_space": space_to_json(self.observation_space),
            "action_space": space_to_json(self.action_space),
            "global_step": self.global_step,
            "num_updates": self.num_updates,
            "kl_controller": self.kl_controller.state_dict() if self.kl_controller else None,
            "clip_controller": self.clip_controller.state_dict() if self.clip_controller else None,
        }

    def save(self, path: str | Path, include_optimizer: bool = False,
             extra: Callable[[Path], None] | None = None) -> Path:
        """Write the policy (safetensors) and its metadata (JSON) to directory ``path``, atomically."""
        path = Path(path)

        def fill(tmp: Path) -> None:
            save_file(self._tensors(), str(tmp / MODEL_FILE))
            (tmp / STATE_FILE).write_text(json.dumps(self._state(), indent=2) + "\n", encoding="utf-8")
            if include_optimizer:
                torch.save(self.optimizer.state_dict(), tmp / OPTIMIZER_FILE)
            if extra is not None:
                extra(tmp)

        atomic_write_dir(path, fill)
        return path

    def _resume_state(self) -> dict[str, Any]:
        """Everything beyond weights and optimizer that an exact resume needs, as plain JSON."""
        assert self.collector is not None
        env_state, why = capture_env_state(self.env)
        return {
            "format": RESUME_FORMAT,
            "kind": "ppokit.control",
            "global_step": self.global_step,
            "num_updates": self.num_updates,
            "total_steps": self.total_steps,
            "best_eval_return": self.best_eval_return,
            "initial_entropy": self._initial_entropy,
            "warned": sorted(self._warned),
            "streaks": dict(self._streaks),
            "rng": rng_state(),
            "collector": encode(self.collector.state_dict()),
            "env": env_state,
            "env_not_saved": why,
        }

    def save_checkpoint(self) -> Path:
        """A resumable checkpoint ``RUN_DIR/checkpoints/step_<N>`` (weights, optimizer, RNGs, envs,
        counters); keeps the newest ``keep_checkpoints``."""
        assert self.run_dir is not None
        resume_state = self._resume_state()

        def write_resume(tmp: Path) -> None:
            # Written last: its presence marks the checkpoint complete (see io.checkpoints).
            (tmp / RESUME_FILE).write_text(json.dumps(resume_state) + "\n", encoding="utf-8")

        path = self.save(checkpoint_path(self.run_dir, self.global_step), include_optimizer=True, extra=write_resume)
        prune_checkpoints(self.run_dir, self.config.keep_checkpoints)
        self._last_checkpoint_time = time.monotonic()
        return path

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> "PPO":
        """Load a saved policy from a model or checkpoint directory, or a run directory (its ``model``).

        The environment is created from the saved config (``overrides`` may change fields such as
        ``num_envs`` or ``device``), so the result can ``predict``, ``evaluate`` and ``learn`` more.
        Use :meth:`resume` to continue a run exactly where it stopped.
        """
        model_dir = find_model_dir(path)
        state = read_state(model_dir)
        try:
            config = from_mapping(PPOConfig, {**state["config"], **overrides}, f"{model_dir / STATE_FILE}")
        except ConfigError as err:
            raise CheckpointError(f"{model_dir}: saved config is not valid for this ppokit: {err}") from None
        agent = cls.__new__(cls)
        agent._set_runtime(config)
        agent.env = None  # made on demand by learn()
        try:
            observation_space = space_from_json(state["observation_space"])
            action_space = space_from_json(state["action_space"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{model_dir / STATE_FILE}: bad saved spaces ({err})") from None
        agent._build(observation_space, action_space)
        agent._load_weights(model_dir, state)
        return agent

    @classmethod
    def resume(cls, run_dir: str | Path, **overrides: Any) -> "PPO":
        """The run in ``run_dir`` as of its latest checkpoint, ready for :meth:`learn` to continue.

        ``overrides`` change config fields for the rest of the run (``progress``, ``device``, …);
        changing ones that shape the batch breaks exactness.
        """
        checkpoint = find_resumable(run_dir)
        agent = cls.load(checkpoint, **overrides)
        agent._restore_training(checkpoint, Path(run_dir))
        return agent

    def _load_weights(self, model_dir: Path, state: dict[str, Any]) -> None:
        """Weights, normaliser statistics, counters, controllers and (if saved) optimizer state."""
        self._load_tensors(model_dir)
        self.global_step = int(state.get("global_step", 0))
        self.num_updates = int(state.get("num_updates", 0))
        try:
            if self.kl_controller is not None and state.get("kl_controller"):
                self.kl_controller.load_state_dict(state["kl_controller"])
            if self.clip_controller is not None and state.get("clip_controller"):
                self.clip_controller.load_state_dict(state["clip_controller"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{model_dir / STATE_FILE}: bad controller state ({err})") from None
        optimizer_path = model_dir / OPTIMIZER_FILE
        if optimizer_path.exists():
            try:
                self.optimizer.load_state_dict(load_torch_state(optimizer_path, self.device))
            except (ValueError, KeyError, RuntimeError) as err:
                raise CheckpointError(f"{optimizer_path}: optimizer state does not fit this network ({err})") from None

    def _restore_checkpoint(self, checkpoint: Path, run_dir: Path) -> None:
        """Load a checkpoint of this same run into this (freshly built) agent."""
        state = read_state(checkpoint)
        saved = state["config"]
        for key in ("env_id", "num_envs", "num_steps", "hidden_sizes", "network", "shared_trunk"):
            if key in saved and saved[key] != getattr(self.config, key):
                raise CheckpointError(
                    f"{checkpoint}: the run was made with {key} = {saved[key]!r}, this config has "
                    f"{getattr(self.config, key)!r}; resume it with `ppokit resume {run_dir}`"
                )
        self._load_weights(checkpoint, state)
        self._restore_training(checkpoint, run_dir)

    def _restore_training(self, checkpoint: Path, run_dir: Path) -> None:
        file = checkpoint / RESUME_FILE
        resume = read_resume_state(checkpoint, "ppokit.control", RESUME_FORMAT)
        try:
            self.total_steps = resume["total_steps"]
            self.best_eval_return = resume["best_eval_return"]
            self._initial_entropy = resume["initial_entropy"]
            self._warned = set(resume["warned"])
            self._streaks = {str(k): int(v) for k, v in resume["streaks"].items()}
            # No reset when the env state is restored: a reset would feed its observations into
            # the restored normalisation statistics.
            self.ensure_env(reset=resume["env"] is None)
            assert self.collector is not None
            if resume["env"] is not None:
                restore_env_state(self.env, resume["env"])
                self.collector.load_state_dict(decode(resume["collector"]))
            else:
                # Envs whose state cannot be saved start fresh (seeded) episodes; the statistics of
                # finished episodes carry over.
                log.warning("resuming with fresh episodes, not bit-identically: %s", resume["env_not_saved"])
                collector = decode(resume["collector"])
                self.collector.episode_returns.extend(collector["episode_returns"])
                self.collector.episode_lengths.extend(collector["episode_lengths"])
                self.collector.episodes_total = int(collector["episodes_total"])
            set_rng_state(resume["rng"])
        except CheckpointError as err:
            raise CheckpointError(f"{file}: {err}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CheckpointError(f"{file}: bad or incompatible resume state ({type(err).__name__}: {err})") from None
        self.run_dir = run_dir
        self._resume_from = checkpoint

    def _load_tensors(self, model_dir: Path) -> None:
        file = model_dir / MODEL_FILE
        try:
            tensors = load_file(str(file))
        except Exception as err:  # noqa: BLE001 - safetensors raises several types for bad files
            raise CheckpointError(f"{file}: not a readable safetensors file ({err})") from None
        policy_state = {k[len("policy."):]: v for k, v in tensors.items() if k.startswith("policy.")}
        try:
            self.policy.load_state_dict(policy_state)
        except RuntimeError as err:
            raise CheckpointError(f"{file}: weights do not fit the configured network: {err}") from None
        for name, rms in (("obs_rms", self.obs_rms), ("ret_rms", self.ret_rms)):
            if rms is not None:
                try:
                    rms.load_state_dict({k: tensors[f"{name}.{k}"] for k in ("mean", "var", "count")})
                except (KeyError, ValueError) as err:
                    raise CheckpointError(f"{file}: missing or bad {name} statistics ({err})") from None

    def ensure_env(self, reset: bool = True) -> None:
        """Create the training env if needed (after :meth:`load`) and start collecting from it.

        Envs are seeded with ``seed + num_updates`` so a loaded agent does not replay the episodes
        its first run began with. ``reset=False`` leaves that to a state restore.
        """
        if self.collector is not None:
            return
        c = self.config
        if self.env is None:
            self.env = make_vector_env(c.env_id, c.num_envs, c.env_kwargs, c.vectorization)
        self.collector = RolloutCollector(
            self.env, self.policy, self.device, c.num_steps, obs_rms=self.obs_rms, ret_rms=self.ret_rms,
            gamma=c.gamma, clip_obs=c.clip_obs, clip_reward=c.clip_reward,
        )
        if reset:
            self.collector.reset(seed=c.seed + self.num_updates)

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
        self._close_eval_env()

    def _close_eval_env(self) -> None:
        if self._eval_env is not None:
            self._eval_env.close()
            self._eval_env = None


def find_model_dir(path: str | Path) -> Path:
    path = recover_dir(path)
    if not path.exists():
        raise CheckpointError(f"run or model directory {str(path)!r} does not exist")
    recover_dir(path / "model")
    for candidate in (path, path / "model"):
        if (candidate / STATE_FILE).is_file():
            return candidate
    raise CheckpointError(
        f"{str(path)!r} holds no saved policy (expected {STATE_FILE} and {MODEL_FILE} in it or in its "
        "'model' folder; was training finished or checkpointed?)"
    )


def read_state(model_dir: Path) -> dict[str, Any]:
    file = model_dir / STATE_FILE
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file}: unreadable checkpoint metadata ({err})") from None
    if not isinstance(state, Mapping) or state.get("kind") != "ppokit.control":
        raise CheckpointError(f"{file}: not a ppokit control checkpoint")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{file}: checkpoint format {state.get('format')!r} is not supported by ppokit {__version__} "
            f"(expected {CHECKPOINT_FORMAT})"
        )
    if not isinstance(state.get("config"), Mapping):
        raise CheckpointError(f"{file}: checkpoint has no config")
    return dict(state)


def config_to_yaml(config: PPOConfig) -> str:
    import yaml

    return yaml.safe_dump(to_dict(config), sort_keys=False)
