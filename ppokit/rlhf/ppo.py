"""PPO for a causal language model: the RLHF loop of Ziegler et al. (2019) and InstructGPT.

One step, top to bottom::

    prompts ──generate (policy, KV cache)──▶ completions
            ──score (reward models / functions)──▶ s
            ──forward passes──▶ log π_old, log π_ref, V_old
            r_t = −β·KL_t  (+ s at the last token)         per_token_rewards
            Â, R̂ = GAE(γ, λ) over tokens                   ppokit.core.advantages.gae
            K epochs × minibatches of clipped PPO          ppokit.core.update.ppo_update
            β ← controller(KL)                              ppokit.core.kl

The maths lives in :mod:`ppokit.core`; this module only arranges tokens into its inputs.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ppokit.core.advantages import gae, masked_mean, masked_whiten
from ppokit.core.kl import ProportionalKLController
from ppokit.core.optim import make_adamw
from ppokit.core.update import PPOUpdateSettings, ppo_update
from ppokit.errors import CheckpointError, ConfigError, TrainingError, TrainingInterrupted
from ppokit.io.atomic import atomic_write_dir, atomic_write_json
from ppokit.io.checkpoints import (
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
from ppokit.io.rng import rng_state, set_rng_state
from ppokit.io.run_dir import holds_run
from ppokit.rlhf import data as rdata
from ppokit.rlhf.common import open_run, progress_bar, runtime
from ppokit.rlhf.config import RLHFConfig
from ppokit.rlhf.generation import (
    Completions,
    completion_logits,
    decode,
    encode_prompts,
    sample,
    token_entropy,
    token_logprobs,
)
from ppokit.rlhf.models import (
    PolicyWithValueHead,
    ScalarHeadModel,
    fuse_activations,
    hidden_size_of,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
)
from ppokit.rlhf.rewards import RewardModelScorer, build_reward, per_token_rewards

log = logging.getLogger("ppokit")

#: Version of an RLHF checkpoint's resume.json.
RESUME_FORMAT = 1
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"


class PromptLoader:
    """Endless shuffled batches of prompts; its position (epoch, offset) is part of the state."""

    def __init__(self, prompts: list[str], batch_size: int, seed: int) -> None:
        self.prompts = prompts
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.offset = 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(len(self.prompts), generator=generator).tolist()

    def next(self) -> list[str]:
        batch = []
        while len(batch) < self.batch_size:
            if self.offset >= len(self._order):
                self.epoch += 1
                self.offset = 0
                self._order = self._shuffle()
            batch.append(self.prompts[self._order[self.offset]])
            self.offset += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self._order = self._shuffle()


class RLHFTrainer:
    """PPO-train a causal LM against a reward.

    ``prompts`` (a ``datasets.Dataset`` or list of dicts with the prompt column) replaces
    ``config.data``; ``rewards`` (reward-model paths, ``'module:function'`` strings or Python
    callables) replaces ``config.rewards``. ``resume=True`` continues the run in ``run_dir`` from its
    latest checkpoint (bit-identically on one CPU thread), or starts it when there is no run yet.
    """

    def __init__(
        self,
        config: RLHFConfig,
        prompts: Any = None,
        rewards: Sequence[str | Callable[..., Sequence[float]]] | None = None,
        run_dir: str | Path | None = None,
        overwrite: bool = False,
        resume: bool = False,
    ) -> None:
        self.config = c = config
        checkpoint, resume_state = None, None
        if resume:
            directory = run_dir or c.run_dir
            if directory is None:
                raise ConfigError("resume needs the run directory to continue (run_dir)")
            checkpoint = latest_checkpoint(directory)
            if checkpoint is not None:
                resume_state = read_resume_state(checkpoint, "ppokit.rlhf", RESUME_FORMAT)
            elif holds_run(Path(directory)):
                raise CheckpointError(f"run directory {str(directory)!r} holds a run but no checkpoint to "
                                      "resume from; pass --overwrite (overwrite=True) to start over in it")
        self.device, self.dtype = runtime(c)
        self.tokenizer = load_tokenizer(c.policy, c.trust_remote_code)

        loaded = rdata.load(prompts if prompts is not None else c.data, {"prompt": (c.prompt_column, "text")},
                            c.skip_bad_rows)
        lengths = [len(ids) for ids in self.tokenizer([r["prompt"] for r in loaded.rows])["input_ids"]]
        loaded = rdata.drop_long(loaded, lengths, c.max_prompt_length, "prompt", "max_prompt_length", c.skip_bad_rows)
        self.prompts = PromptLoader([r["prompt"] for r in loaded.rows], c.batch_size, c.seed)
        self.skipped_rows = loaded.skipped

        reward_specs = list(rewards) if rewards is not None else list(c.rewards)
        self.reward = build_reward(reward_specs, c.reward_weights, self.dtype, self.device, c.trust_remote_code)

        self._build_models(reward_specs)
        params = [p for p in self.trainable.parameters() if p.requires_grad]
        self.parameters = params
        self.optimizer = make_adamw(params, lr=c.learning_rate, weight_decay=c.weight_decay)
        self.kl_controller = ProportionalKLController(c.kl_coef, c.kl_target, c.kl_horizon) if c.adaptive_kl else None
        self.kl_coef = c.kl_coef
        self.global_step = 0
        self.history: list[dict[str, float]] = []
        self._last_checkpoint_time = time.monotonic()
        # config.yaml records the reward sources actually used, also when they came in as an argument.
        resume_step = int(resume_state["global_step"]) if resume_state is not None else None
        self.run_dir, self.metrics = open_run(dataclasses.replace(c, rewards=reward_specs), "ppo", run_dir,
                                              overwrite, resume_step=resume_step)
        if checkpoint is not None:
            self._restore(checkpoint, resume_state)

    @classmethod
    def resume(cls, run_dir: str | Path, prompts: Any = None,
               rewards: Sequence[str | Callable[..., Sequence[float]]] | None = None,
               **overrides: Any) -> "RLHFTrainer":
        """The run in ``run_dir`` as of its latest checkpoint, built from its config.yaml.

        A run whose rewards or prompts came in as Python objects needs them passed again.
        """
        from ppokit.configuration import from_mapping, load_yaml

        run_dir = Path(run_dir)
        find_resumable(run_dir)
        data = dict(load_yaml(run_dir / "config.yaml"))
        data.update(overrides)
        data["run_dir"] = str(run_dir)
        if rewards is None and any(isinstance(r, str) and r.startswith("<python callable") for r in data.get("rewards", [])):
            raise ConfigError(f"{run_dir / 'config.yaml'}: the run's reward is a Python callable; resume it "
                              "from Python with RLHFTrainer.resume(run_dir, rewards=[your_function])")
        config = from_mapping(RLHFConfig, data, str(run_dir / "config.yaml"))
        return cls(config, prompts=prompts, rewards=rewards, run_dir=run_dir, resume=True)

    # ---- models ------------------------------------------------------------------------------

    def _build_models(self, reward_specs: Sequence[Any]) -> None:
        c = self.config
        policy = load_causal_lm(c.policy, self.dtype, self.device, c.trust_remote_code)
        self.reference: nn.Module | None = None
        if c.lora:
            try:
                from peft import LoraConfig, get_peft_model
            except ImportError as err:  # pragma: no cover - the rlhf extra installs it
                raise ConfigError("lora: true needs the 'peft' package (pip install ppokit[rlhf])") from err
            lora = LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                              target_modules=c.lora_target_modules, task_type="CAUSAL_LM")
            try:
                policy = get_peft_model(policy, lora)
            except ValueError as err:
                raise ConfigError(f"LoRA: {err}; set lora_target_modules") from None
        if c.reference is not None or not c.lora:
            # A frozen copy. Without LoRA it must be a second set of weights; with LoRA and an
            # explicit reference it is the model the user named.
            self.reference = load_causal_lm(c.reference or c.policy, self.dtype, self.device, c.trust_remote_code)
            self.reference.requires_grad_(False).eval()
        self.policy = policy

        self.critic: ScalarHeadModel | None = None
        if c.value_model == "head":
            self.with_head = PolicyWithValueHead(policy).to(self.device)
            self.trainable: nn.Module = self.with_head
        else:
            self.with_head = None
            self.critic = self._build_critic().to(self.device)
            self.trainable = nn.ModuleDict({"policy": policy, "critic": self.critic})
        # Dropout off throughout: the rollout's log-probs and the first epoch's must agree exactly,
        # or the ratio starts away from 1 for no reason.
        self.trainable.eval()

    def _build_critic(self) -> ScalarHeadModel:
        c = self.config
        if c.value_init == "reward":
            scorer = next((s for s in self.reward.sources if isinstance(s, RewardModelScorer)), None)
            if scorer is not None:
                # A second load: the critic trains while the scorer's copy stays frozen.
                reward_model = load_reward_model(scorer.name, self.dtype, self.device, c.trust_remote_code)
                if reward_model.kind == "value_head":
                    return reward_model.model
                return ScalarHeadModel.from_sequence_classifier(reward_model.model)
            log.info("value_init is 'reward' but no reward model is among the reward sources; "
                     "initialising the critic from the policy")
        from transformers import AutoModel

        trunk = AutoModel.from_pretrained(c.policy, dtype=self.dtype, trust_remote_code=c.trust_remote_code)
        return ScalarHeadModel(fuse_activations(trunk), hidden_size_of(trunk))

    @contextlib.contextmanager
    def _reference_ctx(self):
        """The frozen reference: a separate model, or the policy with its LoRA adapter disabled."""
        if self.reference is not None:
            yield self.reference
        else:
            with self.policy.disable_adapter():
                yield self.policy

    # ---- forward passes ---------------------------------------------------------------------

    def _policy_forward(self, batch: Completions, rows: Tensor | slice = slice(None)) -> tuple[Tensor, Tensor | None]:
        """Completion logits and (with a value head) values, for the selected rows."""
        ids, mask = batch.input_ids[rows], batch.attention_mask[rows]
        pos = batch.position_ids[rows]
        if self.with_head is not None:
            logits, values = self.with_head(ids, mask, pos)
            return completion_logits(logits, batch.prompt_length), completion_logits(values, batch.prompt_length)
        logits = self.policy(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
        return completion_logits(logits, batch.prompt_length), None

    def _critic_values(self, batch: Completions, rows: Tensor | slice = slice(None)) -> Tensor:
        assert self.critic is not None
        values = self.critic(batch.input_ids[rows], batch.attention_mask[rows], batch.position_ids[rows])
        return completion_logits(values, batch.prompt_length)

    # ---- one PPO step ------------------------------------------------------------------------

    def step(self) -> dict[str, Any]:
        """Generate, score, and update once; returns the step's metrics."""
        c = self.config
        t_start = time.perf_counter()
        prompts = self.prompts.next()
        prompt_ids, prompt_mask = encode_prompts(self.tokenizer, prompts, self.device)
        batch = sample(self.policy, self.tokenizer, prompt_ids, prompt_mask, c.max_new_tokens, c.temperature)
        mask = batch.completion_mask
        tokens = batch.completion_ids
        t_generated = time.perf_counter()

        completions = decode(self.tokenizer, tokens, mask)
        scores, score_parts = self.reward(prompts, completions)
        raw_score_mean = float(scores.mean())
        scores = scores.to(self.device)
        if c.missing_eos_penalty is not None:
            scores = scores - c.missing_eos_penalty * (~batch.has_eos).to(scores.dtype)
        if c.score_clip is not None:
            scores = scores.clamp(-c.score_clip, c.score_clip)
        t_scored = time.perf_counter()

        with torch.no_grad():
            logits, values = self._policy_forward(batch)
            logp = token_logprobs(logits, tokens, c.temperature)
            entropy = token_entropy(logits, c.temperature)
            del logits
            if values is None:
                values = self._critic_values(batch)
            values = values.float()
            with self._reference_ctx() as reference:
                ref_logits = reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                       position_ids=batch.position_ids, use_cache=False).logits
            ref_logp = token_logprobs(completion_logits(ref_logits, batch.prompt_length), tokens, c.temperature)
            del ref_logits

            rewards, kl = per_token_rewards(scores.float(), logp, ref_logp, mask, self.kl_coef, c.kl_estimator)
            valid = mask.to(values.dtype)
            values = values * valid
            next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
            last = (mask.long().sum(-1) - 1).clamp_min(0)
            ends = torch.zeros_like(mask).scatter_(1, last.unsqueeze(1), True)
            advantages, returns = gae(rewards.T, values.T, next_values.T, ends.T, c.gamma, c.gae_lambda)
            advantages, returns = advantages.T, returns.T
            if c.whiten_advantages:
                advantages = masked_whiten(advantages, mask)
        t_prepared = time.perf_counter()

        def evaluate(rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            new_logits, new_values = self._policy_forward(batch, rows)
            if new_values is None:
                new_values = self._critic_values(batch, rows)
            # With no entropy bonus the entropy is only logged: skip its graph (a [B, T, vocab] tensor).
            with torch.set_grad_enabled(c.ent_coef > 0 and torch.is_grad_enabled()):
                entropy = token_entropy(new_logits, c.temperature)
            return token_logprobs(new_logits, tokens[rows], c.temperature), entropy, new_values.float()

        settings = PPOUpdateSettings(
            num_epochs=c.num_epochs, num_minibatches=c.num_minibatches, clip_range=c.clip_range,
            vf_coef=c.vf_coef, ent_coef=c.ent_coef, max_grad_norm=c.max_grad_norm or None,
            clip_range_vf=c.clip_range_vf, normalize_advantages=False, target_kl=c.target_kl,
            skip_nonfinite=c.on_nonfinite == "skip",
        )
        self._set_learning_rate()
        try:
            update_stats = ppo_update(
                {"logp": logp, "values": values, "advantages": advantages, "returns": returns, "mask": mask},
                evaluate, self.optimizer, self.parameters, settings,
            )
        except TrainingError as err:
            last = latest_checkpoint(self.run_dir)
            saved = f"; the last checkpoint, {last}, is intact" if last is not None else ""
            raise TrainingError(f"PPO step {self.global_step + 1}: {err}{saved}") from None
        t_updated = time.perf_counter()

        kl_per_sequence = kl.sum(-1)
        mean_kl = float(kl_per_sequence.mean())
        non_score = float((-self.kl_coef * kl).sum(-1).mean())
        n_tokens = int(mask.sum())
        record: dict[str, Any] = {
            "step": self.global_step + 1,
            "score": float(scores.mean()),
            "score_raw": raw_score_mean,
            **score_parts,
            "kl": mean_kl,
            "non_score_reward": non_score,
            "total_reward": float(scores.mean()) + non_score,
            "kl_coef": self.kl_coef,
            "entropy": float(masked_mean(entropy, mask)),
            "response_length": float(mask.sum(-1).float().mean()),
            "eos_rate": float(batch.has_eos.float().mean()),
            "value_mean": float(masked_mean(values, mask)),
            **update_stats,
            "learning_rate": self.optimizer.param_groups[0]["lr"],
            "tokens_per_s": n_tokens / max(t_updated - t_start, 1e-9),
            "generate_s": t_generated - t_start,
            "score_s": t_scored - t_generated,
            "prepare_s": t_prepared - t_scored,
            "update_s": t_updated - t_prepared,
            "step_s": t_updated - t_start,
        }
        if self.kl_controller is not None:
            self.kl_coef = self.kl_controller.update(mean_kl, len(prompts))
        self.global_step += 1
        #: The last step's prompts, completions (text) and scores, for callbacks and sample logs.
        self.last_batch = (prompts, completions, scores.tolist())
        return record

    def _set_learning_rate(self) -> None:
        c = self.config
        lr = c.learning_rate
        if c.lr_schedule == "linear":
            lr *= max(0.0, 1.0 - self.global_step / c.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    # ---- the loop ----------------------------------------------------------------------------

    def train(self, steps: int | None = None, callback: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any]:
        """Run PPO steps up to ``total_steps`` (or ``steps`` more); save the policy and value model."""
        c = self.config
        target = c.total_steps if steps is None else self.global_step + steps
        bar = progress_bar(c.progress, target - self.global_step, "rlhf ppo")
        # The models, tokenizers and libraries loaded so far live for the whole run; freezing them
        # keeps Python's cyclic GC from rescanning their hundreds of thousands of objects each time
        # it runs (TRL's PPO instead forces two full collections per step).
        gc.collect()
        gc.freeze()
        try:
            with StopOnSignal("PPO step") as stop:
                while self.global_step < target:
                    record = self.step()
                    self.metrics.log(record, self.global_step)
                    self.history.append(record)
                    if c.sample_every and (self.global_step % c.sample_every == 0 or self.global_step == 1):
                        self._log_samples()
                    bar.update(1)
                    bar.set_postfix(score=f"{record['score']:.3f}", kl=f"{record['kl']:.2f}")
                    if stop.signal_name is not None:
                        saved = self.save_checkpoint()
                        self.metrics.close()
                        raise TrainingInterrupted(stop.signal_name, str(saved), f"ppokit resume {self.run_dir}")
                    due = checkpoint_due(self.global_step, c.save_every, c.checkpoint_minutes,
                                         self._last_checkpoint_time)
                    if due and self.global_step < target:
                        self.save_checkpoint()
                    if callback is not None and callback(record) is False:
                        break
                # The final state is a checkpoint too, so a resume can extend the run.
                if latest_checkpoint(self.run_dir) != checkpoint_path(self.run_dir, self.global_step):
                    self.save_checkpoint()
        finally:
            bar.close()
            gc.unfreeze()
        self.save(self.run_dir)
        summary = self.summary()
        atomic_write_json(self.run_dir / "summary.json", summary)
        self.metrics.close()
        return summary

    def _log_samples(self) -> None:
        prompts, completions, scores = self.last_batch
        n = self.config.num_samples
        rows = [{"step": self.global_step, "prompt": p, "completion": y, "score": s}
                for p, y, s in list(zip(prompts, completions, scores))[:n]]
        with open(self.run_dir / "samples.jsonl", "a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
        self.metrics.text("samples", "\n\n".join(f"**{r['prompt']}** {r['completion']} (score {r['score']:.3f})"
                                                  for r in rows), self.global_step)

    def summary(self) -> dict[str, Any]:
        first = self.history[: max(1, len(self.history) // 10)]
        last = self.history[-max(1, len(self.history) // 10):]

        def mean(rows: list[dict], key: str) -> float:
            vals = [r[key] for r in rows if key in r and math.isfinite(r[key])]
            return sum(vals) / len(vals) if vals else float("nan")

        return {
            "run_dir": str(self.run_dir), "steps": self.global_step,
            "policy_dir": str(self.run_dir / "policy"), "value_model_dir": str(self.run_dir / "value_model"),
            "score_first": mean(first, "score"), "score_last": mean(last, "score"),
            "kl_last": mean(last, "kl"), "kl_coef": self.kl_coef,
            "mean_step_s": mean(self.history, "step_s"), "skipped_rows": self.skipped_rows,
        }

    # ---- checkpoints -------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """A resumable checkpoint ``RUN_DIR/checkpoints/step_<N>``: the trainable weights (policy,
        value model or head, LoRA adapter), optimizer, KL controller, prompt position, RNGs, history;
        plus ``policy/`` and ``value_model/`` as usable models. Keeps the newest ``keep_checkpoints``."""
        from safetensors.torch import save_model

        state = {
            "format": RESUME_FORMAT, "kind": "ppokit.rlhf", "global_step": self.global_step,
            "kl_coef": self.kl_coef,
            "kl_controller": self.kl_controller.state_dict() if self.kl_controller is not None else None,
            "prompts": self.prompts.state_dict(), "rng": rng_state(), "history": self.history,
        }

        def fill(tmp: Path) -> None:
            save_model(self.trainable, str(tmp / TRAINABLE_FILE))
            torch.save(self.optimizer.state_dict(), tmp / OPTIMIZER_FILE)
            self.save(tmp)
            # Written last: its presence marks the checkpoint complete.
            (tmp / RESUME_FILE).write_text(json.dumps(state) + "\n", encoding="utf-8")

        path = checkpoint_path(self.run_dir, self.global_step)
        atomic_write_dir(path, fill)
        prune_checkpoints(self.run_dir, self.config.keep_checkpoints)
        self._last_checkpoint_time = time.monotonic()
        return path

    def _restore(self, checkpoint: Path, state: dict[str, Any]) -> None:
        from safetensors.torch import load_model

        file = checkpoint / TRAINABLE_FILE
        try:
            missing, unexpected = load_model(self.trainable, str(file), strict=False, device=str(self.device))
        except Exception as err:  # noqa: BLE001 - safetensors raises several types for bad files
            raise CheckpointError(f"{file}: not a readable safetensors file ({err})") from None
        if missing or unexpected:
            raise CheckpointError(
                f"{file}: the saved weights do not fit this model (missing {list(missing)[:3]}, "
                f"unexpected {list(unexpected)[:3]}); was the policy, value_model or lora setting changed?"
            )
        try:
            self.optimizer.load_state_dict(load_torch_state(checkpoint / OPTIMIZER_FILE, self.device))
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"{checkpoint / OPTIMIZER_FILE}: optimizer state does not fit ({err})") from None
        try:
            self.global_step = int(state["global_step"])
            self.kl_coef = float(state["kl_coef"])
            if self.kl_controller is not None and state["kl_controller"] is not None:
                self.kl_controller.load_state_dict(state["kl_controller"])
            self.prompts.load_state_dict(state["prompts"])
            self.history = list(state["history"])
            set_rng_state(state["rng"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CheckpointError(f"{checkpoint / RESUME_FILE}: bad resume state ({type(err).__name__}: {err})") from None

    # ---- saving ------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        """Write ``policy/`` (an ordinary ``save_pretrained`` causal LM, LoRA merged in, plus the
        adapter alone in ``policy_adapter/``) and ``value_model/`` (trunk + ``scalar_head.safetensors``)."""
        from ppokit.io.atomic import atomic_write_dir

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)

        def write_policy(tmp: Path) -> None:
            if self.config.lora:
                merged = copy.deepcopy(self.policy).merge_and_unload()
                merged.save_pretrained(tmp)
                del merged
            else:
                self.policy.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)

        atomic_write_dir(directory / "policy", write_policy)
        if self.config.lora:
            atomic_write_dir(directory / "policy_adapter", lambda tmp: self.policy.save_pretrained(tmp))
        if self.critic is not None:
            atomic_write_dir(directory / "value_model", self.critic.save)
        elif self.with_head is not None:
            base = self.policy.get_base_model() if hasattr(self.policy, "get_base_model") else self.policy

            def write_value(tmp: Path) -> None:
                from ppokit.rlhf.models import trunk_of

                ScalarHeadModel(trunk_of(base), self.with_head.value_head.in_features, self.with_head.value_head).save(tmp)
            atomic_write_dir(directory / "value_model", write_value)


def train_rlhf(config: RLHFConfig, prompts: Any = None, rewards: Any = None,
               run_dir: str | Path | None = None, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Build an :class:`RLHFTrainer` and train it; returns its summary."""
    return RLHFTrainer(config, prompts, rewards, run_dir, overwrite, resume).train()
