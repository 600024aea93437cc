"""Training a reward model from human preferences (Bradley-Terry), or from ratings by regression.

Pairs come from ``chosen``/``rejected`` columns, from K-way rankings expanded into all their pairs
(InstructGPT), or from ratings within a prompt. The loss is
:func:`ppokit.core.losses.bradley_terry_loss`; ratings fitted by regression use the squared error
to the standardised rating,

.. math:: L = \\frac{1}{2N}\\sum_i \\big(r_\\theta(x_i, y_i) - \\tfrac{s_i - \\bar s}{\\sigma_s}\\big)^2 .

After training, the model's output is normalised to mean 0 and std 1 over the training responses,
and that normalisation is saved with it.

With gradient accumulation each micro-batch's mean is weighted by its share of the batch's pairs;
with several processes (``--nproc``, ``torchrun``) each takes its share of every batch of pairs (the
loss is the mean over all of them, the gradients are averaged) and of the evaluation and
normalisation passes; rank 0 writes the run. :class:`RewardTrainer` runs in the loop of
:mod:`ppokit.rlhf.supervised.loop` (checkpoints, exact resume, evaluation loss and pairwise accuracy
during training); :func:`train_reward_model` is the one-call form.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch

from ppokit.core.collective import SINGLE, Collective
from ppokit.core.losses import bradley_terry_loss
from ppokit.errors import TrainingError
from ppokit.io.atomic import atomic_write_dir, atomic_write_json
from ppokit.io.loop import Callback
from ppokit.rlhf import data as rdata
from ppokit.rlhf import data_parallel
from ppokit.rlhf.config import RewardConfig
from ppokit.rlhf.data import split_by_prompt
from ppokit.rlhf.models.loading import (
    RewardModel,
    check_tokenizes,
    length_limit,
    load_tokenizer,
    model_positions,
    new_reward_model,
)
from ppokit.rlhf.models.lora import save_adapter, with_lora
from ppokit.rlhf.rewards.sources import encode_pairs
from ppokit.rlhf.supervised.loop import SupervisedTrainer, data_fingerprint
from ppokit.rlhf.supervised.steps import MicroBatch

__all__ = ["RewardTrainer", "output_scale", "pairwise_accuracy", "score_texts", "split_by_prompt",
           "train_reward_model"]

log = logging.getLogger("ppokit")


@torch.no_grad()
def score_texts(model: RewardModel, tokenizer: Any, prompts: list[str], responses: list[str],
                device: torch.device, batch_size: int = 64, raw: bool = True) -> torch.Tensor:
    """Rewards of ``prompt + response`` texts (unnormalised when ``raw``)."""
    was_training = model.training
    model.eval()
    out = []
    for s in range(0, len(prompts), batch_size):
        ids, mask = encode_pairs(tokenizer, prompts[s:s + batch_size], responses[s:s + batch_size], device)
        out.append((model.raw(ids, mask) if raw else model(ids, mask)).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def pairwise_accuracy(model: RewardModel, tokenizer: Any, pairs: list[dict], device: torch.device,
                      collective: Collective = SINGLE) -> float:
    """Fraction of pairs where the chosen response gets the higher reward (ties count as wrong).
    With several processes each scores its share of the pairs (every process passes all of them)."""
    if not pairs:
        return float("nan")
    local = data_parallel.local_slice(pairs, collective)
    prompts = [p["prompt"] for p in local]
    chosen = score_texts(model, tokenizer, prompts, [p["chosen"] for p in local], device)
    rejected = score_texts(model, tokenizer, prompts, [p["rejected"] for p in local], device)
    if not collective.active:
        return float((chosen > rejected).float().mean())
    correct, n = collective.sum_floats(float((chosen > rejected).sum()), float(len(local)))
    return correct / n


def output_scale(model: RewardModel, tokenizer: Any, prompts: list[str], responses: list[str], device: torch.device,
                 collective: Collective = SINGLE) -> tuple[float, float]:
    """The mean and standard deviation of the model's raw output over these texts (each process
    scores its share of them)."""
    if not collective.active:
        raw = score_texts(model, tokenizer, prompts, responses, device)
        return float(raw.mean()), float(raw.std().clamp_min(1e-6)) if raw.numel() > 1 else 1.0
    raw = score_texts(model, tokenizer, data_parallel.local_slice(prompts, collective),
                      data_parallel.local_slice(responses, collective), device)
    _, total, mean, var = collective.moments(raw)
    return float(mean), float(var.sqrt().clamp_min(1e-6)) if float(total) > 1 else 1.0



def held_out_figures(model: RewardModel, tokenizer: Any, pairs: list[dict], device: torch.device,
                     collective: Collective = SINGLE) -> dict[str, float]:
    """The Bradley-Terry loss and pairwise accuracy (ties count as wrong) over held-out ``pairs``, from
    one scoring pass; each process scores its share (every process passes all of them)."""
    local = data_parallel.local_slice(pairs, collective)
    loss_sum, correct = 0.0, 0.0
    if local:
        prompts = [p["prompt"] for p in local]
        chosen = score_texts(model, tokenizer, prompts, [p["chosen"] for p in local], device)
        rejected = score_texts(model, tokenizer, prompts, [p["rejected"] for p in local], device)
        loss_sum = float(bradley_terry_loss(chosen, rejected)[0]) * len(local)
        correct = float((chosen > rejected).sum())
    n = float(len(local))
    if collective.active:
        loss_sum, correct, n = collective.sum_floats(loss_sum, correct, n)
    return {"eval_loss": loss_sum / n, "eval_accuracy": correct / n}


def regression_loss(model: RewardModel, tokenizer: Any, rows: list[dict], device: torch.device, mean: float,
                    std: float, collective: Collective = SINGLE) -> float:
    """The regression loss, half the squared error to the standardised rating, over held-out ``rows``
    (each process scores its share)."""
    local = data_parallel.local_slice(rows, collective)
    total = 0.0
    if local:
        raw = score_texts(model, tokenizer, [r["prompt"] for r in local], [r["response"] for r in local], device)
        target = (torch.tensor([r["rating"] for r in local]) - mean) / std
        total = float(0.5 * (raw - target).square().sum())
    n = float(len(local))
    if collective.active:
        total, n = collective.sum_floats(total, n)
    return total / n


class RewardTrainer(SupervisedTrainer[RewardConfig]):
    """Train a reward model on preferences (pairs, rankings or ratings).

    ``data`` / ``eval_data`` (a ``datasets.Dataset`` or list of dicts) replace ``config.data`` /
    ``config.eval_data``. ``resume=True`` continues the run in ``run_dir`` from its latest checkpoint
    (bit-identically on one CPU thread), or starts it when there is none yet.
    """

    stage = "reward"

    def __init__(self, config: RewardConfig, data: Any = None, eval_data: Any = None,
                 run_dir: str | Path | None = None, overwrite: bool = False, resume: bool = False) -> None:
        super().__init__(config, run_dir, overwrite, resume)
        c = config
        self.tokenizer = tokenizer = load_tokenizer(c.model, c.trust_remote_code)
        tokenizer.padding_side = "right"
        fmt, loaded = rdata.load_preferences(data if data is not None else c.data, c)
        self.format = fmt
        self.texts_key = texts_key = ("chosen", "rejected") if fmt == "pairs" else ("response",)
        check_tokenizes(tokenizer, [r["prompt"] + " " + r[texts_key[0]] for r in loaded.rows], c.model,
                        "preference data")
        limit = length_limit(c.max_length, c.model, model_positions(c.model, c.trust_remote_code))

        def lengths_of(rows: list[dict[str, Any]]) -> list[int]:
            return [max(len(tokenizer(r["prompt"])["input_ids"]) + len(tokenizer(r[k], add_special_tokens=False)["input_ids"])
                        for k in texts_key) for r in rows]

        loaded = rdata.drop_long(loaded, lengths_of, limit, "prompt + response", "max_length (capped to the model's "
                                 "positions)" if limit < c.max_length else "max_length", c.skip_bad_rows)
        #: Held-out rated rows (ratings fitted by regression), for the evaluation loss.
        self.eval_ratings: list[dict[str, Any]] = []
        if eval_data is not None or c.eval_data:
            eval_fmt, eval_loaded = rdata.load_preferences(eval_data if eval_data is not None else c.eval_data, c)
            train_rows, eval_rows = loaded.rows, eval_loaded.rows
            if eval_fmt == "ratings":
                self.eval_ratings, eval_rows = eval_rows, rdata.ratings_to_pairs(eval_rows)
        else:
            train_rows, eval_rows = split_by_prompt(loaded.rows, c.eval_fraction, c.seed)
            if fmt == "ratings":
                self.eval_ratings, eval_rows = eval_rows, rdata.ratings_to_pairs(eval_rows)
        if not train_rows:
            raise TrainingError("no training rows left after holding out the evaluation prompts; lower eval_fraction")
        self.train_rows, self.eval_rows, self.skipped_rows = train_rows, eval_rows, loaded.skipped

        model = new_reward_model(c.model, c.head, self.dtype, self.device, tokenizer.pad_token_id, c.trust_remote_code)
        if c.lora:  # adapters on the trunk; the new head is trained whole
            model.model = (with_lora(model.model, c, "SEQ_CLS") if c.head == "classification"
                           else with_lora(model.model, c, None, modules_to_save=["head"]))
        model.train()
        data_parallel.start(model, c.seed, self.collective)  # the new head is random: rank 0's for all
        self.rating_mean, self.rating_std = 0.0, 1.0
        if fmt == "ratings":
            ratings = torch.tensor([r["rating"] for r in train_rows])
            self.rating_mean = float(ratings.mean())
            self.rating_std = float(ratings.std().clamp_min(1e-6)) if len(ratings) > 1 else 1.0
        if fmt == "pairs":
            self.figures = ("accuracy", "margin")
        self.reward_model = model
        texts = [[r["prompt"], *(r[k] for k in texts_key), r.get("rating")] for r in train_rows]
        self._start(model, len(train_rows), data_fingerprint(texts))

    def micro_batch(self, rows: list[int]) -> MicroBatch:
        picked = [self.train_rows[i] for i in rows]
        prompts = [r["prompt"] for r in picked]
        model, n = self.reward_model, len(picked)
        if self.format == "pairs":
            # chosen and rejected in one forward pass
            ids, mask = encode_pairs(self.tokenizer, prompts + prompts,
                                     [r["chosen"] for r in picked] + [r["rejected"] for r in picked], self.device)

            def pairs_loss() -> tuple[torch.Tensor, dict[str, float]]:
                rewards = model.raw(ids, mask).float()
                loss, accuracy = bradley_terry_loss(rewards[:n], rewards[n:])
                return loss, {"accuracy": float(accuracy) * n, "margin": float((rewards[:n] - rewards[n:]).mean().detach()) * n}

            return MicroBatch(float(n), pairs_loss)
        ids, mask = encode_pairs(self.tokenizer, prompts, [r["response"] for r in picked], self.device)
        target = (torch.tensor([r["rating"] for r in picked], device=self.device) - self.rating_mean) / self.rating_std
        return MicroBatch(float(n), lambda: (0.5 * (model.raw(ids, mask).float() - target).square().mean(), {}))

    def evaluate(self) -> dict[str, float] | None:
        """Loss and pairwise accuracy over the held-out pairs (the loss of rated rows when ratings are
        fitted by regression)."""
        if not self.eval_rows:
            return None
        figures = held_out_figures(self.reward_model, self.tokenizer, self.eval_rows, self.device, self.collective)
        if self.format == "ratings" and self.eval_ratings:
            figures["eval_loss"] = regression_loss(self.reward_model, self.tokenizer, self.eval_ratings, self.device,
                                                   self.rating_mean, self.rating_std, self.collective)
        return figures

    def finish(self) -> tuple[dict[str, Any], Path]:
        """Normalise the output over the training responses, then save ``model/`` (LoRA merged in; with
        LoRA the adapter and head alone in ``model_adapter/``) and ``eval.json``."""
        assert self.run_dir is not None
        model, tokenizer, collective, device = self.reward_model, self.tokenizer, self.collective, self.device
        # The PPO stage then sees scores of mean 0 and std 1 whatever scale the model drifted to.
        prompts, responses = [], []
        for r in self.train_rows:
            for k in self.texts_key:
                prompts.append(r["prompt"])
                responses.append(r[k])
        model.mean, model.std = output_scale(model, tokenizer, prompts, responses, device, collective)

        train_pairs = self.train_rows if self.format == "pairs" else rdata.ratings_to_pairs(self.train_rows)
        train_accuracy = pairwise_accuracy(model, tokenizer, train_pairs[:2048], device, collective)
        model_dir = self.run_dir / "model"
        tokenizer.padding_side = "left"
        lora = self.config.lora

        def write(tmp: Path) -> None:
            merged = RewardModel(copy.deepcopy(model.model).merge_and_unload(), model.kind, model.mean, model.std)
            (merged if lora else model).save(tmp, tokenizer)

        # Complete or absent: a kill mid-save must never leave weights without their tokenizer or metadata.
        if collective.is_main:  # the weights are the same in every process
            if lora:
                atomic_write_dir(self.run_dir / "model_adapter",
                                 lambda tmp: save_adapter(model.model, tmp, tokenizer, self.config.model))
            atomic_write_dir(model_dir, write if lora else lambda tmp: model.save(tmp, tokenizer))
        steps_per_epoch = self.batches.per_epoch
        final = self.final_eval()
        summary = {
            "run_dir": str(self.run_dir), "model_dir": str(model_dir), "format": self.format, "steps": self.num_updates,
            "total_steps": self.batches.total,
            "train_pairs": len(train_pairs), "eval_pairs": len(self.eval_rows), "train_accuracy": train_accuracy,
            "eval_accuracy": final.get("eval_accuracy", float("nan")),
            "eval_loss": final.get("eval_loss", float("nan")), "final_loss": self.last_loss,
            "eval_accuracy_per_epoch": [row["eval_accuracy"] for row in self.evals if row["step"] % steps_per_epoch == 0],
            "reward_mean": model.mean, "reward_std": model.std, "skipped_rows": self.skipped_rows,
            "seconds": self.seconds(),
        }
        if lora:
            summary["adapter_dir"] = str(self.run_dir / "model_adapter")
        if collective.is_main:
            atomic_write_json(self.run_dir / "eval.json", summary)
        log.info("reward model saved to %s (held-out accuracy %.3f)", model_dir, summary["eval_accuracy"])
        return summary, model_dir


def train_reward_model(config: RewardConfig, data: Any = None, eval_data: Any = None,
                       run_dir: str | Path | None = None, overwrite: bool = False, resume: bool = False,
                       *, callback: Callback | None = None) -> dict[str, Any]:
    """Train a reward model; saves ``<run_dir>/model`` and writes ``eval.json`` and ``summary.json`` with
    the held-out loss and pairwise accuracy. ``resume=True`` continues the run in ``run_dir`` from its
    latest checkpoint. ``callback`` gets each step's metrics row; returning False stops (and
    checkpoints). Returns the summary."""
    return RewardTrainer(config, data, eval_data, run_dir, overwrite, resume).learn(callback)
