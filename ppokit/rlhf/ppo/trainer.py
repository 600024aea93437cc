"""PPO for a causal language model: the RLHF loop of Ziegler et al. (2019) and InstructGPT.

One update, top to bottom::

    batch  = collect(prompts)        generate, score, forward passes                  rollout.py
    Â, R̂   = estimate_advantages()   GAE with a critic, or grpo, rloo, reinforce_pp    advantages.py
    stats  = ppo_update(...)          K epochs × minibatches of clipped PPO             ppokit.core.update
    β      ← controller(KL)                                                            ppokit.core.kl
    record = update_metrics(...)                                                       here

:meth:`RLHFTrainer.learn` runs updates in the one loop shell (:mod:`ppokit.io.loop`) the control
front end uses too. The maths lives in :mod:`ppokit.core`; this module only arranges tokens into its
inputs.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ppokit.configuration import adapted_notes, callable_label, with_absolute_paths
from ppokit.core.advantages import masked_mean
from ppokit.core.collective import check_world_size, on_main
from ppokit.core.diagnostics import explained_variance
from ppokit.core.health import HealthMonitor
from ppokit.core.kl import ConstantKL, ProportionalKLController
from ppokit.core.optim import AveragedGradients, Optimizer, make_adamw
from ppokit.core.schedules import make_schedule
from ppokit.core.update import PPOBatch, PPOUpdateSettings, ppo_update
from ppokit.errors import CheckpointError, ConfigError
from ppokit.io.atomic import atomic_write_json, strict_json
from ppokit.io.checkpoints import (
    RESUME_FILE,
    check_file_record,
    checkpoint_path,
    file_record,
    latest_checkpoint,
    read_resume_state,
)
from ppokit.io.lock import RunLock
from ppokit.io.loop import Callback, LoopPlan, run_loop
from ppokit.io.metrics import MetricsLogger, NullMetrics, truncate_metrics
from ppokit.io.run_dir import default_run_dir, holds_run, open_run, run_trackers
from ppokit.rlhf import data as rdata
from ppokit.rlhf import data_parallel
from ppokit.rlhf.config import PATH_FIELDS, RLHFConfig
from ppokit.rlhf.consent import resume_flags
from ppokit.rlhf.models import precision, sharding
from ppokit.rlhf.models.generation import full_width
from ppokit.rlhf.models.loading import (
    check_tokenizes,
    length_limit,
    load_tokenizer,
    model_positions,
    setup_runtime,
)
from ppokit.rlhf.models.logprobs import token_entropy, token_logprobs
from ppokit.rlhf.ppo import checkpointing
from ppokit.rlhf.ppo.advantages import KLPlacement, TokenAdvantages, estimate_advantages, uses_critic
from ppokit.rlhf.ppo.roles import PPOModels
from ppokit.rlhf.ppo.rollout import RolloutBatch, collect
from ppokit.rlhf.rewards.sources import build_reward, reward_import, reward_options
from ppokit.runtime import join_processes, resolve_dtype

RewardSpec = str | Callable[..., Sequence[float]]

log = logging.getLogger("ppokit")


class RLHFTrainer:
    """PPO-train a causal LM against a reward.

    ``prompts`` (a ``datasets.Dataset`` or list of dicts with the prompt column) replaces
    ``config.data``; ``rewards`` (reward-model paths, ``'module:function'`` strings or Python
    callables) replaces ``config.rewards``. ``resume=True`` continues the run in ``run_dir`` from its
    latest checkpoint (bit-identically on one CPU thread), or starts it when there is no run yet.

    Launched as several processes (``--nproc N``, ``torchrun``), it trains data-parallel: each takes
    ``batch_size / N`` of every batch's prompts and the gradients are averaged (:mod:`.data_parallel`),
    or with ``sharding: fsdp`` the policy and critic are sharded (:mod:`.sharding`); rank 0 writes.
    """

    def __init__(
        self,
        config: RLHFConfig,
        prompts: Any = None,
        rewards: Sequence[RewardSpec] | None = None,
        run_dir: str | Path | None = None,
        overwrite: bool = False,
        resume: bool = False,
    ) -> None:
        self.config = c = config
        for note in adapted_notes(c):
            log.info("adapted %s", note)
        self.device, self.dtype = setup_runtime(c)
        self.dtype = precision.weights_dtype(c, self.dtype)
        #: The weights dtype of the frozen roles (reference, reward models).
        self.frozen_dtype = self.dtype if c.frozen_dtype == "auto" else resolve_dtype(c.frozen_dtype, self.device)
        #: The processes of a data-parallel run (one process: a no-op); see data_parallel.
        self.collective = join_processes(self.device, c.dist_backend, c.dist_timeout, settings=c)
        data_parallel.check_batch(c, self.collective)
        checkpoint, resume_state = None, None
        directory = data_parallel.run_path(self.collective, run_dir or c.run_dir or default_run_dir("rlhf-ppo", c.seed))
        if resume:
            if run_dir is None and c.run_dir is None:
                raise ConfigError("resume needs the run directory to continue (run_dir)")
            checkpoint = latest_checkpoint(directory)
            if checkpoint is not None:
                resume_state = read_resume_state(checkpoint, checkpointing.KIND, checkpointing.RESUME_FORMAT)
                check_world_size(resume_state, self.collective, checkpoint / RESUME_FILE, "share of the batch and random state")
                done = int(resume_state["num_updates"])
                if c.total_updates < done:  # config.yaml would record a total the run has passed
                    raise ConfigError(f"resuming {directory}: total_updates {c.total_updates} is below the {done} PPO "
                                      f"updates the run has already done; give it (--total-updates) {done} or more")
                checkpointing.check_resumable(directory / "config.yaml", c, rewards)
            elif holds_run(directory):
                # Stopped before its first checkpoint: nothing to continue from, so start it again.
                log.warning("%s holds a run stopped before its first checkpoint; starting it over", directory)
                overwrite = True
        self.tokenizer = load_tokenizer(c.policy, c.trust_remote_code)

        #: The prompt file's size and hash (None for prompts given as objects), kept in checkpoints.
        self.data_file = file_record(c.data) if prompts is None and c.data and Path(c.data).is_file() else None
        if prompts is None and checkpoint is not None and resume_state is not None:  # the same prompts, or the saved order means nothing
            check_file_record(resume_state.get("data_file"), self.data_file, c.data, "data", checkpoint / RESUME_FILE)
        loaded = rdata.load(prompts if prompts is not None else c.data, {"prompt": (c.prompt_column, "text")},
                            c.skip_bad_rows)
        check_tokenizes(self.tokenizer, [r["prompt"] for r in loaded.rows], c.policy, "prompts")
        def lengths_of(rows: list[dict[str, Any]]) -> list[int]:
            return [len(ids) for ids in self.tokenizer([r["prompt"] for r in rows])["input_ids"]]

        # A prompt and its completion must fit the model's positions together.
        limit = length_limit(c.max_prompt_length, c.policy, model_positions(c.policy, c.trust_remote_code),
                             reserve=c.max_new_tokens)
        loaded = rdata.drop_long(loaded, lengths_of, limit, "prompt", "max_prompt_length" if limit == c.max_prompt_length
                                 else "max_prompt_length (capped to the model's positions less max_new_tokens)",
                                 c.skip_bad_rows)
        self.prompts = rdata.PromptLoader([r["prompt"] for r in loaded.rows], c.batch_size, c.seed)
        self.skipped_rows = loaded.skipped

        self.reward_specs = list(rewards) if rewards is not None else list(c.rewards)
        self.reward = build_reward(self.reward_specs, c.reward_weights, self.frozen_dtype, self.device,
                                   c.trust_remote_code, **reward_options(c))
        self.models = PPOModels(c, self.reward, self.dtype, self.device, frozen_dtype=self.frozen_dtype)
        data_parallel.start(self.models.trainable, c.seed, self.collective)
        if c.sharding == "fsdp" and self.collective.active:
            sharding.shard(self.models)
        elif c.sharding == "fsdp":
            log.info("sharding: fsdp with one process: nothing to shard, the models train whole")
        self.optimizer = self._optimizer()
        self.lr_schedule = make_schedule(c.lr_schedule, c.learning_rate)
        #: β, the weight of the KL to the reference: adapted by Ziegler et al.'s controller, or constant.
        self.kl_controller: ProportionalKLController | ConstantKL = (
            ProportionalKLController(c.kl_coef, c.kl_target, c.kl_horizon) if c.adaptive_kl else ConstantKL(c.kl_coef))
        #: Where the KL goes, the reward or the loss: decided once, here.
        self.kl_placement = KLPlacement.of(c.advantage, c.kl_in, c.kl_estimator)
        self.health = HealthMonitor(target_kl=c.target_kl, normalize_reward=False, shared_trunk=c.value_model == "head")
        self.num_updates = 0
        self.history: list[dict[str, Any]] = []
        #: The last update's prompts, completions (text) and scores, for callbacks and sample logs.
        self.last_batch: tuple[list[str], list[str], list[float]] = ([], [], [])
        resume_update = int(resume_state["num_updates"]) if resume_state is not None else None
        # config.yaml records the reward sources actually used, also when they came in as an argument.
        self.run_dir: Path | None
        self.metrics: MetricsLogger | None
        recorded = dataclasses.replace(c, rewards=[r if isinstance(r, str) else callable_label(r) for r in self.reward_specs])
        self.recorded_config = with_absolute_paths(recorded, PATH_FIELDS)
        launch = {"world_size": self.collective.world_size, "global_batch_size": c.batch_size}

        def open_() -> tuple[Path, MetricsLogger]:
            path, metrics = open_run(
                directory, self.recorded_config, overwrite=overwrite, resume_update=resume_update,
                purge_step=None if resume_update is None else resume_update + 1,
                launch=launch if self.collective.active else None,
            )
            if resume_update is not None:  # sample rows logged after the checkpoint are redone too
                truncate_metrics(path / "samples.jsonl", "update", resume_update)
            return path, metrics

        self.run_dir, self.metrics = on_main(self.collective, open_, lambda: (directory, NullMetrics()))
        if checkpoint is not None and resume_state is not None:
            checkpointing.restore(checkpoint, resume_state, self.models, self.optimizer, self.device, self.collective)
            self.load_state_dict(resume_state, checkpoint / RESUME_FILE)

    def _optimizer(self) -> Optimizer:
        """AdamW over what trains; with several processes it averages their gradients (FSDP: FSDP does)."""
        c = self.config
        adamw = make_adamw([p for p in self.models.trainable.parameters() if p.requires_grad],
                           lr=c.learning_rate, weight_decay=c.weight_decay)
        if self.models.sharded:
            inner: Optimizer = sharding.ShardedOptimizer(adamw.optimizer, self.models.trainable, self.collective)
        else:
            inner = AveragedGradients(adamw, self.collective) if self.collective.active else adamw
        return precision.scaled_for(c.mixed_precision, inner)

    @property
    def policy(self) -> torch.nn.Module:
        return self.models.policy

    @property
    def kl_coef(self) -> float:
        """β now: the weight of the KL to the reference in the next update."""
        return self.kl_controller.beta

    def state_dict(self) -> dict[str, Any]:
        """The trainer's own state for a checkpoint (the weights and optimiser are saved beside it)."""
        return {"num_updates": self.num_updates, "kl_controller": self.kl_controller.state_dict(),
                "prompts": self.prompts.state_dict(), "history": self.history, "health": self.health.state_dict(),
                "data_file": self.data_file}

    def load_state_dict(self, state: Mapping[str, Any], where: Path | str = "resume state") -> None:
        try:
            self.num_updates = int(state["num_updates"])
            if state.get("kl_controller") is not None:
                self.kl_controller.load_state_dict(state["kl_controller"])
            else:  # written before β had one home: a constant β was saved only as kl_coef
                self.kl_controller.beta = float(state["kl_coef"])
            self.prompts.load_state_dict(state["prompts"])
            self.history = list(state["history"])
            self.health.load_state_dict(state["health"])
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
            raise CheckpointError(f"{where}: bad resume state ({type(err).__name__}: {err})") from None

    @classmethod
    def resume(cls, run_dir: str | Path, prompts: Any = None, rewards: Sequence[RewardSpec] | None = None,
               *, trust: bool = False, **overrides: Any) -> RLHFTrainer:
        """The run in ``run_dir`` as of its latest checkpoint, built from its config.yaml.

        A run whose rewards or prompts came in as Python objects needs them passed again. What the
        saved config would make ppokit import, run, read or contact (``'module:function'`` rewards,
        ``trust_remote_code: true``, the ``data`` file, reward servers) is refused unless you pass it
        again (``rewards=...``, ``prompts=...``, ``data=...``, ``trust_remote_code=...``) or ``trust=True``:
        a run directory must not run code, read your files or send them anywhere by being resumed
        (:mod:`ppokit.rlhf.consent`). A prompt file that changed since the checkpoint is refused.
        """
        run_dir = Path(run_dir)
        config = checkpointing.resume_config(run_dir, rewards, trust, overrides, prompts_given=prompts is not None)
        return cls(config, prompts=prompts, rewards=rewards, run_dir=run_dir, resume=True)

    # ---- one PPO update ----------------------------------------------------------------------

    def update(self) -> dict[str, Any]:
        """Collect a batch (this process's share of its prompts), then :meth:`update_on` it."""
        t_start = time.perf_counter()
        prompts = data_parallel.local_slice(self.prompts.next(), self.collective)
        return self.update_on(collect(self.models, self.tokenizer, self.reward, prompts, self.config, self.device),
                              t_start)

    def update_on(self, batch: RolloutBatch, t_start: float | None = None) -> dict[str, Any]:
        """Estimate advantages, run the K epochs, adapt β on a collected batch; the update's metrics row.
        With several processes, ``batch`` is this process's share and the update is the union's."""
        c = self.config
        t_start = time.perf_counter() if t_start is None else t_start
        with torch.no_grad():
            adv = estimate_advantages(c, batch.scores, batch.logp, batch.ref_logp, batch.values, batch.mask,
                                      self.kl_placement, self.kl_coef, self.collective)
        t_prepared = time.perf_counter()
        self.optimizer.set_learning_rate(self.lr_schedule(self.num_updates / c.total_updates))
        shared = {"collective": self.collective} if self.collective.active else {}
        critic = uses_critic(c.advantage)  # without one, nothing for a value loss to fit
        ppo_batch = PPOBatch(logp=batch.logp, advantages=adv.advantages, values=adv.values if critic else None,
                             returns=adv.returns if critic else None, mask=batch.mask, ref_logp=batch.ref_logp)
        evaluate = self._evaluate(batch)
        stats = ppo_update(ppo_batch, evaluate, self.optimizer, self._settings(), **shared)
        stats.update(evaluate.figures)  # type: ignore[attr-defined]
        # The last step's gradients would otherwise stay allocated through the next rollout, which is
        # then the peak of a run's memory (the benchmark of the memory options measured it).
        self.optimizer.zero_grad()
        t_updated = time.perf_counter()
        record = self._record(batch, adv, stats, t_start, t_prepared, t_updated)
        if self.collective.active:
            record.update(data_parallel.batch_figures(batch, adv, adv.kl_coef, self.collective, t_updated - t_start))
        if not uses_critic(c.advantage):  # no critic: absent rather than a flat 0 that reads as a perfect fit
            del record["value_mean"], record["value_loss"], record["explained_variance"]
        self.kl_controller.update(record["kl"], len(batch.prompts) * self.collective.world_size)
        self.num_updates += 1
        record["update"] = self.num_updates
        self.last_batch = (batch.prompts, batch.completions, batch.scores.tolist())
        self.health.check(record, self.num_updates / c.total_updates, self.num_updates)
        return record

    def _settings(self) -> PPOUpdateSettings:
        c = self.config
        # The advantages were whitened over the whole batch already (estimate_advantages), not per minibatch.
        return PPOUpdateSettings(
            num_epochs=c.num_epochs, num_minibatches=c.num_minibatches, clip_range=c.clip_range,
            vf_coef=c.vf_coef, ent_coef=c.ent_coef, max_grad_norm=c.max_grad_norm or None,
            clip_range_vf=c.clip_range_vf, whiten_advantages=False, target_kl=c.target_kl,
            skip_nonfinite=c.on_nonfinite == "skip", gradient_accumulation_steps=c.gradient_accumulation_steps,
            ref_kl_coef=self.kl_placement.loss_beta(self.kl_coef),
        )

    def _evaluate(self, batch: RolloutBatch) -> Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]:
        c, models, width = self.config, self.models, batch.tokens.shape[1]
        figures: dict[str, float] = {}  # the update's own metrics, filled as it runs
        cells = [0, 0]  # token positions the minibatches' forward passes ran on, and would have without select

        def evaluate(rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            # The minibatch's rows without the columns that are padding in all of them.
            part = batch.sequences.select(rows)
            cells[0] += part.input_ids.numel()
            cells[1] += len(part.input_ids) * batch.sequences.input_ids.shape[1]
            figures["padding_dropped"] = 1.0 - cells[0] / cells[1]
            with precision.autocast(c.mixed_precision, self.device):
                new_logits, new_values = models.policy_forward(part)
                if new_values is None:  # a separate critic, or none (critic-free: ppo_update fits no values)
                    new_values = (models.values(part) if uses_critic(c.advantage)
                                  else torch.zeros(new_logits.shape[:2], device=new_logits.device))
            # With no entropy bonus the entropy is only logged: skip its graph (a [B, T, vocab] tensor).
            with torch.set_grad_enabled(c.ent_coef > 0 and torch.is_grad_enabled()):
                entropy = token_entropy(new_logits, c.temperature)
            logp = full_width(token_logprobs(new_logits, part.completion_ids, c.temperature), width)
            if c.old_logprobs == "sampling" and "first_ratio_deviation" not in figures:
                # Before any step the ratio would be exactly 1 with recomputed log-probs: how far the
                # sampling pass's log-probs are from the trained forward pass's, as TRL reports it.
                with torch.no_grad():
                    ratio = torch.exp(logp - batch.logp[rows])
                    figures["first_ratio_deviation"] = float(masked_mean((ratio - 1).abs(), batch.mask[rows]))
            return logp, full_width(entropy, width), full_width(new_values.float(), width)

        evaluate.figures = figures  # type: ignore[attr-defined]
        return evaluate

    def _record(self, batch: RolloutBatch, adv: TokenAdvantages, stats: dict[str, float],
                t_start: float, t_prepared: float, t_updated: float) -> dict[str, Any]:
        """The metrics row of one update (``non_score_reward``: the KL in the reward, 0 when it is in the loss)."""
        mask = batch.mask
        mean_kl = float(adv.kl.sum(-1).mean())
        non_score = float((-adv.kl_coef * adv.kl).sum(-1).mean())
        score = float(batch.scores.mean())
        return {
            "update": self.num_updates + 1,
            "score": score,
            "score_raw": batch.raw_score_mean,
            **batch.score_parts,
            "kl": mean_kl,
            "non_score_reward": non_score,
            "total_reward": score + non_score,
            "kl_coef": self.kl_coef,
            "entropy": float(masked_mean(batch.entropy, mask)),
            "response_length": float(mask.sum(-1).float().mean()),
            "eos_rate": float(batch.sequences.has_eos.float().mean()),
            "value_mean": float(masked_mean(adv.values, mask)),
            **stats,
            "explained_variance": explained_variance(adv.values, adv.returns, mask),
            "learning_rate": self.optimizer.learning_rate,
            "tokens_per_s": int(mask.sum()) / max(t_updated - t_start, 1e-9),
            **batch.timings,
            "prepare_s": t_prepared - t_start - sum(batch.timings.values()),
            "epochs_s": t_updated - t_prepared,
            "update_s": t_updated - t_start,
        }

    # ---- the loop ----------------------------------------------------------------------------

    def learn(self, updates: int | None = None, callback: Callback | None = None) -> dict[str, Any]:
        """Run PPO updates up to ``total_updates`` (or ``updates`` more); save the policy and value model."""
        c = self.config
        target = c.total_updates if updates is None else self.num_updates + updates
        main = self.collective.is_main
        if self.metrics is None:  # a second learn() call: the run goes on in the same directory
            assert self.run_dir is not None
            self.metrics = MetricsLogger(
                self.run_dir, tensorboard=c.tensorboard, lock=RunLock(self.run_dir),
                trackers=run_trackers(self.run_dir, self.recorded_config, resuming=True)) if main else NullMetrics()
        metrics = self.metrics
        plan = LoopPlan(
            updates=max(0, target - self.num_updates), desc="rlhf ppo", checkpoint_every=c.checkpoint_every,
            checkpoint_minutes=c.checkpoint_minutes, x_axis=lambda record: int(record["update"]),
            progress=c.progress and main, total=target, position=lambda: self.num_updates,
            postfix=lambda r: {"score": f"{r['score']:.3f}", "kl": f"{r['kl']:.2f}"}, agree=self.collective.any,
            resume_flags=resume_flags(self.recorded_config, reward_import)
            + (f" --nproc {self.collective.world_size}" if self.collective.active else ""),
        )
        # The models, tokenizers and libraries loaded so far live for the whole run; freezing them
        # keeps Python's cyclic GC from rescanning their hundreds of thousands of objects each time
        # it runs (TRL's PPO instead forces two full collections per step).
        gc.collect()
        gc.freeze()
        assert self.run_dir is not None
        try:
            with metrics:  # open until the models and summary are written, so the trackers get them
                try:
                    run_loop(self, plan, metrics, callback)
                finally:
                    gc.unfreeze()
                self.save(self.run_dir)
                summary = self.summary()
                if main:
                    atomic_write_json(self.run_dir / "summary.json", summary)
                metrics.finish(summary, self.run_dir / "policy")
        finally:
            self.metrics = None
            self.reward.close()  # a reward function's worker processes; started again if learn() is called again
        return summary

    def after_update(self, record: dict[str, Any]) -> bool:
        """Keep the row for the summary; log sample completions every ``sample_every`` updates."""
        self.history.append(record)
        n = self.num_updates
        if self.config.sample_every and (n % self.config.sample_every == 0 or n == 1):
            self._log_samples()
        return False

    def _log_samples(self) -> None:
        assert self.run_dir is not None
        prompts, completions, scores = data_parallel.gather_samples(self.last_batch, self.collective)
        if not self.collective.is_main:
            return
        n = self.config.num_samples
        rows = [{"update": self.num_updates, "prompt": p, "completion": y, "score": s}
                for p, y, s in list(zip(prompts, completions, scores))[:n]]
        with open(self.run_dir / "samples.jsonl", "a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(strict_json(row) + "\n")
        assert self.metrics is not None
        self.metrics.text("samples", "\n\n".join(f"**{r['prompt']}** {r['completion']} (score {r['score']:.3f})"
                                                   for r in rows), self.num_updates)

    def summary(self) -> dict[str, Any]:
        first = self.history[: max(1, len(self.history) // 10)]
        last = self.history[-max(1, len(self.history) // 10):]

        def mean(rows: list[dict[str, Any]], key: str) -> float:
            vals = [r[key] for r in rows if key in r and math.isfinite(r[key])]
            return sum(vals) / len(vals) if vals else float("nan")

        return {
            "run_dir": str(self.run_dir), "updates": self.num_updates,
            "policy_dir": str(Path(str(self.run_dir)) / "policy"),
            "value_model_dir": (str(Path(str(self.run_dir)) / "value_model") if uses_critic(self.config.advantage)
                                else None),  # critic-free runs have none
            "score_first": mean(first, "score"), "score_last": mean(last, "score"),
            "kl_last": mean(last, "kl"), "kl_coef": self.kl_coef,
            "mean_update_s": mean(self.history, "update_s"), "skipped_rows": self.skipped_rows,
        }

    # ---- saving ------------------------------------------------------------------------------

    def checkpoint_path(self) -> Path:
        assert self.run_dir is not None
        return checkpoint_path(self.run_dir, self.num_updates)

    def save_checkpoint(self) -> Path:
        """A resumable checkpoint ``RUN_DIR/checkpoints/update_<N>``: the trainable weights (policy,
        value model or head, LoRA adapter), optimizer, KL controller, prompt position, RNGs, history;
        plus ``policy/`` and ``value_model/`` as usable models. Keeps the newest ``keep_checkpoints``."""
        assert self.run_dir is not None
        return checkpointing.save_checkpoint(self.run_dir, self.models, self.tokenizer, self.optimizer, self.state_dict(),
                                             self.collective, self.config.keep_checkpoints)

    def save(self, directory: str | Path) -> None:
        """Write ``policy/`` (a ``save_pretrained`` causal LM, LoRA merged in, plus the adapter alone in
        ``policy_adapter/``) and ``value_model/`` (trunk + ``scalar_head.safetensors``). With several
        processes every one calls it (sharded weights are gathered) and rank 0 writes."""
        state = sharding.full_state(self.models.trainable) if self.models.sharded else None
        if self.collective.is_main:
            self.models.save(directory, self.tokenizer, state)

